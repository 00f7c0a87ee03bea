"""JSON-schema constrained rows: sampled at temperature 1.0, every output parses and validates."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field, StringConstraints

from engine import GenerationRequest, SamplingParams
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


def test_a_token_the_grammar_accepts_is_never_masked_out(tokenizer):
    """xgrammar 0.2.9's mask leaves out the key token ``conclusion`` after ``}],"`` in the reasoning
    agent's schema although its matcher accepts it; the masker asks the grammar about each row's favourite
    token, so a model that wants exactly the valid reply gets it, token by token."""
    import torch

    from agent_graph import get_spec, load_agent_map, run_heuristic
    from engine.constraints import BatchMasker, GrammarCache, RowConstraint

    spec = get_spec("reasoning")
    inp = spec.example
    reply = spec.validate_output(run_heuristic(load_agent_map().legacy["reasoning"].target, inp), inp)
    text = json.dumps(reply.model_dump(mode="json"), separators=(",", ":"))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    cache = GrammarCache(tokenizer, len(tokenizer))
    row = RowConstraint(cache.get(spec.json_schema(inp)))
    masker = BatchMasker(1, len(tokenizer), cache.banned_ids)
    chosen = []
    for token in ids:
        logits = torch.zeros((1, len(tokenizer)))
        logits[0, token] = 10.0  # the model wants the valid reply's next token
        masker.apply(logits, {0: row})
        chosen.append(int(logits[0].argmax()))
        row.accept(chosen[-1])
    assert tokenizer.decode(chosen) == text  # with the mask alone, `conclusion` came out in pieces
