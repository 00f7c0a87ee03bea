"""The grammar compile pool on the real engine and tiny tokenizer: compiles run beside generation, shared,
bounded and timed out; generate() uses a precompiled grammar as is. A test holds a compile on an Event."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from engine import EngineConfig, GenerationRequest, InferenceEngine, SamplingParams
from engine.constraints import GrammarCache
from engine.errors import GrammarCompileBusy, GrammarCompileTimeout, InvalidSchema
from tests.unit.engine.helpers import chat

HELD = "held"


def schema(name: str) -> dict:
    return {"type": "object", "properties": {name: {"type": "boolean"}}, "required": [name]}


@pytest.fixture
def hold(monkeypatch):
    """Compiles of schemas mentioning HELD block until ``hold.release`` is set; every compiled key is recorded."""
    state = type("Hold", (), {})()
    state.started, state.release, state.keys = threading.Event(), threading.Event(), []
    real = GrammarCache._compile

    def compile_(self, key):
        state.keys.append(key)
        if HELD in key:
            state.started.set()
            state.release.wait(60)
        return real(self, key)

    monkeypatch.setattr(GrammarCache, "_compile", compile_)
    yield state
    state.release.set()


def make_engine(base_model, tokenizer, **config) -> InferenceEngine:
    return InferenceEngine(base_model, tokenizer, EngineConfig(**config))


def test_generation_completes_while_another_schema_is_still_compiling(base_model, tokenizer, hold):
    engine = make_engine(base_model, tokenizer)

    async def run():
        held = asyncio.create_task(engine.precompile(schema(HELD)))
        await asyncio.to_thread(hold.started.wait, 30)
        grammar = await engine.precompile(schema("quick"))
        rows = [GenerationRequest(prompt=chat(tokenizer, "x"), json_schema=schema("quick"), grammar=grammar,
                                  params=SamplingParams(max_new_tokens=16)),
                GenerationRequest(prompt=chat(tokenizer, "y"), params=SamplingParams(max_new_tokens=4))]
        results = await asyncio.to_thread(engine.generate, rows)
        assert not held.done()  # generated while the held compile still runs
        hold.release.set()
        return results, await held

    results, _ = asyncio.run(run())
    assert json.loads(results[0].text) in ({"quick": True}, {"quick": False})
    assert results[1].completion_tokens == 4


def test_generate_uses_the_precompiled_grammar_without_compiling(base_model, tokenizer, hold):
    engine = make_engine(base_model, tokenizer)
    grammar = asyncio.run(engine.precompile(schema("a")))
    other_schema = schema("b")  # deliberately not the schema the grammar was compiled from
    request = GenerationRequest(prompt=chat(tokenizer, "x"), json_schema=other_schema, grammar=grammar,
                                params=SamplingParams(max_new_tokens=16))
    result = engine.generate([request])[0]
    assert json.loads(result.text).keys() == {"a"}  # the grammar given decided, nothing was compiled inside
    assert hold.keys == [json.dumps(schema("a"), separators=(",", ":"))]


def test_concurrent_requests_for_one_schema_share_one_compile(base_model, tokenizer, hold):
    engine = make_engine(base_model, tokenizer)

    async def run():
        tasks = [asyncio.create_task(engine.precompile(schema(HELD))) for _ in range(4)]
        await asyncio.to_thread(hold.started.wait, 30)
        hold.release.set()
        return await asyncio.gather(*tasks)

    grammars = asyncio.run(run())
    assert len({id(g) for g in grammars}) == 1
    assert len(hold.keys) == 1 and engine.stats()["grammars_compiled"] == 1


def test_a_compile_past_the_timeout_is_refused_now_and_later_without_recompiling(base_model, tokenizer, hold):
    engine = make_engine(base_model, tokenizer, grammar_compile_timeout_s=0.2)
    with pytest.raises(GrammarCompileTimeout, match=r"grammar_compile_timeout_s \(0.2s\)"):
        asyncio.run(engine.precompile(schema(HELD)))
    hold.release.set()
    cache = engine._grammar_cache()
    while cache.pending:
        threading.Event().wait(0.05)
    with pytest.raises(GrammarCompileTimeout, match="is refused"):
        asyncio.run(engine.precompile(schema(HELD)))
    assert len(hold.keys) == 1 and engine.stats()["grammars_refused"] == 1 and engine.stats()["grammars_compiled"] == 0


def test_waiting_for_a_busy_pool_is_a_retryable_503_not_the_schemas_fault(base_model, tokenizer, hold):
    engine = make_engine(base_model, tokenizer, grammar_compile_workers=1, grammar_compile_timeout_s=0.2)

    async def run():
        held = asyncio.create_task(engine.precompile(schema(HELD)))
        await asyncio.to_thread(hold.started.wait, 30)
        with pytest.raises(GrammarCompileBusy, match="waited .* for a grammar compile worker") as caught:
            await engine.precompile(schema("queued"))
        # Nobody waits for the queued compile any more: dropped, so abandoned work never piles up.
        assert engine.stats()["grammar_compiles_pending"] == 1
        hold.release.set()
        await asyncio.gather(held, return_exceptions=True)
        return caught.value

    error = asyncio.run(run())
    from deployments.errors import to_serve_error

    assert to_serve_error(error).status_code == 503  # busy, retryable: the one mapping says so
    assert json.dumps(schema("queued"), separators=(",", ":")) not in hold.keys
    # Once a worker is free the same schema compiles: being queued is not held against it.
    assert asyncio.run(engine.precompile(schema("queued"))) is not None


def test_more_pending_schemas_than_the_bound_are_refused_at_once(base_model, tokenizer, hold):
    engine = make_engine(base_model, tokenizer, grammar_compile_workers=1, max_pending_grammar_compiles=1)

    async def run():
        held = asyncio.create_task(engine.precompile(schema(HELD)))
        await asyncio.to_thread(hold.started.wait, 30)
        with pytest.raises(GrammarCompileBusy, match=r"max_pending_grammar_compiles is 1"):
            await engine.precompile(schema("second"))
        hold.release.set()
        await held

    asyncio.run(run())
    assert hold.keys.count(json.dumps(schema("second"), separators=(",", ":"))) == 0


def test_a_schema_xgrammar_rejects_is_invalid_schema_through_the_pool(base_model, tokenizer):
    engine = make_engine(base_model, tokenizer)
    with pytest.raises(InvalidSchema, match="cannot be compiled"):
        asyncio.run(engine.precompile({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}))
    assert engine.stats()["grammar_compiles_pending"] == 0


def test_compile_threads_run_at_a_lower_cpu_priority_than_the_decode_loop(base_model, tokenizer, monkeypatch):
    import os

    seen = []
    real = GrammarCache._compile

    def compile_(self, key):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real(self, key)

    monkeypatch.setattr(GrammarCache, "_compile", compile_)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    asyncio.run(make_engine(base_model, tokenizer, grammar_compile_nice=5).precompile(schema("a")))
    assert seen == [min(19, own + 5)]


def test_after_close_a_new_schema_is_a_503_and_cached_ones_still_serve(base_model, tokenizer):
    engine = make_engine(base_model, tokenizer)
    cached = asyncio.run(engine.precompile(schema("a")))
    engine.close()
    assert asyncio.run(engine.precompile(schema("a"))) is cached
    with pytest.raises(GrammarCompileBusy, match="closed"):
        asyncio.run(engine.precompile(schema("b")))
    assert engine.stats()["grammar_compiles_pending"] == 0


def test_a_queued_compile_stays_while_anyone_still_waits_for_it(base_model, tokenizer, hold):
    engine = make_engine(base_model, tokenizer, grammar_compile_workers=1)
    cache = engine._grammar_cache()
    held = cache.submit(schema(HELD))
    hold.started.wait(30)
    first, second = cache.submit(schema("b")), cache.submit(schema("b"))
    assert first is second and cache.pending == 2
    cache.leave(first)  # one gave up, the other still waits
    assert cache.pending == 2
    hold.release.set()
    assert cache.wait(second) is not None and cache.wait(held) is not None
    assert cache.pending == 0 and engine.stats()["grammars_compiled"] == 2
