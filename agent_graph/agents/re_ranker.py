"""Re-ranker: a relevance score for each candidate passage."""

from __future__ import annotations

from pydantic import Field

from ..contracts import AgentSpec, Contract, Score, Text, numbered, one_per, register

__all__ = ["MAX_PASSAGES", "ReRankerInput", "ReRankerOutput", "SPEC"]

MAX_PASSAGES = 16


class ReRankerInput(Contract):
    """A query and candidate passages."""

    query: Text(500) = Field(description="What the caller is looking for.")
    passages: list[Text(1000)] = Field(min_length=1, max_length=MAX_PASSAGES, description="Candidates, in order.")


class ReRankerOutput(Contract):
    """One score per passage, in passage order."""

    scores: list[Score] = Field(max_length=MAX_PASSAGES, json_schema_extra=one_per("passages"),
                                description="Relevance of each passage to the query, 0 to 1, in passage order.")

    def ranking(self) -> list[int]:
        """Passage positions, most relevant first (ties keep input order)."""
        return sorted(range(len(self.scores)), key=lambda i: -self.scores[i])


def render(inp: ReRankerInput) -> str:
    """The query, then the numbered passages."""
    return f"Query: {inp.query}\nPassages:\n{numbered(inp.passages)}"


SPEC = register(AgentSpec(
    name="re_ranker",
    input_model=ReRankerInput,
    output_model=ReRankerOutput,
    example=ReRankerInput(query="bridge budget", passages=[
        "The approved budget of the bridge is 40 million euros.",
        "The football club won on Sunday.",
        "Residents criticised the bridge cost."]),
    instructions="You are the re-ranker. Score how relevant each numbered passage is to the query, from 0 to 1.",
    render=render,
))
