"""The default adapters' synthetic tasks: classification labels are balanced and a function of the input
(so a model ignoring the input stays near chance); extractive answers copy spans of the input."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from training.synthetic import CLASSIFICATION, EXTRACTIVE, generate

LABEL = {
    "analyst": lambda o: (o.sentiment, o.bias >= 0.5),
    "re_ranker": lambda o: tuple(s >= 0.5 for s in o.scores),
    "fact_checker": lambda o: tuple(v.verdict for v in o.verdicts),
    "critic": lambda o: o.verdict,
    "chief_editor": lambda o: o.decision,
}

COPIED = {
    "synthesizer": lambda o: [o.headline, o.summary],
    "journalist": lambda o: [o.headline, o.lede],
    "reasoning": lambda o: [o.conclusion],
}


@pytest.mark.parametrize("agent", CLASSIFICATION)
def test_labels_are_balanced_and_follow_from_the_input(agent):
    pairs = generate(agent, 1200, 0)
    counts = Counter(LABEL[agent](out) for _, out in pairs)
    assert len(counts) >= 2 and min(counts.values()) >= 0.7 * max(counts.values()), counts
    seen = defaultdict(set)
    for inp, out in pairs:
        seen[inp.model_dump_json()].add(LABEL[agent](out))
    assert all(len(labels) == 1 for labels in seen.values())


@pytest.mark.parametrize("agent", EXTRACTIVE)
def test_extractive_answers_copy_the_input(agent):
    for inp, out in generate(agent, 50, 0):
        copied = COPIED[agent](out)
        assert all(c and c in inp.model_dump_json() for c in copied)

