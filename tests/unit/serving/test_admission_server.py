"""Admission on a real BaseLLMServer (tiny base, real store and engine): a caller's mistake is a 4xx before any
compute, and one request's grammar compile never holds another request."""

from __future__ import annotations

import asyncio

import pytest

from deployments.errors import InvalidRequestError, ServeError
from deployments.base_llm.server import BaseLLMServer
from deployments.base_llm.settings import BaseLLMSettings

BODY = {"prompt": "[INST] Judge the draft [/INST]", "max_new_tokens": 3}


@pytest.fixture
def server(seeded_store_root):
    return BaseLLMServer(BaseLLMSettings(store_root=str(seeded_store_root)))


def test_a_seed_beyond_uint64_is_a_400_naming_the_limit_and_its_batch_neighbour_is_served(server):
    """Was a 500 ('Overflow when unpacking long long') for the whole batch the row shared."""

    async def run():
        bad = server.generate({**BODY, "temperature": 1.0, "seed": 2**64})
        good = server.generate({**BODY, "temperature": 1.0, "seed": 7})
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = asyncio.run(run())
    assert isinstance(bad, ServeError), bad
    assert (bad.status_code, type(bad).__name__) == (400, type(bad).__name__)
    assert isinstance(bad, InvalidRequestError)
    assert str(2**64) in str(bad) and str(2**64 - 1) in str(bad)
    assert good.completion_tokens >= 1


SLOW_MARK = "held-by-test"


@pytest.fixture
def held_compiles(monkeypatch):
    """Compiles of schemas whose JSON contains SLOW_MARK wait for ``release``; ``started`` is set when one begins."""
    import threading

    from engine.constraints import GrammarCache

    started, release, compiled = threading.Event(), threading.Event(), []
    real = GrammarCache._compile

    def compile_(self, key):
        compiled.append(key)
        if SLOW_MARK in key:
            started.set()
            release.wait(60)
        return real(self, key)

    monkeypatch.setattr(GrammarCache, "_compile", compile_)
    hold = type("Hold", (), {"started": started, "release": release, "compiled": compiled})
    yield hold
    release.set()  # never leave a compile thread blocked


def _schema(marker: str) -> dict:
    return {"type": "object", "properties": {"verdict": {"enum": ["approve", "reject"]}, marker: {"type": "boolean"}},
            "required": ["verdict", marker]}


def test_a_slow_compile_holds_neither_a_free_text_request_nor_another_schema(server, held_compiles):
    async def run():
        slow = asyncio.create_task(server.generate({**BODY, "max_new_tokens": 24, "json_schema": _schema(SLOW_MARK)}))
        await asyncio.to_thread(held_compiles.started.wait, 30)
        free = await server.generate(BODY)
        other = await server.generate({**BODY, "max_new_tokens": 24, "json_schema": _schema("ok")})
        # Both answered while the slow schema is still compiling: it never joined a batch meanwhile.
        assert not slow.done() and not held_compiles.release.is_set()
        held_compiles.release.set()
        return free, other, await slow

    free, other, slow = asyncio.run(run())
    assert free.completion_tokens >= 1
    assert other.text.startswith("{") and slow.text.startswith("{")
    assert server.engine.stats()["grammars_compiled"] == 2
    assert server.engine.stats()["rows"] == 3


def test_a_schema_nested_700_deep_is_refused_before_it_compiles(server, held_compiles):
    from deployments.errors import LimitExceededError

    deep: dict = {"type": "string"}
    for _ in range(700):
        deep = {"type": "object", "properties": {"a": deep}, "required": ["a"]}

    with pytest.raises(LimitExceededError, match=r"max_schema_depth \(32\)") as caught:
        asyncio.run(server.generate({**BODY, "json_schema": deep}))
    assert caught.value.status_code == 400
    assert held_compiles.compiled == [] and server.engine.stats()["rows"] == 0


def test_a_compile_past_the_timeout_is_a_400_naming_it_and_the_schema_is_refused_from_then_on(
        seeded_store_root, held_compiles):
    from engine import EngineConfig
    from deployments.errors import SchemaCompileTimeoutError

    server = BaseLLMServer(BaseLLMSettings(store_root=str(seeded_store_root),
                                           engine=EngineConfig(grammar_compile_timeout_s=0.2)))
    body = {**BODY, "json_schema": _schema(SLOW_MARK)}

    async def run():
        with pytest.raises(SchemaCompileTimeoutError, match=r"grammar_compile_timeout_s \(0.2s\)") as first:
            await server.generate(body)
        assert first.value.status_code == 400
        held_compiles.release.set()
        while server.engine.stats()["grammar_compiles_pending"]:  # the held compile ends (too late)
            await asyncio.sleep(0.05)
        with pytest.raises(SchemaCompileTimeoutError, match="is refused"):
            await server.generate(body)
        return await server.generate({**BODY, "json_schema": _schema("fine")})

    assert asyncio.run(run()).text.startswith("{")
    assert held_compiles.compiled.count(json_key(body["json_schema"])) == 1  # refused without compiling again
    assert server.engine.stats()["grammars_refused"] == 1


def json_key(schema: dict) -> str:
    import json

    return json.dumps(schema, separators=(",", ":"))
