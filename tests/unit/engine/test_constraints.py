"""JSON-schema constrained rows: sampled at temperature 1.0, every output parses and validates."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field, StringConstraints

from deployments.engine import GenerationRequest, SamplingParams
from tests.unit.engine.helpers import ADAPTER_NAMES, chat

# Every value is bounded: a random tiny model sampled at temperature 1.0 would otherwise write one
# unbounded string or number until max_new_tokens, and the row would end "length" with partial JSON.
# Strings are ASCII by pattern: with a bare maxLength, xgrammar 0.2.9 counts an unfinished multi-byte
# character as one, which decodes to several U+FFFD and breaks the length (a known xgrammar limitation).
Short = Annotated[str, StringConstraints(pattern=r"^[a-z0-9 ]{0,16}$")]


class Verdict(BaseModel):
    verdict: Literal["approve", "reject", "revise"]
    issues: list[Short] = Field(max_length=2)


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    score: int = Field(ge=0, le=100)


class Claim(BaseModel):
    supported: bool
    note: Short
    sources: list[Annotated[int, Field(ge=0, le=99)]] = Field(max_length=3)


SCHEMAS = [Verdict, Sentiment, Claim]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_schemas_parse_and_validate(loaded_engine, tokenizer, seed):
    adapters = [None, *ADAPTER_NAMES]
    requests = [
        GenerationRequest(
            prompt=chat(tokenizer, "Review the draft and answer in JSON"),
            adapter=adapters[i % len(adapters)],
            json_schema=SCHEMAS[i % len(SCHEMAS)].model_json_schema(),
            params=SamplingParams(temperature=1.0, seed=seed * 100 + i, max_new_tokens=160),
        )
        for i in range(6)
    ]
    # An unconstrained row in the same batch stays free text.
    requests.append(GenerationRequest(prompt=chat(tokenizer, "hi"), params=SamplingParams(max_new_tokens=4)))
    results = loaded_engine.generate(requests)
    for i, result in enumerate(results[:-1]):
        assert result.finish_reason == "stop", result.text
        SCHEMAS[i % len(SCHEMAS)].model_validate(json.loads(result.text))
        assert result.text.startswith('{"')  # compact JSON: no whitespace to pad with
    assert results[-1].completion_tokens == 4
    assert loaded_engine.stats()["grammars_compiled"] == len(SCHEMAS)


def test_constrained_row_hitting_max_new_tokens_is_length(loaded_engine, tokenizer):
    request = GenerationRequest(
        prompt=chat(tokenizer, "x"),
        json_schema=Claim.model_json_schema(),
        params=SamplingParams(max_new_tokens=3, stop=["{"]),  # stops do not cut JSON
    )
    result = loaded_engine.generate([request])[0]
    assert (result.finish_reason, result.completion_tokens) == ("length", 3)
    assert result.text.startswith("{")
