"""bitsandbytes int8 and nf4 variants of the base generate, mixed with an adapter, on the CPU."""

from __future__ import annotations

import pytest
import torch

from engine import GenerationRequest, InferenceEngine, SamplingParams
from tests.unit.engine.helpers import ADAPTER_NAMES, chat


def _load(tiny_base_dir, variant):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if variant == "int8":
        quant, dtype = BitsAndBytesConfig(load_in_8bit=True), torch.bfloat16
    else:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        dtype = torch.float32
    return AutoModelForCausalLM.from_pretrained(tiny_base_dir, quantization_config=quant, dtype=dtype, device_map="cpu")


@pytest.mark.parametrize("variant", ["int8", "nf4"])
def test_quantized_base_generates_with_adapter(tiny_base_dir, tokenizer, adapter_dirs, variant):
    model = _load(tiny_base_dir, variant)
    engine = InferenceEngine(model, tokenizer)
    engine.load_adapter(ADAPTER_NAMES[0], adapter_dirs[ADAPTER_NAMES[0]])
    requests = [
        GenerationRequest(prompt=chat(tokenizer, "Write a headline"), adapter=adapter, params=SamplingParams(max_new_tokens=5))
        for adapter in (ADAPTER_NAMES[0], None)
    ]
    with_adapter, bare = engine.generate(requests)
    assert with_adapter.completion_tokens == bare.completion_tokens == 5
    assert with_adapter.text != bare.text
    assert engine.generate([requests[0]])[0].text == with_adapter.text
    mem = engine.memory_footprint()
    assert mem["adapters"][ADAPTER_NAMES[0]] > 0 and mem["base_bytes"] > 0
    # The continuous loop stores K/V in the compute dtype (the embeddings', never quantized) and answers alike.
    handles = [engine.submit(r) for r in requests]
    assert [h.future.result(60).text for h in handles] == [with_adapter.text, bare.text]
    assert engine.kv_cache.dtype == model.get_input_embeddings().weight.dtype
