"""Config and request types: JSON round trips and refusals, one table each."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine import EngineConfig, GenerationRequest, GenerationResult, SamplingParams

VALID = [
    EngineConfig(),
    EngineConfig(max_batch_size=4, max_prompt_tokens=64, max_new_tokens_limit=8, max_loaded_adapters=2, lora_kernel="peft"),
    SamplingParams(),
    SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=5, stop=["\n", "###"], seed=3),
    GenerationRequest(prompt="<s>[INST] hi [/INST]", adapter="a/b@1", json_schema={"type": "object"}, request_id="r1"),
    GenerationResult(text="x", prompt_tokens=3, completion_tokens=1, finish_reason="stop", adapter=None),
]


@pytest.mark.parametrize("obj", VALID, ids=lambda o: type(o).__name__)
def test_round_trips_through_json(obj):
    assert type(obj).model_validate_json(obj.model_dump_json()) == obj


INVALID = [
    (EngineConfig, {"max_batch_size": 0}),
    (EngineConfig, {"max_prompt_tokens": -1}),
    (EngineConfig, {"lora_kernel": "punica"}),
    (EngineConfig, {"unknown_field": 1}),
    (SamplingParams, {"temperature": -0.1}),
    (SamplingParams, {"top_p": 0.0}),
    (SamplingParams, {"top_p": 1.5}),
    (SamplingParams, {"max_new_tokens": 0}),
    (SamplingParams, {"stop": ["s"] * 9}),
    (SamplingParams, {"stop": [""]}),
    (GenerationRequest, {}),
    (GenerationRequest, {"prompt": "x", "extra": 1}),
    (GenerationResult, {"text": "", "prompt_tokens": 1, "completion_tokens": 1, "finish_reason": "eos"}),
]


@pytest.mark.parametrize("cls,data", INVALID, ids=[f"{c.__name__}-{sorted(d)}" for c, d in INVALID])
def test_rejects_bad_values(cls, data):
    with pytest.raises(ValidationError):
        cls.model_validate(data)


def test_every_config_field_is_described():
    for cls in (EngineConfig, SamplingParams, GenerationRequest, GenerationResult):
        undocumented = [name for name, f in cls.model_fields.items() if not f.description]
        assert not undocumented, f"{cls.__name__}: {undocumented}"
