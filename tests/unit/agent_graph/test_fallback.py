"""The fallback chain as data: routes from the map and a model step's request. The walk itself is
AgentServer's (tests/unit/serving/test_agent_server.py, test_fallback_chain.py)."""

from __future__ import annotations

import pytest

from agent_graph import UnknownAgent, generation_request, get_spec, load_agent_map, routes
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


def test_generation_request_carries_the_narrowed_schema_and_the_budget(agent_map):
    spec = get_spec("re_ranker")
    request = generation_request(spec, spec.example, agent_map.entry("re_ranker"))
    assert request["max_new_tokens"] == agent_map.entry("re_ranker").max_new_tokens
    assert request["json_schema"]["properties"]["scores"]["minItems"] == 3  # narrowed to this input
    assert request["messages"][0]["role"] == "system"


def test_unknown_agent(agent_map):
    with pytest.raises(UnknownAgent):
        agent_map.entry("oracle")
