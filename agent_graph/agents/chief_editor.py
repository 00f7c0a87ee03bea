"""Chief editor: the editorial decision on a story and the notes for its rewrite."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..contracts import AgentSpec, Contract, Text, numbered, register

__all__ = ["Decision", "ChiefEditorInput", "ChiefEditorOutput", "SPEC"]

Decision = Literal["publish", "revise", "reject", "escalate"]


class ChiefEditorInput(Contract):
    """A story and what the desk found about it."""

    headline: Text(200) = Field(description="Headline of the story.")
    text: Text(8000) = Field(description="The story text (or its summary).")
    critic_verdict: Literal["pass", "revise", "reject"] | None = Field(None, description="The critic's verdict.")
    critic_issues: list[Text(160)] = Field(default_factory=list, max_length=8, description="The critic's issues.")
    claims_refuted: int = Field(0, ge=0, le=16, description="Claims the fact checker refuted.")
    claims_unverified: int = Field(0, ge=0, le=16, description="Claims the fact checker could not verify.")


class ChiefEditorOutput(Contract):
    """The decision, its priority, and rewrite notes."""

    decision: Decision = Field(description="What happens to the story.")
    priority: Literal["low", "normal", "high"] = Field(description="How urgent the decision is.")
    notes: list[Text(120)] = Field(max_length=4, description="Rewrite notes for the journalist, most important first.")


def render(inp: ChiefEditorInput) -> str:
    """Headline, desk findings, then the text."""
    issues = numbered(inp.critic_issues) if inp.critic_issues else "none"
    return (f"Headline: {inp.headline}\nCritic verdict: {inp.critic_verdict or 'none'}\nCritic issues:\n{issues}\n"
            f"Claims refuted: {inp.claims_refuted}, unverified: {inp.claims_unverified}\nText:\n{inp.text}")


SPEC = register(AgentSpec(
    name="chief_editor",
    input_model=ChiefEditorInput,
    output_model=ChiefEditorOutput,
    example=ChiefEditorInput(
        headline="Council approves new bridge",
        text="The city council approved a new river bridge on Monday. Critics call it wasteful.",
        critic_verdict="revise", critic_issues=["'wasteful' is unattributed"], claims_unverified=1),
    instructions=("You are the chief editor. Decide whether the story is published, revised, rejected or "
                  "escalated, weighing the critic's findings and the fact check; give short rewrite notes."),
    render=render,
))
