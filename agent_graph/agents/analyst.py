"""Analyst: sentiment, bias and persuasion scores of a text."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..contracts import AgentSpec, Contract, Score, Text, register

__all__ = ["Sentiment", "Flag", "AnalystInput", "AnalystOutput", "SPEC"]

Sentiment = Literal["negative", "neutral", "positive"]
Flag = Literal["loaded_language", "one_sided", "emotional_appeal", "unsourced_claims"]


class AnalystInput(Contract):
    """A text to analyse."""

    title: Text(200, min_length=0) = Field("", description="Headline, if any.")
    text: Text(8000) = Field(description="The text.")


class AnalystOutput(Contract):
    """Scores in [0, 1] and the techniques spotted."""

    sentiment: Sentiment = Field(description="Overall tone.")
    bias: Score = Field(description="How one-sided the text is, 0 (balanced) to 1.")
    persuasion: Score = Field(description="How hard the text pushes a view, 0 (informs) to 1.")
    flags: list[Flag] = Field(max_length=4, description="Techniques found, each at most once.")


def render(inp: AnalystInput) -> str:
    """Title (when given), then the text."""
    return f"Title: {inp.title}\nText:\n{inp.text}" if inp.title else f"Text:\n{inp.text}"


SPEC = register(AgentSpec(
    name="analyst",
    input_model=AnalystInput,
    output_model=AnalystOutput,
    example=AnalystInput(title="Bridge plan draws criticism",
                         text="Residents said the outrageous bridge budget is a disaster. The council defended the cost."),
    instructions=("You are the news analyst. Rate the text's sentiment, its bias and its persuasion from 0 to 1, "
                  "and flag the persuasion techniques it uses."),
    render=render,
))
