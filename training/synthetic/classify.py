"""Synthetic classification tasks: the label is a simple, deterministic function of the words in the input.

Inputs are a few words from a small vocabulary so that a rank-16 LoRA on the tiny random-init base learns
each task in seconds; the label classes are balanced so a model that ignores the input scores near chance.
"""

from __future__ import annotations

import random

from agent_graph.agents.analyst import AnalystInput, AnalystOutput
from agent_graph.agents.chief_editor import ChiefEditorInput
from agent_graph.agents.critic import ClaimCheck, CriticInput, CriticIssue, CriticOutput
from agent_graph.agents.fact_checker import ClaimVerdict, FactCheckerInput, FactCheckerOutput
from agent_graph.agents.re_ranker import ReRankerInput, ReRankerOutput
from agent_graph.heuristics import editorial_rules

__all__ = ["TOPICS", "analyst", "re_ranker", "fact_checker", "critic", "chief_editor"]

TOPICS = ["bridge", "election", "storm", "market", "hospital", "school"]
_FILLER = ["city", "council", "report", "team", "week", "budget", "police", "data"]
_POSITIVE = ["win", "growth"]
_NEGATIVE = ["loss", "crisis"]
_LOADED = ["outrageous", "shocking"]
_SUBJECTS = ["council", "police", "court", "team", "bank", "school"]
_VERBS = ["approved", "rejected", "closed", "opened"]


def analyst(rng: random.Random) -> tuple[AnalystInput, AnalystOutput]:
    """Sentiment from a positive / negative word (neither: neutral); bias and the flag from a loaded word."""
    sentiment = rng.choice(["negative", "neutral", "positive"])
    loaded = rng.random() < 0.5
    # The marker words close the text: nearest the answer, where the tiny base's attention learns fastest.
    words = [rng.choice(_FILLER) for _ in range(2)]
    markers = [rng.choice(_LOADED)] if loaded else []
    if sentiment != "neutral":
        markers.append(rng.choice(_POSITIVE if sentiment == "positive" else _NEGATIVE))
    rng.shuffle(markers)
    words += markers
    out = AnalystOutput(sentiment=sentiment, bias=0.8 if loaded else 0.2, persuasion=0.7 if loaded else 0.1,
                        flags=["loaded_language"] if loaded else [])
    return AnalystInput(text=" ".join(words)), out


def re_ranker(rng: random.Random) -> tuple[ReRankerInput, ReRankerOutput]:
    """Two passages; a passage is relevant (1.0) when it names the query's topic, else 0.0."""
    query = rng.choice(TOPICS)
    passages, scores = [], []
    for _ in range(2):
        relevant = rng.random() < 0.5
        topic = query if relevant else rng.choice([t for t in TOPICS if t != query])
        passages.append(f"{topic} {rng.choice(_FILLER)}")
        scores.append(1.0 if relevant else 0.0)
    return ReRankerInput(query=query, passages=passages), ReRankerOutput(scores=scores)


def fact_checker(rng: random.Random) -> tuple[FactCheckerInput, FactCheckerOutput]:
    """One claim; supported when the evidence states it, refuted when it states another object, else unverified."""
    subject, verb, obj = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(TOPICS)
    claim = f"{subject} {verb} {obj}"
    kind = rng.choices(["supported", "refuted", "unverified"], weights=[2, 2, 1])[0]
    if kind == "unverified":
        return FactCheckerInput(claims=[claim]), FactCheckerOutput(
            verdicts=[ClaimVerdict(verdict="unverified", evidence=[], confidence=0.5)])
    shown = obj if kind == "supported" else rng.choice([t for t in TOPICS if t != obj])
    return (FactCheckerInput(claims=[claim], evidence=[f"{subject} {verb} {shown}"]),
            FactCheckerOutput(verdicts=[ClaimVerdict(verdict=kind, evidence=[0], confidence=0.9)]))


def critic(rng: random.Random) -> tuple[CriticInput, CriticOutput]:
    """Reject on a refuted claim, revise on bias >= 0.6, else pass."""
    verdict = rng.choice(["pass", "revise", "reject"])
    bias = rng.choice([0.7, 0.8, 0.9]) if verdict == "revise" else rng.choice([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]) \
        if verdict == "reject" else rng.choice([0.1, 0.2, 0.3])
    check = "refuted" if verdict == "reject" else "supported"
    topic = rng.choice(TOPICS)
    inp = CriticInput(headline=topic, text=f"{topic} {rng.choice(_FILLER)}",
                      claim_checks=[ClaimCheck(claim=f"{topic} {rng.choice(_FILLER)}", verdict=check)], bias=bias)
    issues = {"pass": [], "revise": [CriticIssue(kind="bias", severity="medium", note="biased")],
              "reject": [CriticIssue(kind="accuracy", severity="high", note="refuted claim")]}[verdict]
    return inp, CriticOutput(verdict=verdict, issues=issues)


def chief_editor(rng: random.Random) -> tuple[ChiefEditorInput, object]:
    """The critic's verdict and refuted claims decide (the ``editorial_rules`` heuristic is the label)."""
    topic = rng.choice(TOPICS)
    inp = ChiefEditorInput(headline=topic, text=f"{topic} {rng.choice(_FILLER)}",
                           critic_verdict=rng.choice(["pass", "revise", "reject"]),
                           claims_refuted=rng.choice([0, 0, 1]))
    return inp, editorial_rules(inp)
