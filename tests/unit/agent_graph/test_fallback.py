"""The fallback chain: adapter, then bare base, then the legacy heuristic; every failure recorded."""

from __future__ import annotations

import pytest

from agent_graph import (FallbackExhausted, InvalidAgentInput, UnknownAgent, answer, generation_request,
                         get_spec, load_agent_map, routes)
from agent_graph.schema import AgentMap
from modelstore.seed import adapter_ref


@pytest.fixture(scope="module")
def agent_map():
    return load_agent_map()


def test_routes_follow_the_map(agent_map):
    chain = routes(agent_map, "critic")
    assert [(r.step, r.model_id) for r in chain] == [
        ("adapter", adapter_ref("critic", "current")), ("base", "base_models@v1-tiny-mistral"), ("legacy", "heuristic:rule_checks")]
    assert [r.multiplexed_model_id for r in chain[:2]] == [adapter_ref("critic", "current"), ""]
    assert [r.step for r in routes(agent_map, "scout")] == ["base", "legacy"]
    assert routes(agent_map, "scout")[0].model_id == "sentence-transformers/all-MiniLM-L6-v2"


def test_task_router_route(agent_map):
    data = agent_map.model_dump()
    data["agents"]["synthesizer"]["task_adapters"] = {"synthesis": "synthesizer/mistral_synth_multi_v1@v2"}
    routed = AgentMap.model_validate(data)
    assert routes(routed, "synthesizer", "synthesis")[0].model_id == "synthesizer/mistral_synth_multi_v1@v2"
    assert routes(routed, "synthesizer", "summary")[0].model_id == adapter_ref("synthesizer", "current")


def test_adapter_answers_first(agent_map):
    seen = []

    def execute(route, spec, inp, entry):
        seen.append(generation_request(spec, inp, entry))
        return '{"scores":[0.9,0.1,0.4]}'

    spec = get_spec("re_ranker")
    result = answer(agent_map, "re_ranker", spec.example.model_dump(), execute)
    assert result.answered_by == adapter_ref("re_ranker", "current") and result.failures == ()
    assert result.output.scores == [0.9, 0.1, 0.4]
    request = seen[0]
    assert request["max_new_tokens"] == agent_map.entry("re_ranker").max_new_tokens
    assert request["json_schema"]["properties"]["scores"]["minItems"] == 3  # narrowed to this input
    assert request["messages"][0]["role"] == "system"


def test_falls_through_to_heuristic_and_records_failures(agent_map):
    def execute(route, spec, inp, entry):
        if route.step == "adapter":
            raise RuntimeError("adapter not loaded")
        return "I think it is fine"  # the bare base ignores the contract

    spec = get_spec("critic")
    result = answer(agent_map, "critic", spec.example, execute)
    assert result.answered_by == "heuristic:rule_checks" and result.route.step == "legacy"
    assert [f[0] for f in result.failures] == [f"adapter:{adapter_ref('critic', 'current')}", "base:base_models@v1-tiny-mistral"]
    assert "adapter not loaded" in result.failures[0][1] and "ContractError" in result.failures[1][1]


def test_embedding_agent_returns_a_model(agent_map):
    spec = get_spec("scout")
    out = spec.output_model(model="m", dimensions=2, vectors=[[1.0, 0.0], [0.0, 1.0]])
    result = answer(agent_map, "scout", spec.example, lambda *a: out)
    assert result.output == out and result.answered_by == "sentence-transformers/all-MiniLM-L6-v2"


def test_exhausted_chain_lists_every_attempt(agent_map):
    data = agent_map.model_dump()
    data["agents"]["critic"]["fallback"] = ["adapter", "base"]

    def execute(route, spec, inp, entry):
        raise ConnectionError(f"{route.step} down")

    with pytest.raises(FallbackExhausted) as info:
        answer(AgentMap.model_validate(data), "critic", get_spec("critic").example, execute)
    assert [reason for _, reason in info.value.attempts] == ["ConnectionError: adapter down",
                                                              "ConnectionError: base down"]
    assert "every fallback step failed" in str(info.value)


def test_bad_input_tries_nothing(agent_map):
    calls = []
    with pytest.raises(InvalidAgentInput):
        answer(agent_map, "re_ranker", {"query": "q", "passages": []}, lambda *a: calls.append(a))
    assert calls == []


def test_unknown_agent(agent_map):
    with pytest.raises(UnknownAgent):
        answer(agent_map, "oracle", {}, lambda *a: None)
