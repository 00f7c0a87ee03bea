"""The continuous-batching loop (``engine/scheduler.py`` over ``engine/kv_slots.py``) on the tiny base.

Every row must give exactly the tokens it gives alone through ``generate`` -- when submitted with others, when
joining a batch that is already decoding, with its own seed, adapter and schema -- and the loop must free a
cancelled row's slot, refuse beyond its queue bound and refuse a request its KV slot cannot hold.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import torch

from engine import EngineConfig, GenerationRequest, InferenceEngine, SamplingParams
from engine.errors import AdapterNotLoaded, QueueFull, RequestTooLarge
from tests.unit.engine.helpers import ADAPTER_NAMES, chat
from tests.unit.engine.test_constraints import SCHEMAS


@pytest.fixture(params=["eager", "graphed"])
def engine(request, base_model, tokenizer):
    """Every test on an engine runs twice: eager decode steps, and the graphed step (``decode_graphs="static"``:
    the step CUDA captures, run uncaptured) -- the loop must keep every behaviour on both."""
    return InferenceEngine(base_model, tokenizer, EngineConfig(decode_graphs="off" if request.param == "eager"
                                                               else "static"))


def _request(tokenizer, i: int, *, adapter: str | None = "cycle", tokens: int | None = None, **params) -> GenerationRequest:
    adapters = [None, *ADAPTER_NAMES]
    return GenerationRequest(
        prompt=chat(tokenizer, f"Story {i}: " + "the council met again " * (i % 5)),
        adapter=adapters[i % len(adapters)] if adapter == "cycle" else adapter,
        params=SamplingParams(**{"max_new_tokens": tokens or 6 + 3 * (i % 7), "ignore_eos": True, **params}),
    )


def _wait(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the scheduler"
        time.sleep(0.002)


def test_rows_submitted_together_give_the_tokens_they_give_alone(loaded_engine, tokenizer):
    rows = [_request(tokenizer, i, temperature=0.8 if i % 3 == 0 else 0.0, seed=i) for i in range(12)]
    alone = [loaded_engine.generate([r])[0] for r in rows]
    handles = [loaded_engine.submit(r) for r in rows]
    together = [h.future.result(60) for h in handles]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.completion_tokens for r in together] == [r.params.max_new_tokens for r in rows]
    stats = loaded_engine.stats()
    assert stats["continuous_rows_finished"] == 12 and stats["running_rows"] == 0
    assert stats["continuous_max_running"] > 1  # they really shared steps


def test_a_row_joining_mid_decode_changes_nothing(loaded_engine, tokenizer):
    long = _request(tokenizer, 1, tokens=120)
    late = [_request(tokenizer, i, temperature=0.9, seed=40 + i) for i in range(2, 6)]
    alone = [loaded_engine.generate([r])[0].text for r in [long, *late]]
    first = loaded_engine.submit(long)
    _wait(lambda: loaded_engine.stats()["continuous_decode_steps"] >= 10)
    assert not first.future.done()
    others = [loaded_engine.submit(r) for r in late]
    texts = [h.future.result(60).text for h in [first, *others]]
    assert texts == alone
    assert loaded_engine.stats()["continuous_rows_joined_mid_decode"] >= 1


def test_cancelling_a_row_frees_its_slot(base_model, tokenizer):
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(max_batch_size=1, max_new_tokens_limit=512))
    hog = engine.submit(_request(tokenizer, 0, adapter=None, tokens=500))
    _wait(lambda: engine.stats()["running_rows"] == 1)
    waiting = engine.submit(_request(tokenizer, 1, adapter=None, tokens=4))
    assert engine.stats()["waiting_rows"] == 1  # one slot, held by the hog
    hog.cancel()
    assert waiting.future.result(30).completion_tokens == 4  # got the slot
    assert hog.future.cancelled()
    stats = engine.stats()
    assert stats["continuous_rows_cancelled"] == 1 and stats["running_rows"] == 0
    assert stats["continuous_decode_steps"] < 100  # the hog did not run to its 500 tokens


def test_a_cancelled_async_caller_cancels_its_row(base_model, tokenizer):
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(max_batch_size=2, max_new_tokens_limit=512))

    async def main():
        task = asyncio.create_task(engine.generate_async(_request(tokenizer, 0, adapter=None, tokens=500)))
        while engine.stats()["running_rows"] == 0:
            await asyncio.sleep(0.002)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await engine.generate_async(_request(tokenizer, 1, adapter=None, tokens=3))

    assert asyncio.run(main()).completion_tokens == 3
    _wait(lambda: engine.stats()["continuous_rows_cancelled"] == 1)
    assert engine.stats()["running_rows"] == 0


def test_the_waiting_queue_is_bounded(base_model, tokenizer):
    engine = InferenceEngine(base_model, tokenizer,
                             EngineConfig(max_batch_size=1, max_waiting_requests=2, max_new_tokens_limit=512))
    hog = engine.submit(_request(tokenizer, 0, adapter=None, tokens=500))
    _wait(lambda: engine.stats()["running_rows"] == 1)
    queued = [engine.submit(_request(tokenizer, i, adapter=None, tokens=2)) for i in (1, 2)]
    with pytest.raises(QueueFull, match=r"2 requests already wait .*max_waiting_requests 2"):
        engine.submit(_request(tokenizer, 3, adapter=None, tokens=2))
    assert engine.stats()["continuous_refused_queue_full"] == 1
    hog.cancel()
    assert [h.future.result(30).completion_tokens for h in queued] == [2, 2]
    engine.close()


def test_the_kv_budget_refuses_what_cannot_fit_naming_the_numbers(base_model, tokenizer):
    per_token = InferenceEngine(base_model, tokenizer).kv_bytes_per_token()
    small = InferenceEngine(base_model, tokenizer, EngineConfig(kv_slot_tokens=64))
    request = _request(tokenizer, 4, adapter=None, tokens=60)
    prompt = len(tokenizer(request.prompt, add_special_tokens=False)["input_ids"])
    with pytest.raises(RequestTooLarge, match=rf"prompt \({prompt} tokens\) \+ max_new_tokens \(60\) = {prompt + 60} "
                                              rf"tokens does not fit a KV slot of 64 tokens \({per_token} bytes per token"):
        small.submit(request)
    fits = small.submit(_request(tokenizer, 0, adapter=None, tokens=64 - prompt))
    assert fits.future.result(30).completion_tokens == 64 - prompt
    # A budget below one slot is refused with its numbers too; a budget of three slots gives three slots.
    with pytest.raises(RequestTooLarge, match=rf"KV budget \(1000 bytes\) holds no slot of 64 tokens \({64 * per_token} bytes"):
        InferenceEngine(base_model, tokenizer, EngineConfig(kv_slot_tokens=64, kv_cache_bytes=1000)).submit(request)
    three = InferenceEngine(base_model, tokenizer, EngineConfig(kv_slot_tokens=64, kv_cache_bytes=3 * 64 * per_token + 5))
    three.submit(_request(tokenizer, 0, adapter=None, tokens=2)).future.result(30)
    stats = three.stats()
    assert stats["kv_slots"] == 3 and stats["kv_cache_bytes"] == 3 * 64 * per_token


def test_constrained_rows_stay_valid_json_in_a_running_batch(loaded_engine, tokenizer):
    rows = []
    for i in range(9):
        schema = SCHEMAS[i % len(SCHEMAS)]
        rows.append(GenerationRequest(prompt=chat(tokenizer, f"Judge claim {i}"), adapter=[None, *ADAPTER_NAMES][i % 4],
                                      json_schema=schema.model_json_schema() if i % 2 == 0 else None,
                                      params=SamplingParams(max_new_tokens=200, temperature=1.0, seed=i)))
    handles = [loaded_engine.submit(r) for r in rows]
    results = [h.future.result(120) for h in handles]
    for i, (row, result) in enumerate(zip(rows, results)):
        if row.json_schema is not None:
            assert result.finish_reason == "stop"
            SCHEMAS[i % len(SCHEMAS)].model_validate(json.loads(result.text))
    assert [r.text for r in results] == [loaded_engine.generate([r])[0].text for r in rows]


def test_an_adapter_load_during_decode_changes_no_running_row(engine, tokenizer, adapter_dirs):
    first, second = ADAPTER_NAMES[0], ADAPTER_NAMES[1]
    engine.load_adapter(first, adapter_dirs[first])
    row = _request(tokenizer, 2, adapter=first, tokens=150)
    alone = engine.generate([row])[0].text
    handle = engine.submit(row)
    _wait(lambda: engine.stats()["continuous_decode_steps"] >= 5)
    engine.load_adapter(second, adapter_dirs[second])  # between two steps of the running row
    joined = engine.submit(_request(tokenizer, 3, adapter=second, tokens=5))
    assert handle.future.result(60).text == alone
    assert joined.future.result(60).adapter == second


def test_an_unload_waits_for_the_rows_using_the_adapter(loaded_engine, tokenizer):
    name = ADAPTER_NAMES[2]
    handle = loaded_engine.submit(_request(tokenizer, 0, adapter=name, tokens=80))
    loaded_engine.unload_adapter(name)
    assert not loaded_engine.is_loaded(name)
    with pytest.raises(AdapterNotLoaded):
        loaded_engine.submit(_request(tokenizer, 1, adapter=name))
    assert handle.future.result(60).completion_tokens == 80
    _wait(lambda: loaded_engine.stats()["pending_unloads"] == [])


def test_close_fails_what_is_left(base_model, tokenizer):
    from engine.errors import EngineClosed

    engine = InferenceEngine(base_model, tokenizer, EngineConfig(max_batch_size=1, max_new_tokens_limit=512))
    running = engine.submit(_request(tokenizer, 0, adapter=None, tokens=500))
    _wait(lambda: engine.stats()["running_rows"] == 1)
    queued = engine.submit(_request(tokenizer, 1, adapter=None, tokens=2))
    engine.close(timeout_s=0.0)
    for handle in (running, queued):
        with pytest.raises(EngineClosed):
            handle.future.result(30)
    with pytest.raises(EngineClosed):
        engine.submit(_request(tokenizer, 2, adapter=None))


def test_the_kv_cache_is_allocated_once(loaded_engine, tokenizer, monkeypatch):
    """No K/V tensor is created after the first request: every step writes into the same storage."""
    loaded_engine.submit(_request(tokenizer, 0, tokens=2)).future.result(30)
    cache = loaded_engine.kv_cache
    storage = [t.untyped_storage().data_ptr() for t in [*cache.keys, *cache.values]]
    handles = [loaded_engine.submit(_request(tokenizer, i, tokens=30)) for i in range(8)]
    for h in handles:
        h.future.result(60)
    assert [t.untyped_storage().data_ptr() for t in [*cache.keys, *cache.values]] == storage
    assert cache.nbytes == loaded_engine.stats()["kv_cache_bytes"]


def test_a_failed_forward_fails_its_rows_and_the_loop_serves_on(base_model, tokenizer, monkeypatch):
    engine = InferenceEngine(base_model, tokenizer)
    real = base_model.forward
    broken = {"on": True}

    def forward(*args, **kwargs):
        if broken["on"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(base_model, "forward", forward)
    doomed = [engine.submit(_request(tokenizer, i, adapter=None)) for i in range(3)]
    for handle in doomed:
        with pytest.raises(torch.OutOfMemoryError):
            handle.future.result(30)
    broken["on"] = False
    assert engine.submit(_request(tokenizer, 5, adapter=None, tokens=3)).future.result(30).completion_tokens == 3
    stats = engine.stats()
    assert stats["continuous_rows_failed"] == 3 and stats["running_rows"] == 0 and engine.healthy


SYSTEM = "You are the newsroom's critic. " + "Judge the draft for accuracy, sourcing and tone. " * 6


def _agent_request(tokenizer, user: str, adapter: str | None, tokens: int = 12) -> GenerationRequest:
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                                           tokenize=False)
    return GenerationRequest(prompt=prompt, adapter=adapter, params=SamplingParams(max_new_tokens=tokens))


def test_a_shared_system_prompt_is_computed_once_per_adapter(loaded_engine, tokenizer):
    adapter, other = ADAPTER_NAMES[0], ADAPTER_NAMES[1]
    rows = [_agent_request(tokenizer, u, a) for u, a in
            [("First draft about the council.", adapter), ("Second draft, on the budget vote.", adapter),
             ("Third draft, on the flood.", other), ("Fourth draft, on the match.", adapter)]]
    alone = [loaded_engine.generate([r])[0].text for r in rows]
    texts = [loaded_engine.submit(r).future.result(60).text for r in rows]  # one after another
    assert texts == alone  # reused K/V gives the tokens a full prefill gives
    stats = loaded_engine.stats()
    block = loaded_engine.config.prefix_block_tokens
    system_blocks = len(tokenizer(rows[0].prompt, add_special_tokens=False)["input_ids"][:60]) // block
    assert stats["prefix_lookups"] == 4
    # The 2nd and 4th rows reuse the adapter's system prompt; the 3rd (another adapter) computes its own.
    assert stats["prefix_hits"] == 2 and stats["prefix_reused_tokens"] >= 2 * system_blocks * block
    assert stats["prefix_cached_bytes"] == stats["prefix_cached_blocks"] * block * loaded_engine.kv_bytes_per_token()


def test_the_prefix_cache_stays_within_its_budget(base_model, tokenizer):
    per_block = InferenceEngine(base_model, tokenizer).kv_bytes_per_token() * 16
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(prefix_cache_bytes=5 * per_block))
    for i in range(6):
        engine.submit(_agent_request(tokenizer, f"Draft number {i} " * 8, None, tokens=2)).future.result(30)
    stats = engine.stats()
    # The system prompt's first five blocks fill the budget: every later request reuses them, and none of
    # a prompt's own blocks is evicted for a deeper one of the same prompt.
    assert stats["prefix_cached_blocks"] == 5 and stats["prefix_cached_bytes"] == 5 * per_block
    assert stats["prefix_hits"] == 5 and stats["prefix_reused_tokens"] == 5 * 5 * 16
    assert stats["prefix_evicted_blocks"] == 0
    # Another prompt family takes the space of the least recently used blocks.
    other = GenerationRequest(prompt=chat(tokenizer, "An unrelated request about the weather " * 6),
                              params=SamplingParams(max_new_tokens=2))
    engine.submit(other).future.result(30)
    stats = engine.stats()
    assert stats["prefix_evicted_blocks"] > 0 and stats["prefix_cached_bytes"] <= 5 * per_block
    assert engine.submit(other).future.result(30).completion_tokens == 2
    assert engine.stats()["prefix_hits"] == 6


def test_submit_many_queues_all_or_none_and_they_join_one_prefill(base_model, tokenizer):
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(max_waiting_requests=4))
    rows = [_request(tokenizer, i, adapter=None, tokens=3) for i in range(4)]
    assert [h.future.result(30).completion_tokens for h in engine.submit_many(rows)] == [3] * 4
    assert engine.stats()["continuous_prefills"] == 1
    with pytest.raises(QueueFull):
        engine.submit_many([_request(tokenizer, i, adapter=None) for i in range(5)])
    with pytest.raises(AdapterNotLoaded):  # one bad request refuses them all, and nothing stays pinned
        engine.submit_many([rows[0], _request(tokenizer, 1, adapter="critic/none@1")])
    assert engine.stats()["continuous_rows_finished"] == 4 and engine.stats()["waiting_rows"] == 0


def test_a_closed_engine_stops_its_loop_thread(base_model, tokenizer):
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(max_batch_size=1, max_new_tokens_limit=512))
    engine.submit(_request(tokenizer, 0, adapter=None, tokens=500))
    _wait(lambda: engine.stats()["running_rows"] == 1)
    assert engine.stats()["loop_alive"]
    engine.close(timeout_s=0.0)
    # The loop thread ends: it used to spin on its empty, closed queue, eating a core until the process ended.
    _wait(lambda: not engine.stats()["loop_alive"], timeout_s=10)
