"""Journalist: an article draft built only from the given facts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..contracts import AgentSpec, Contract, IndexList, Text, numbered, register

__all__ = ["MAX_FACTS", "JournalistInput", "JournalistOutput", "SPEC"]

MAX_FACTS = 12


# Positions into JournalistInput.facts.
FactRefs = IndexList("facts", MAX_FACTS)


class JournalistInput(Contract):
    """A topic and the facts a draft may use."""

    topic: Text(200) = Field(description="What the article is about.")
    facts: list[Text(300)] = Field(min_length=1, max_length=MAX_FACTS, description="Facts the draft may state.")
    style: Literal["news", "brief", "feature"] = Field("news", description="House style of the draft.")
    max_words: int = Field(150, ge=30, le=400, description="Length target of the body, in words.")


class JournalistOutput(Contract):
    """A draft: headline, lede, body, and which facts it used."""

    headline: Text(120) = Field(description="Headline.")
    lede: Text(300) = Field(description="Opening sentence.")
    body: Text(1500) = Field(description="Body paragraphs.")
    facts_used: FactRefs = Field(description="Positions of the facts the draft states.")


def render(inp: JournalistInput) -> str:
    """Topic, style and length target, then the numbered facts."""
    return f"Topic: {inp.topic}\nStyle: {inp.style}, at most {inp.max_words} words\nFacts:\n{numbered(inp.facts)}"


SPEC = register(AgentSpec(
    name="journalist",
    input_model=JournalistInput,
    output_model=JournalistOutput,
    example=JournalistInput(topic="New river bridge", facts=[
        "The city council approved a new river bridge on Monday.",
        "Construction starts in May.",
        "The budget is 40 million euros.",
    ], style="brief", max_words=80),
    instructions=("You are a newsroom journalist. Write a draft that states only the numbered facts, "
                  "in the requested style and length; list the positions of the facts you used."),
    render=render,
))
