"""The fallback walk through AgentServer, the one walker of an agent's chain: adapter, then the bare base,
then the legacy heuristic, every failure recorded; bad input tries nothing; an embedding agent's chain."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent_graph import get_spec, load_agent_map
from agent_graph.schema import AgentMap
from deployments.agent.server import AgentServer
from deployments.errors import FallbackExhaustedError
from deployments.errors import InvalidRequestError
from modelstore.seed import adapter_ref


def _answer(server: AgentServer, body):
    return asyncio.run(server.answer(body))


def test_adapter_answers_first_with_the_agent_request():
    seen = []

    async def llm(model_id: str, body: dict) -> dict:
        seen.append((model_id, body))
        return {"text": '{"scores":[0.9,0.1,0.4]}', "finish_reason": "stop", "adapter": model_id, "base": "b"}

    spec = get_spec("re_ranker")
    reply = _answer(AgentServer("re_ranker", load_agent_map(), llm=llm), spec.example.model_dump())
    assert (reply.step, reply.failures, reply.output["scores"]) == ("adapter", [], [0.9, 0.1, 0.4])
    model_id, body = seen[0]
    assert model_id == adapter_ref("re_ranker", "current")
    assert body["json_schema"]["properties"]["scores"]["minItems"] == 3


def test_falls_through_to_the_heuristic_and_records_each_failure():
    async def llm(model_id: str, body: dict) -> dict:
        if model_id:
            raise RuntimeError("adapter not loaded")
        return {"text": "I think it is fine", "finish_reason": "stop", "base": "base_models@v1-tiny-mistral"}

    reply = _answer(AgentServer("critic", load_agent_map(), llm=llm), get_spec("critic").example)
    assert (reply.step, reply.answered_by) == ("legacy", "heuristic:rule_checks")
    assert [f.route for f in reply.failures] == [f"adapter:{adapter_ref('critic', 'current')}",
                                                 "base:base_models@v1-tiny-mistral"]
    assert "adapter not loaded" in reply.failures[0].reason and "ContractError" in reply.failures[1].reason


def test_an_embedding_agent_walks_its_model_then_legacy():
    spec = get_spec("scout")
    out = spec.output_model(model="m", dimensions=2, vectors=[[1.0, 0.0], [0.0, 1.0]])

    async def embed(body: dict) -> dict:
        return json.loads(out.model_dump_json())

    reply = _answer(AgentServer("scout", load_agent_map(), embed=embed), spec.example)
    assert reply.step == "base" and reply.answered_by == "sentence-transformers/all-MiniLM-L6-v2"
    assert reply.output == json.loads(out.model_dump_json())


def test_an_exhausted_chain_lists_every_attempt():
    data = load_agent_map().model_dump()
    data["agents"]["critic"]["fallback"] = ["adapter", "base"]

    async def llm(model_id: str, body: dict) -> dict:
        raise ConnectionError(f"{'adapter' if model_id else 'base'} down")

    with pytest.raises(FallbackExhaustedError) as info:
        _answer(AgentServer("critic", AgentMap.model_validate(data), llm=llm), get_spec("critic").example)
    assert "adapter:" in str(info.value) and "ConnectionError: base down" in str(info.value)
    assert "every fallback step failed" in str(info.value)


def test_bad_input_tries_nothing():
    calls = []

    async def llm(model_id: str, body: dict) -> dict:
        calls.append(model_id)
        return {}

    with pytest.raises(InvalidRequestError):
        _answer(AgentServer("re_ranker", load_agent_map(), llm=llm), {"query": "q", "passages": []})
    assert calls == []
