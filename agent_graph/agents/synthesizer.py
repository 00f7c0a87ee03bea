"""Synthesizer: a summary of one article or a synthesis of several.

Two tasks share one contract; ``task`` is the router key, so an operator can give each its own adapter
through ``task_adapters`` in the agent map without touching this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..contracts import AgentSpec, Contract, IndexList, Text, register

__all__ = ["MAX_ARTICLES", "HEADLINE_CHARS", "SUMMARY_CHARS", "POINT_CHARS", "MAX_POINTS", "SourceArticle", "SynthesizerInput", "SynthesizerOutput", "SPEC"]

MAX_ARTICLES = 6
# Output lengths sized so the longest reply fits the engine's default max_new_tokens_limit (512 tokens,
# see agent_graph.budget): a 600-character summary needed 590.
HEADLINE_CHARS, SUMMARY_CHARS, POINT_CHARS, MAX_POINTS = 120, 400, 120, 4
# The whole prompt must fit the base's context; an article's lead carries the most, so longer texts are
# clipped to a share of this budget when rendered (the input bound stays generous for the HTTP caller).
_RENDER_BUDGET = 3000


# Positions into SynthesizerInput.articles.
ArticleRefs = IndexList("articles", MAX_ARTICLES)


class SourceArticle(Contract):
    """One article to summarise."""

    title: Text(200) = Field(description="Headline of the article.")
    text: Text(6000) = Field(description="Body text of the article.")


class SynthesizerInput(Contract):
    """Articles to condense."""

    task: Literal["summary", "synthesis"] = Field("summary", description="Summarise, or synthesise several articles.")
    articles: list[SourceArticle] = Field(min_length=1, max_length=MAX_ARTICLES, description="Articles, in order.")

    @model_validator(mode="after")
    def _enough_articles(self) -> "SynthesizerInput":
        if self.task == "synthesis" and len(self.articles) < 2:
            raise ValueError(f"task 'synthesis' needs at least 2 articles, got {len(self.articles)}")
        return self


class SynthesizerOutput(Contract):
    """A headline, a short summary, key points, and which articles were used."""

    headline: Text(HEADLINE_CHARS) = Field(description="Headline of the summary.")
    summary: Text(SUMMARY_CHARS) = Field(description="The summary, a few sentences.")
    key_points: list[Text(POINT_CHARS)] = Field(max_length=MAX_POINTS, description="Main points, most important first.")
    sources: ArticleRefs = Field(description="Positions of the articles drawn on.")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " ..."


def render(inp: SynthesizerInput) -> str:
    """Task line, then each article as ``[i] title`` and its (clipped) text."""
    share = max(400, _RENDER_BUDGET // len(inp.articles))
    parts = [f"Task: {inp.task}"]
    parts += [f"[{i}] {a.title}\n{_clip(a.text, share)}" for i, a in enumerate(inp.articles)]
    return "\n".join(parts)


SPEC = register(AgentSpec(
    name="synthesizer",
    input_model=SynthesizerInput,
    output_model=SynthesizerOutput,
    example=SynthesizerInput(task="synthesis", articles=[
        SourceArticle(title="Council approves new bridge",
                      text="The city council approved a new river bridge on Monday. Construction starts in May."),
        SourceArticle(title="Bridge plan draws criticism",
                      text="Residents said the bridge budget is too high. The council defended the cost."),
    ]),
    instructions=("You are the newsroom synthesizer. Summarise the numbered articles faithfully and neutrally; "
                  "use only facts they state; list the positions of the articles you used."),
    render=render,
    task=lambda inp: inp.task,
))
