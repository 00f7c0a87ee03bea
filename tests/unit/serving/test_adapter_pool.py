"""The BaseLLM adapter pool on a real engine and store: it resolves model ids and holds engine references for
handles and requests; the engine, which owns the counts, unloads an adapter with its last reference."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture
def pool(seeded_store_root):
    from deployments.base_llm.adapters import AdapterPool
    from deployments.base_llm.metrics import LLMMetrics
    from engine import EngineConfig, InferenceEngine
    from modelstore import ModelStore
    from modelstore.loading import load_base

    store = ModelStore(seeded_store_root)
    loaded = load_base(store, "base_models@current", "fp32")
    engine = InferenceEngine(loaded.model, loaded.tokenizer, EngineConfig(max_loaded_adapters=1))
    return AdapterPool(store, engine, store.resolve("base_models@current").ref, LLMMetrics(),
                       capacity_timeout_s=0.3), engine


def test_handles_and_requests_hold_references_and_the_last_one_unloads(pool):
    pool, engine = pool

    async def scenario():
        handle = await pool.acquire("critic/mistral_critic_v1")
        same = await pool.acquire("critic/mistral_critic_v1@current")  # another id pinned to the same version
        name = handle.name
        assert same.name == name and engine.stats()["adapter_references"] == {name: 2}
        pool.begin_use(handle)  # a request queued with it
        await handle.release()
        await same.release()  # Serve evicted both ids; the request still holds the adapter
        assert pool.resident() == [name] and pool.evictions["critic/mistral_critic_v1"] == 1
        # The engine is full (1 slot) and its only adapter is in use: another adapter waits, then 503s.
        from deployments.errors import OverloadedError

        with pytest.raises(OverloadedError, match="max_loaded_adapters is 1"):
            await pool.acquire("analyst/mistral_analyst_v1")
        await pool.end_use(handle)  # the last reference: the engine unloads it
        assert pool.resident() == [] and engine.adapter_load_counts() == {name: 1}
        other = await pool.acquire("analyst/mistral_analyst_v1")  # room again
        assert pool.resident() == [other.name]
        await handle.release()  # idempotent: a released handle holds nothing
        assert engine.stats()["adapter_references"] == {other.name: 1}

    asyncio.run(scenario())


def test_a_request_for_an_adapter_unloaded_under_it_is_told_to_retry(pool):
    from deployments.errors import OverloadedError

    pool, _ = pool

    async def scenario():
        handle = await pool.acquire("critic/mistral_critic_v1")
        await handle.release()
        with pytest.raises(OverloadedError, match="retry"):
            pool.begin_use(handle)

    asyncio.run(scenario())


def test_a_load_whose_caller_went_away_leaves_no_reference(pool, monkeypatch):
    import threading

    pool, engine = pool
    started, real_load = threading.Event(), engine.load_adapter

    def slow_load(*args, **kwargs):  # the load runs in its thread while the caller is cancelled
        started.set()
        threading.Event().wait(0.3)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine, "load_adapter", slow_load)

    async def scenario():
        task = asyncio.ensure_future(pool.acquire("critic/mistral_critic_v1"))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(300):  # the load finishes in its thread, then the reference nobody holds is dropped
            if engine.stats()["adapter_loads"] and not engine.stats()["adapter_references"]:
                break
            await asyncio.sleep(0.02)
        assert engine.stats()["adapter_loads"] == 1
        assert engine.stats()["adapter_references"] == {} and pool.resident() == []

    asyncio.run(scenario())


def test_concurrent_first_requests_for_one_adapter_share_one_load(pool, monkeypatch):
    import threading

    pool, engine = pool
    calls, real_load = [], engine.load_adapter

    def counted_load(*args, **kwargs):
        calls.append(threading.get_ident())
        threading.Event().wait(0.2)  # long enough for every caller to arrive while it runs
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine, "load_adapter", counted_load)

    async def scenario():
        handles = await asyncio.gather(*(pool.acquire("critic/mistral_critic_v1") for _ in range(5)))
        name = handles[0].name
        assert len(calls) == 1  # one load in one worker thread, not five threads queued on the model lock
        assert engine.stats()["adapter_references"] == {name: 5}  # but a reference per handle
        for handle in handles:
            await handle.release()
        assert pool.resident() == []

    asyncio.run(scenario())
