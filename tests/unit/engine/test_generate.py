"""Batched generation: mixed adapters give each row its solo result, sampling, stops, limits."""

from __future__ import annotations

import pytest

from engine import (
    AdapterNotLoaded,
    BatchTooLarge,
    EngineConfig,
    GenerationRequest,
    InferenceEngine,
    InvalidSchema,
    RequestTooLarge,
    SamplingParams,
)
from tests.unit.engine.helpers import ADAPTER_NAMES, chat

PROMPTS = [
    "Summarise the council election report",
    "Is the claim about inflation supported",
    "Write a headline",
    "Score these passages for relevance to the query about bank markets and jobs",
]


def greedy(tokenizer, text, adapter, n=8):
    return GenerationRequest(prompt=chat(tokenizer, text), adapter=adapter, params=SamplingParams(max_new_tokens=n))


def token_ids(tokenizer, result):
    return tokenizer(result.text, add_special_tokens=False)["input_ids"], result.completion_tokens


@pytest.mark.parametrize("lora_kernel", ["gathered", "peft"])
def test_mixed_batch_matches_each_row_alone(base_model, tokenizer, adapter_dirs, lora_kernel):
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(lora_kernel=lora_kernel))
    for name, path in adapter_dirs.items():
        engine.load_adapter(name, path)
    adapters = [*ADAPTER_NAMES, None]
    # Prompts of different lengths, so every row but the longest is left-padded in the batch.
    requests = [greedy(tokenizer, p, a) for p, a in zip(PROMPTS, adapters)]
    batch = engine.generate(requests)
    alone = [engine.generate([r])[0] for r in requests]
    assert [token_ids(tokenizer, r) for r in batch] == [token_ids(tokenizer, r) for r in alone]
    assert [r.text for r in batch] == [r.text for r in alone]
    assert [r.adapter for r in batch] == adapters
    # Same prompt through every adapter: all differ, so a row routed to the wrong adapter would fail above.
    same_prompt = engine.generate([greedy(tokenizer, PROMPTS[0], a) for a in adapters])
    assert len({r.text for r in same_prompt}) == len(adapters)


def test_gathered_and_peft_kernels_agree(base_model, tokenizer, adapter_dirs, tiny_base_dir):
    from transformers import AutoModelForCausalLM

    engines = []
    for kernel, model in [("gathered", base_model), ("peft", AutoModelForCausalLM.from_pretrained(tiny_base_dir))]:
        engine = InferenceEngine(model, tokenizer, EngineConfig(lora_kernel=kernel))
        for name, path in adapter_dirs.items():
            engine.load_adapter(name, path)
        engines.append(engine)
    requests = [greedy(tokenizer, p, a) for p, a in zip(PROMPTS, [*ADAPTER_NAMES, None])]
    gathered, peft = (e.generate(requests) for e in engines)
    assert [r.text for r in gathered] == [r.text for r in peft]


def test_bare_base_before_any_adapter_load(engine, tokenizer):
    result = engine.generate([greedy(tokenizer, PROMPTS[0], None, n=5)])[0]
    assert result.completion_tokens == 5 and result.finish_reason == "length"


def test_seeded_sampling_is_reproducible(loaded_engine, tokenizer):
    def sampled(seed, adapter=ADAPTER_NAMES[0]):
        params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=seed)
        return GenerationRequest(prompt=chat(tokenizer, PROMPTS[1]), adapter=adapter, params=params)

    first = loaded_engine.generate([sampled(1), sampled(2)])
    # Same seeds, other neighbours and order: each row draws the same tokens.
    again = loaded_engine.generate([greedy(tokenizer, PROMPTS[3], None), sampled(2), sampled(1)])
    assert [first[0].text, first[1].text] == [again[2].text, again[1].text]
    assert first[0].text != first[1].text


def test_stop_string_trims_and_finishes(loaded_engine, tokenizer):
    free = loaded_engine.generate([greedy(tokenizer, PROMPTS[0], ADAPTER_NAMES[1], n=16)])[0]
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
    assert len(stop) == 3
    stopped = loaded_engine.generate(
        [GenerationRequest(prompt=chat(tokenizer, PROMPTS[0]), adapter=ADAPTER_NAMES[1], params=SamplingParams(max_new_tokens=16, stop=["@@never@@", stop]))]
    )[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stopped.completion_tokens < free.completion_tokens


def test_max_new_tokens_per_row(loaded_engine, tokenizer):
    results = loaded_engine.generate([greedy(tokenizer, PROMPTS[0], a, n=n) for a, n in [(None, 1), (ADAPTER_NAMES[0], 3), (ADAPTER_NAMES[2], 6)]])
    assert [(r.completion_tokens, r.finish_reason) for r in results] == [(1, "length"), (3, "length"), (6, "length")]


def _req(tokenizer, **kw):
    kw.setdefault("params", SamplingParams(max_new_tokens=4))
    return GenerationRequest(prompt=kw.pop("prompt", chat(tokenizer, "hi")), **kw)


LIMIT_CASES = [
    ("batch", BatchTooLarge, "exceeds max_batch_size (2)"),
    ("new_tokens", RequestTooLarge, "max_new_tokens (9) exceeds max_new_tokens_limit (8)"),
    ("prompt", RequestTooLarge, "max_prompt_tokens is 16"),
    ("adapter", AdapterNotLoaded, "nope/x@1"),
    ("schema", InvalidSchema, "cannot be compiled"),
]


@pytest.mark.parametrize("case,error,message", LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_limits_refused_before_compute(base_model, tokenizer, case, error, message):
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(max_batch_size=2, max_prompt_tokens=16, max_new_tokens_limit=8))
    requests = {
        "batch": [_req(tokenizer)] * 3,
        "new_tokens": [_req(tokenizer, params=SamplingParams(max_new_tokens=9))],
        "prompt": [_req(tokenizer, prompt=chat(tokenizer, " ".join(["election"] * 40)))],
        "adapter": [_req(tokenizer, adapter="nope/x@1")],
        "schema": [_req(tokenizer, json_schema={"type": "object", "properties": {"a": {"type": "no-such-type"}}})],
    }[case]
    calls = []
    base_model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.generate(requests)
    assert calls == []
    assert engine.stats()["generate_calls"] == 0


@pytest.mark.parametrize("ignore_eos, expected_tokens, finish", [(False, 1, "stop"), (True, 6, "length")])
def test_ignore_eos_generates_exactly_max_new_tokens(engine, tokenizer, ignore_eos, expected_tokens, finish):
    from engine import GenerationRequest, SamplingParams

    prompt = chat(tokenizer, "Report on the storm.")
    first = engine.generate([GenerationRequest(prompt=prompt, params=SamplingParams(max_new_tokens=1))])[0]
    first_id = tokenizer(first.text, add_special_tokens=False).input_ids[0]
    engine._eos_ids = {first_id}  # make the greedy first token an end-of-sequence token
    out = engine.generate([GenerationRequest(
        prompt=prompt, params=SamplingParams(max_new_tokens=6, ignore_eos=ignore_eos))])[0]
    assert (out.completion_tokens, out.finish_reason) == (expected_tokens, finish)


@pytest.mark.parametrize("lora_kernel", ["gathered", "peft"])
def test_unloading_every_adapter_leaves_the_base_serving_and_a_reload_works(base_model, tokenizer, adapter_dirs,
                                                                            lora_kernel):
    """Evictions can unload every adapter (PEFT then names a deleted adapter as active, and its forward
    fails with a KeyError); the base must keep answering exactly as before any load, in any unload order."""
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(lora_kernel=lora_kernel))
    base_before = engine.generate([greedy(tokenizer, PROMPTS[0], None)])[0].text
    names = list(adapter_dirs)
    for name in names:
        engine.load_adapter(name, adapter_dirs[name])
    solo = {n: engine.generate([greedy(tokenizer, PROMPTS[0], n)])[0].text for n in names}
    for name in [names[1], names[0], names[2]]:  # the first-loaded (PEFT's active) one is not the last
        engine.unload_adapter(name)
        rest = [n for n in names if engine.is_loaded(n)]
        out = engine.generate([greedy(tokenizer, PROMPTS[0], n) for n in [*rest, None]])
        assert [r.text for r in out] == [*(solo[n] for n in rest), base_before]
    engine.load_adapter(names[2], adapter_dirs[names[2]])
    again = engine.generate([greedy(tokenizer, PROMPTS[0], n) for n in (names[2], None)])
    assert [r.text for r in again] == [solo[names[2]], base_before]
