"""Review rules: the ``review`` block of the agent map (validated against each agent's contract) and
ReviewRouter applying it to agent answers."""

from __future__ import annotations

import copy
import json

import pytest

from agent_graph import AgentMapError, load_agent_map
from agent_graph.schema import MAP_FILE, RECOMMENDED_FILE, ReviewRules, default_map_path
from hitl import QueueWriter, ReviewRouter


def _write_map(tmp_path, edit):
    data = json.loads(default_map_path().read_text())
    edit(data["agents"])
    (tmp_path / MAP_FILE).write_text(json.dumps(data))
    (tmp_path / RECOMMENDED_FILE).write_text(default_map_path().with_name(RECOMMENDED_FILE).read_text())
    return tmp_path / MAP_FILE


def test_shipped_map_routes_what_the_issue_names():
    m = load_agent_map()
    assert m.entry("critic").review.block_on == ["reject"]
    assert set(m.entry("chief_editor").review.block_on) == {"reject", "escalate"}
    assert m.entry("fact_checker").review.unverified and m.entry("fact_checker").review.min_confidence == 0.5
    llm = [n for n, e in m.agents.items() if e.kind == "llm"]
    assert all(m.entry(n).review.fallback and 0 < m.entry(n).review.sample <= 0.05 for n in llm)


@pytest.mark.parametrize("agent, review, field, message", [
    ("analyst", {"block_on": ["reject"]}, "review.block_on", "no top-level 'verdict' or 'decision'"),
    ("critic", {"block_on": ["escalate"]}, "review.block_on", "'escalate' not among the contract's values"),
    ("critic", {"unverified": True}, "review.unverified", "no verdict that can be 'unverified'"),
    ("analyst", {"min_confidence": 0.5}, "review.min_confidence", "no 'confidence' field"),
    ("critic", {"sample": 1.5}, "review.sample", "less than or equal to 1"),
    ("critic", {"fallbak": True}, "review.fallbak", "Extra inputs are not permitted"),
])
def test_rules_that_do_not_fit_the_contract_are_refused(tmp_path, agent, review, field, message):
    path = _write_map(tmp_path, lambda agents: agents[agent].__setitem__("review", review))
    with pytest.raises(AgentMapError) as err:
        load_agent_map(path)
    text = str(err.value)
    assert agent in text and field in text and message in text, text


def test_rules_round_trip_json():
    rules = ReviewRules(block_on=["reject"], unverified=False, fallback=True, min_confidence=0.4, sample=0.1)
    assert ReviewRules.model_validate_json(rules.model_dump_json()) == rules


CRITIC_REJECT = {"verdict": "reject", "issues": []}
CRITIC_PASS = {"verdict": "pass", "issues": []}
FACTS = {"verdicts": [{"verdict": "supported", "evidence": [0], "confidence": 0.9},
                      {"verdict": "unverified", "evidence": [], "confidence": 0.3}]}


@pytest.mark.parametrize("rules, output, fallback, draw, expected", [
    ({"block_on": ["reject"]}, CRITIC_REJECT, False, 1.0, ["blocking_verdict"]),
    ({"block_on": ["reject"]}, CRITIC_PASS, False, 1.0, []),
    ({"block_on": ["reject", "escalate"]}, {"decision": "escalate"}, False, 1.0, ["blocking_verdict"]),
    ({"unverified": True}, FACTS, False, 1.0, ["unverified"]),
    ({"min_confidence": 0.5}, FACTS, False, 1.0, ["low_confidence"]),
    ({"min_confidence": 0.2}, FACTS, False, 1.0, []),
    ({"fallback": True}, CRITIC_PASS, True, 1.0, ["fallback"]),
    ({"fallback": True}, CRITIC_PASS, False, 1.0, []),
    ({"sample": 0.1}, CRITIC_PASS, False, 0.05, ["sampled"]),
    ({"sample": 0.1}, CRITIC_PASS, False, 0.5, []),
    ({"unverified": True, "fallback": True, "min_confidence": 0.5, "sample": 1.0}, FACTS, True, 0.0,
     ["unverified", "fallback", "low_confidence", "sampled"]),
    ({}, CRITIC_REJECT, True, 0.0, []),
])
def test_reasons(rules, output, fallback, draw, expected):
    assert ReviewRules(**rules).reasons(output, fallback=fallback, draw=draw) == expected


def test_router_submits_only_routed_answers_and_never_raises(hitl_store):
    writer = QueueWriter(hitl_store)
    router = ReviewRouter("critic", ReviewRules(block_on=["reject"], fallback=True), writer, draw=lambda: 0.99)
    inp = {"headline": "h", "text": "t"}
    base = {"agent": "critic", "answered_by": "critic/mistral_critic_v1@trained-1", "step": "adapter", "pool": "p"}
    assert router.offer(inp, {**base, "output": CRITIC_PASS, "fallback": False}) == []
    assert router.offer(inp, {**base, "output": CRITIC_REJECT, "fallback": False}) == ["blocking_verdict"]
    assert router.offer(inp, {**base, "output": CRITIC_PASS, "fallback": True, "step": "legacy",
                              "answered_by": "heuristic:critic_rules"}) == ["fallback"]
    assert router.offer(inp, None) == []  # a broken response is logged, not raised  # type: ignore[arg-type]
    assert writer.flush(10)
    items = hitl_store.list()
    assert [(i.reasons, i.step, i.answered_by) for i in items] == [
        (["blocking_verdict"], "adapter", "critic/mistral_critic_v1@trained-1"),
        (["fallback"], "legacy", "heuristic:critic_rules")]
    assert items[0].input == {**inp, "claim_checks": [], "sentiment": None, "bias": None, "persuasion": None}
    assert items[0].output == CRITIC_REJECT and items[0].pool == "p"  # the input as the contract writes it
    writer.close()
