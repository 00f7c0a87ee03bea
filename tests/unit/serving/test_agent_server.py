"""AgentServer over fake model calls: the fallback walk, strict mode, caller errors and the metric totals."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent_graph import get_spec, load_agent_map
from deployments.agent.server import AgentServer
from deployments.errors import AgentUnavailableError, FallbackExhaustedError
from deployments.errors import (AdapterLoadFailedError, InvalidRequestError, OverloadedError,
                                RequestTooLargeError)

BASE = "base_models@v1-tiny-mistral"


def _valid_text(agent: str) -> str:
    spec = get_spec(agent)
    from agent_graph import run_heuristic

    legacy = load_agent_map().legacy[agent].target
    return json.dumps(spec.validate_output(run_heuristic(legacy, spec.example), spec.example).model_dump(mode="json"))


def _llm(plan: dict[str, object]):
    """A fake BaseLLM: plan maps a model id ('' = bare base) to an exception, 'length' or reply text."""
    calls: list[str] = []

    async def call(model_id: str, body: dict) -> dict:
        calls.append(model_id)
        outcome = plan[model_id]
        if isinstance(outcome, Exception):
            raise outcome
        text, finish = ("{", "length") if outcome == "length" else (outcome, "stop")
        return {"text": text, "finish_reason": finish, "prompt_tokens": 10, "completion_tokens": 5,
                "adapter": model_id or None, "base": BASE}

    call.calls = calls  # type: ignore[attr-defined]
    return call


def _server(agent: str, plan: dict, strict: bool = False) -> AgentServer:
    return AgentServer(agent, load_agent_map(), llm=_llm(plan), strict=strict)


def _answer(server: AgentServer, body=None, **kw):
    return asyncio.run(server.answer(body if body is not None else get_spec(server.name).example, **kw))


def test_adapter_answers_without_fallback():
    server = _server("critic", {"critic/mistral_critic_v1@current": _valid_text("critic")})
    reply = _answer(server)
    assert (reply.step, reply.fallback, reply.failures) == ("adapter", False, [])
    assert reply.answered_by == "critic/mistral_critic_v1@current"
    assert reply.usage.total_tokens == 15
    assert server.stats()["requests"] == {"ok:adapter": 1}


@pytest.mark.parametrize("adapter_outcome", [AdapterLoadFailedError("checksum mismatch"), "length", "not json"])
def test_a_failed_adapter_falls_back_to_the_base_and_is_counted(adapter_outcome):
    server = _server("critic", {"critic/mistral_critic_v1@current": adapter_outcome, "": _valid_text("critic")})
    reply = _answer(server)
    assert (reply.step, reply.fallback, reply.answered_by) == ("base", True, BASE)
    assert reply.failures[0].route == "adapter:critic/mistral_critic_v1@current"
    assert server.metrics.snapshot()["fallbacks"] == {"adapter->base": 1}
    get_spec("critic").output_model.model_validate(reply.output)


def test_the_legacy_heuristic_is_the_last_resort():
    broken = AdapterLoadFailedError("bad")
    server = _server("re_ranker", {"re_ranker/mistral_re_ranker_v1@current": broken, "": "length"})
    reply = _answer(server)
    assert (reply.step, reply.answered_by, len(reply.failures)) == ("legacy", "heuristic:token_overlap", 2)
    assert "truncated at max_new_tokens" in reply.failures[1].reason


@pytest.mark.parametrize("server_strict,request_strict", [(True, False), (False, True)])
def test_strict_mode_fails_clearly_instead_of_falling_back(server_strict, request_strict):
    server = _server("critic", {"critic/mistral_critic_v1@current": AdapterLoadFailedError("checksum mismatch")},
                     strict=server_strict)
    with pytest.raises(AgentUnavailableError, match="critic/mistral_critic_v1@current.*strict mode") as info:
        _answer(server, strict=request_strict)
    assert info.value.status_code == 503
    assert server.metrics.snapshot()["fallbacks"] == {}


@pytest.mark.parametrize("error", [RequestTooLargeError("prompt too long"), InvalidRequestError("bad"),
                                   OverloadedError("busy")])
def test_caller_errors_and_overload_stop_the_walk(error):
    llm = _llm({"critic/mistral_critic_v1@current": error, "": _valid_text("critic")})
    server = AgentServer("critic", load_agent_map(), llm=llm)
    with pytest.raises(type(error)):
        _answer(server)
    assert llm.calls == ["critic/mistral_critic_v1@current"]


def test_invalid_input_is_a_400_and_calls_no_model():
    llm = _llm({})
    server = AgentServer("critic", load_agent_map(), llm=llm)
    with pytest.raises(InvalidRequestError, match="headline"):
        _answer(server, {"headline": 3})
    assert llm.calls == []


def test_every_step_failing_is_a_502(monkeypatch):
    import deployments.agent.server as mod

    monkeypatch.setattr(mod, "run_heuristic", lambda *_: (_ for _ in ()).throw(RuntimeError("no heuristic")))
    server = _server("critic", {"critic/mistral_critic_v1@current": "length", "": "length"})
    with pytest.raises(FallbackExhaustedError, match="every fallback step failed") as info:
        _answer(server)
    assert info.value.status_code == 502


def test_embedding_agent_uses_the_embeddings_deployment():
    async def embed(body: dict) -> dict:
        return {"model": "mini", "dimensions": 2, "vectors": [[1.0, 0.0] for _ in body["texts"]]}

    server = AgentServer("scout", load_agent_map(), embed=embed)
    reply = _answer(server)
    assert (reply.step, reply.answered_by) == ("base", "sentence-transformers/all-MiniLM-L6-v2")
    assert len(reply.output["vectors"]) == len(get_spec("scout").example.texts)


def test_current_refs_are_pinned_per_request_so_a_promote_takes_effect_without_restart(store, tmp_path):
    import shutil

    calls: list[str] = []
    text = _valid_text("critic")

    async def llm(model_id: str, body: dict) -> dict:
        calls.append(model_id)
        return {"text": text, "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1,
                "adapter": model_id or None, "base": BASE}

    server = AgentServer("critic", load_agent_map(), llm=llm, pin=lambda ref: str(store.pin(ref)))
    first = _answer(server)
    assert calls == ["critic/mistral_critic_v1@seed-1"] and first.answered_by == calls[0]

    src = shutil.copytree(store.adapter_path("critic/mistral_critic_v1@seed-1"), tmp_path / "v2",
                          ignore=shutil.ignore_patterns("manifest.json"))
    store.publish_adapter("critic", "mistral_critic_v1", src, "v2")  # promoted to current
    second = _answer(server)
    assert calls[-1] == "critic/mistral_critic_v1@v2" and second.answered_by == "critic/mistral_critic_v1@v2"
    store.rollback("critic/mistral_critic_v1")
    _answer(server)
    assert calls[-1] == "critic/mistral_critic_v1@seed-1"


def test_an_adapter_gone_from_the_store_falls_back_to_the_base(store):
    import shutil

    plan = {"": _valid_text("critic")}
    server = AgentServer("critic", load_agent_map(), llm=_llm(plan), pin=lambda ref: str(store.pin(ref)))
    shutil.rmtree(store.root / "critic")
    result = _answer(server)
    assert result.fallback and result.step == "base" and "NotFoundError" in result.failures[0].reason
