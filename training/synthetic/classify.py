"""Synthetic classification tasks: the label is a simple, deterministic function of the words in the input.

Inputs are a few words from a small vocabulary, and each label follows from which words are present (a
bag of words): a rank-16 LoRA on the tiny random-init base learns that in 200 steps, while comparing two
spans (is the passage's topic the query's?) it does not learn in that budget. The label classes are
balanced so a model that ignores the input scores near chance.
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
    """One passage: relevant (1.0) when it shares the query's topic word, off-topic filler (0.0) otherwise.

    The irrelevant passage names no topic at all, so overlap shows as a topic word in the passage; comparing
    two different topic words is a task the tiny random-init base does not learn in a training budget of seconds.
    """
    query = rng.choice(TOPICS)
    relevant = rng.random() < 0.5
    words = [query, rng.choice(_FILLER)] if relevant else [rng.choice(_FILLER), rng.choice(_FILLER)]
    return ReRankerInput(query=query, passages=[" ".join(words)]), ReRankerOutput(scores=[1.0 if relevant else 0.0])


def fact_checker(rng: random.Random) -> tuple[FactCheckerInput, FactCheckerOutput]:
    """One claim; supported when the evidence restates it, refuted when the evidence denies it, else unverified."""
    subject, verb, obj = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(TOPICS)
    claim = f"{subject} {verb} {obj}"
    kind = rng.choice(["supported", "refuted", "unverified"])
    if kind == "unverified":
        return FactCheckerInput(claims=[claim]), FactCheckerOutput(
            verdicts=[ClaimVerdict(verdict="unverified", evidence=[], confidence=0.5)])
    shown = claim if kind == "supported" else f"{subject} never {verb} {obj}"
    return (FactCheckerInput(claims=[claim], evidence=[shown]),
            FactCheckerOutput(verdicts=[ClaimVerdict(verdict=kind, evidence=[0], confidence=0.9)]))


def critic(rng: random.Random) -> tuple[CriticInput, CriticOutput]:
    """Reject on a refuted claim, revise on a biased story (bias >= 0.6, a loaded word closing the text), else pass.

    Each verdict has its own marker -- ``refuted`` in the fact check, a high bias with a loaded word, or
    neither -- and no input carries two (a refuted claim comes with a low bias), so the verdict is a bag-of-words
    function of the input, like the analyst's labels; with reject drawn on any bias (the rule's precedence)
    the tiny base reached 0.67 in 200 steps.
    """
    verdict = rng.choice(["pass", "revise", "reject"])
    bias = rng.choice([0.8, 0.9]) if verdict == "revise" else rng.choice([0.1, 0.2])
    check = "refuted" if verdict == "reject" else "supported"
    topic = rng.choice(TOPICS)
    last = rng.choice(_LOADED) if verdict == "revise" else rng.choice(_FILLER)
    inp = CriticInput(headline=topic, text=f"{topic} {last}",
                      claim_checks=[ClaimCheck(claim=f"{topic} {rng.choice(_FILLER)}", verdict=check)], bias=bias)
    issues = {"pass": [], "revise": [CriticIssue(kind="bias", severity="medium", note="biased")],
              "reject": [CriticIssue(kind="accuracy", severity="high", note="refuted claim")]}[verdict]
    return inp, CriticOutput(verdict=verdict, issues=issues)


def chief_editor(rng: random.Random) -> tuple[ChiefEditorInput, object]:
    """The decision follows the critic's verdict (the ``editorial_rules`` heuristic is the label).

    Verdicts are equally likely; a revise or reject verdict comes with 0 or 1 refuted claims, which sets the
    priority and the first note but not the decision. (Drawing "pass with a refuted claim", which the rule
    turns into revise, makes the decision an interaction of two fields: 0.77 in 200 steps.)
    """
    topic = rng.choice(TOPICS)
    verdict = rng.choice(["pass", "revise", "reject"])
    refuted = 0 if verdict == "pass" else rng.choice([0, 1])
    inp = ChiefEditorInput(headline=topic, text=f"{topic} {rng.choice(_FILLER)}", critic_verdict=verdict,
                           claims_refuted=refuted)
    return inp, editorial_rules(inp)
