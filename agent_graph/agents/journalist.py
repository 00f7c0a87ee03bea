"""Journalist: an article draft built only from the given facts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..contracts import AgentSpec, Contract, IndexList, Text, numbered, register

__all__ = ["MAX_FACTS", "HEADLINE_CHARS", "LEDE_CHARS", "BODY_CHARS", "MAX_WORDS", "JournalistInput", "JournalistOutput", "SPEC"]

MAX_FACTS = 12
# Lengths sized so the longest draft fits the engine's default max_new_tokens_limit (512 tokens, see
# agent_graph.budget): a 1,500-character body with a 300-character lede needed about 900. The word target
# follows the body (about six characters a word).
HEADLINE_CHARS, LEDE_CHARS, BODY_CHARS = 120, 240, 600
MAX_WORDS = 100


# Positions into JournalistInput.facts.
FactRefs = IndexList("facts", MAX_FACTS)


class JournalistInput(Contract):
    """A topic and the facts a draft may use."""

    topic: Text(200) = Field(description="What the article is about.")
    facts: list[Text(300)] = Field(min_length=1, max_length=MAX_FACTS, description="Facts the draft may state.")
    style: Literal["news", "brief", "feature"] = Field("news", description="House style of the draft.")
    max_words: int = Field(80, ge=30, le=MAX_WORDS, description=f"Length target of the body, in words (at most {MAX_WORDS}: the body holds {BODY_CHARS} characters).")


class JournalistOutput(Contract):
    """A draft: headline, lede, body, and which facts it used."""

    headline: Text(HEADLINE_CHARS) = Field(description="Headline.")
    lede: Text(LEDE_CHARS) = Field(description="Opening sentence.")
    body: Text(BODY_CHARS) = Field(description="Body paragraphs.")
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
