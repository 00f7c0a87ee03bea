"""One reading of a model's KV shape: the planner (config.json dicts) and the engine (config objects) agree."""

import pytest
import torch
from transformers import LlavaConfig, MistralConfig

from cluster.demand import kv_shape, kv_values_per_token
from engine.kv_slots import SlotKVCache, kv_bytes_per_token


def test_a_config_object_and_its_json_give_the_same_shape():
    mistral = MistralConfig(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_size=4096)
    assert kv_shape(mistral) == kv_shape(mistral.to_dict()) == (32, 8, 128)
    assert kv_values_per_token(mistral) == 2 * 32 * 8 * 128
    # A vision-language model's cache is its language model's.
    llava = LlavaConfig(text_config=mistral.to_dict())
    assert kv_shape(llava) == kv_shape(llava.to_dict()) == kv_shape(mistral)


def test_the_engine_allocates_and_counts_what_the_planner_counts():
    cfg = MistralConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=64)
    cache = SlotKVCache(cfg, slots=2, slot_tokens=8, dtype=torch.bfloat16, device="cpu")
    assert kv_bytes_per_token(cfg, torch.bfloat16) == kv_values_per_token(cfg.to_dict()) * 2 == cache.bytes_per_token
    allocated = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert allocated == cache.bytes_per_token * 2 * 8


def test_a_config_without_a_shape_is_named():
    assert kv_shape({"model_type": "clip"}) is None
    with pytest.raises(ValueError, match="no KV cache shape"):
        kv_bytes_per_token({"model_type": "clip"}, torch.float32)
