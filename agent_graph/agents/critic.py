"""Critic: the editorial gate, a verdict plus the issues behind it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..contracts import AgentSpec, Contract, Score, Text, register
from .analyst import Sentiment
from .fact_checker import ClaimVerdictLabel

__all__ = ["CriticVerdict", "IssueKind", "ClaimCheck", "CriticInput", "CriticIssue", "CriticOutput", "SPEC"]

CriticVerdict = Literal["pass", "revise", "reject"]
IssueKind = Literal["accuracy", "sourcing", "bias", "tone", "clarity", "length"]


class ClaimCheck(Contract):
    """A claim and the fact checker's verdict on it."""

    claim: Text(300) = Field(description="The claim.")
    verdict: ClaimVerdictLabel = Field(description="The fact checker's verdict.")


class CriticInput(Contract):
    """A story, with the fact check and the analysis when they exist."""

    headline: Text(200) = Field(description="Headline.")
    text: Text(8000) = Field(description="Story text.")
    claim_checks: list[ClaimCheck] = Field(default_factory=list, max_length=8, description="Fact-check results.")
    sentiment: Sentiment | None = Field(None, description="The analyst's sentiment, if analysed.")
    bias: Score | None = Field(None, description="The analyst's bias score, if analysed.")
    persuasion: Score | None = Field(None, description="The analyst's persuasion score, if analysed.")


class CriticIssue(Contract):
    """One problem with the story."""

    kind: IssueKind = Field(description="What sort of problem.")
    severity: Literal["low", "medium", "high"] = Field(description="How much it matters.")
    note: Text(120) = Field(description="The problem, in a few words.")


class CriticOutput(Contract):
    """Verdict and issues."""

    verdict: CriticVerdict = Field(description="Pass as is, revise, or reject.")
    issues: list[CriticIssue] = Field(max_length=4, description="Issues, most severe first.")


def render(inp: CriticInput) -> str:
    """Headline, fact check, analysis, then the text."""
    checks = "\n".join(f"- {c.verdict}: {c.claim}" for c in inp.claim_checks) or "none"
    analysis = "none"
    if inp.bias is not None or inp.persuasion is not None or inp.sentiment is not None:
        analysis = f"sentiment {inp.sentiment or '?'}, bias {inp.bias}, persuasion {inp.persuasion}"
    return f"Headline: {inp.headline}\nFact check:\n{checks}\nAnalysis: {analysis}\nText:\n{inp.text}"


SPEC = register(AgentSpec(
    name="critic",
    input_model=CriticInput,
    output_model=CriticOutput,
    example=CriticInput(
        headline="Bridge costs 90 million",
        text="The bridge will cost 90 million euros, a scandalous waste.",
        claim_checks=[ClaimCheck(claim="The bridge will cost 90 million euros.", verdict="refuted")],
        sentiment="negative", bias=0.7, persuasion=0.6),
    instructions=("You are the editorial critic. Gate the story: pass, revise or reject it, and list its issues "
                  "(accuracy, sourcing, bias, tone, clarity, length) with their severity. Refuted claims are "
                  "accuracy issues."),
    render=render,
))
