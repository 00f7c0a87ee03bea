"""Heuristics: a valid, deterministic output for every agent, on examples and on inputs at their bounds."""

from __future__ import annotations

import pytest

from agent_graph import UnknownAgent, get_spec, run_heuristic
from agent_graph.heuristics import HEURISTICS, get_heuristic

from .images import decoded, encode

LONG = "The council said the bridge budget rose sharply. " * 40

# Inputs at (or near) their bounds: outputs must still fit every output limit.
EDGE_INPUTS = {
    "synthesizer": {"task": "synthesis", "articles": [{"title": "T" * 200, "text": LONG[:6000]}] * 6},
    "journalist": {"topic": "t" * 200, "facts": ["word " * 59 + "end."] * 12, "max_words": 100},
    "chief_editor": {"headline": "h", "text": "x", "critic_issues": ["i" * 160] * 8, "claims_refuted": 16,
                     "claims_unverified": 16},
    "reasoning": {"question": "q" * 500, "premises": ["p" * 300] * 10},
    "critic": {"headline": "h", "text": "short", "claim_checks": [{"claim": "c" * 300, "verdict": "refuted"}] * 8,
               "bias": 1.0, "persuasion": 1.0},
    "fact_checker": {"claims": ["The bridge opened in 1999."] * 7, "evidence": []},
    "analyst": {"text": "outrageous shocking disaster " * 250},
    "re_ranker": {"query": "the of and", "passages": ["p"] * 16},
    "scout": {"texts": ["a " * 4000] * 64, "normalize": False},
    "memory": {"texts": ["", "x"][1:]},
    "newsreader": {"image": "", "text": "t" * 1000},  # the image is filled in below: a tall grey JPEG, 8 px wide
}


def _edge_input(agent: str) -> dict:
    if agent != "newsreader":
        return EDGE_INPUTS[agent]
    from PIL import Image

    return {**EDGE_INPUTS[agent], "image": encode(Image.new("L", (8, 900), 128), "JPEG", data_url=True)}


@pytest.mark.parametrize("name", sorted(HEURISTICS))
def test_heuristic_valid_and_deterministic(name):
    h = get_heuristic(name)
    spec = get_spec(h.agent)
    for inp in (spec.example, spec.load_input(_edge_input(h.agent))):
        args = (inp, decoded(h.agent, inp)) if h.images else (inp,)
        first = h.fn(*args)
        assert isinstance(first, spec.output_model)
        assert spec.validate_output(first, inp) == first
        assert h.fn(*args) == first == run_heuristic(name, *args)


def test_every_agent_has_a_heuristic():
    from agent_graph import AGENTS

    assert {h.agent for h in HEURISTICS.values()} == set(AGENTS)


def test_unknown_heuristic_lists_known():
    with pytest.raises(UnknownAgent, match="heuristic:crystal_ball.*heuristic:extractive_lead"):
        get_heuristic("crystal_ball")


def _run(agent, **data):
    spec = get_spec(agent)
    return next(h for h in HEURISTICS.values() if h.agent == agent).fn(spec.load_input(data))


def test_fact_checker_verdicts():
    out = _run("fact_checker", claims=["The council approved the bridge on Monday.", "The bridge costs 90 million euros.",
                                       "Aliens built the bridge."],
               evidence=["Minutes: the council approved the bridge on Monday by 12 votes to 3.",
                         "The approved budget of the bridge is 40 million euros."])
    assert [(v.verdict, v.evidence) for v in out.verdicts] == [("supported", [0]), ("refuted", [1]), ("unverified", [])]


def test_re_ranker_prefers_overlap():
    out = _run("re_ranker", query="bridge budget", passages=["football", "bridge budget approved", "the bridge"])
    assert out.ranking() == [1, 2, 0] and out.scores == [0.0, 1.0, 0.5]


def test_analyst_neutral_and_loaded():
    calm = _run("analyst", text="The council met on Monday, officials said.")
    assert (calm.sentiment, calm.flags) == ("neutral", [])
    loaded = _run("analyst", text="A shocking, outrageous disaster. The scandalous plan failed.")
    assert loaded.sentiment == "negative" and "loaded_language" in loaded.flags and loaded.bias > calm.bias


def test_critic_passes_clean_story_and_rejects_mostly_refuted():
    clean = _run("critic", headline="h", text="The council approved the bridge on Monday, the mayor said today.",
                 claim_checks=[{"claim": "c", "verdict": "supported"}], bias=0.1, persuasion=0.1)
    assert (clean.verdict, clean.issues) == ("pass", [])
    bad = _run("critic", headline="h", text="The council approved the bridge on Monday, the mayor said today.",
               claim_checks=[{"claim": "c", "verdict": "refuted"}])
    assert bad.verdict == "reject" and bad.issues[0].kind == "accuracy" and bad.issues[0].severity == "high"


def test_chief_editor_follows_the_desk():
    assert _run("chief_editor", headline="h", text="t", critic_verdict="pass").decision == "publish"
    out = _run("chief_editor", headline="h", text="t", critic_verdict="revise", claims_refuted=2)
    assert (out.decision, out.priority) == ("revise", "high") and out.notes[0].startswith("Correct or remove 2")


def test_journalist_respects_word_target():
    out = _run("journalist", topic="t", facts=["one two three four five"] * 10, max_words=30)
    assert out.facts_used == [0, 1, 2, 3, 4, 5] and len(out.body.split()) == 30


def test_reasoning_without_premises():
    out = _run("reasoning", question="Why?")
    assert out.steps[0].uses == [] and out.confidence == 0.1


def test_hashed_embeddings_are_normalised_and_similar_for_similar_text():
    out = _run("scout", texts=["bridge budget approved", "approved bridge budget", "football match"])
    dot = [sum(a * b for a, b in zip(out.vectors[0], v)) for v in out.vectors]
    assert dot[0] == pytest.approx(1.0) and dot[1] == pytest.approx(1.0) and dot[2] < 0.5
