"""Synthetic extractive tasks: the answer copies a short span of the input."""

from __future__ import annotations

import random

from agent_graph.agents.journalist import JournalistInput, JournalistOutput
from agent_graph.agents.reasoning import ReasoningInput, ReasoningOutput, ReasoningStep
from agent_graph.agents.synthesizer import SourceArticle, SynthesizerInput, SynthesizerOutput

from .classify import TOPICS

__all__ = ["synthesizer", "journalist", "reasoning"]

_ACTORS = ["council", "police", "court", "team", "bank", "school"]
_ACTIONS = ["approved", "rejected", "closed", "opened"]


def _phrase(rng: random.Random) -> str:
    return f"{rng.choice(_ACTORS)} {rng.choice(_ACTIONS)} {rng.choice(TOPICS)}"


def synthesizer(rng: random.Random) -> tuple[SynthesizerInput, SynthesizerOutput]:
    """Headline: the article's title; summary: its text (one short sentence)."""
    title, text = rng.choice(TOPICS), _phrase(rng)
    inp = SynthesizerInput(articles=[SourceArticle(title=title, text=text)])
    return inp, SynthesizerOutput(headline=title, summary=text, key_points=[], sources=[0])


def journalist(rng: random.Random) -> tuple[JournalistInput, JournalistOutput]:
    """Headline: the topic; lede and body: the first fact."""
    topic, fact = rng.choice(TOPICS), _phrase(rng)
    inp = JournalistInput(topic=topic, facts=[fact], style="brief", max_words=30)
    return inp, JournalistOutput(headline=topic, lede=fact, body=fact, facts_used=[0])


def reasoning(rng: random.Random) -> tuple[ReasoningInput, ReasoningOutput]:
    """Two premises; the one step and the conclusion restate the second premise."""
    premises = [_phrase(rng), _phrase(rng)]
    inp = ReasoningInput(question=f"what about {rng.choice(TOPICS)}", premises=premises)
    out = ReasoningOutput(steps=[ReasoningStep(uses=[1], claim=premises[1])], conclusion=premises[1], confidence=0.9)
    return inp, out
