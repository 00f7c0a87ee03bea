"""Synthetic extractive tasks: the answer copies short spans of the input.

Every copied slot draws from its own small vocabulary (titles, actors, actions, objects never share a word),
so which word goes where follows from the words present; a random-init base cannot learn positional copying
(e.g. "the second premise") in a training budget of seconds.
"""

from __future__ import annotations

import random

from agent_graph.agents.journalist import JournalistInput, JournalistOutput
from agent_graph.agents.reasoning import ReasoningInput, ReasoningOutput, ReasoningStep
from agent_graph.agents.synthesizer import SourceArticle, SynthesizerInput, SynthesizerOutput

from .classify import TOPICS

__all__ = ["synthesizer", "journalist", "reasoning"]

_ACTORS = ["council", "police", "court", "bank"]
_ACTIONS = ["approved", "rejected", "closed"]
_OBJECTS = ["plan", "deal", "road"]


def _phrase(rng: random.Random) -> str:
    return f"{rng.choice(_ACTORS)} {rng.choice(_ACTIONS)} {rng.choice(_OBJECTS)}"


def synthesizer(rng: random.Random) -> tuple[SynthesizerInput, SynthesizerOutput]:
    """Headline: the article's title (a topic); summary: its text (one short sentence)."""
    title, text = rng.choice(TOPICS), _phrase(rng)
    inp = SynthesizerInput(articles=[SourceArticle(title=title, text=text)])
    return inp, SynthesizerOutput(headline=title, summary=text, key_points=[], sources=[0])


def journalist(rng: random.Random) -> tuple[JournalistInput, JournalistOutput]:
    """Headline: the topic; lede and body: the one fact."""
    topic, fact = rng.choice(TOPICS), _phrase(rng)
    inp = JournalistInput(topic=topic, facts=[fact], style="brief", max_words=30)
    return inp, JournalistOutput(headline=topic, lede=fact, body=fact, facts_used=[0])


def reasoning(rng: random.Random) -> tuple[ReasoningInput, ReasoningOutput]:
    """One premise about the question's topic; the one step and the conclusion restate it."""
    topic, premise = rng.choice(TOPICS), _phrase(rng)
    inp = ReasoningInput(question=f"what about {topic}", premises=[premise])
    out = ReasoningOutput(steps=[ReasoningStep(uses=[0], claim=premise)], conclusion=premise, confidence=0.9)
    return inp, out
