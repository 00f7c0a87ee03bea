"""Fact checker: one verdict per claim, with the evidence passages it rests on."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..contracts import AgentSpec, Contract, IndexList, Score, Text, numbered, one_per, register

__all__ = ["MAX_CLAIMS", "MAX_EVIDENCE", "ClaimVerdictLabel", "FactCheckerInput", "ClaimVerdict",
           "FactCheckerOutput", "SPEC"]

# 7, not 8: eight verdicts may take 543 tokens (agent_graph.budget), more than the engine's default
# max_new_tokens_limit (512); seven take 476.
MAX_CLAIMS = 7
MAX_EVIDENCE = 8
ClaimVerdictLabel = Literal["supported", "refuted", "unverified"]


# Positions into FactCheckerInput.evidence, at most three per verdict.
EvidenceRefs = IndexList("evidence", MAX_EVIDENCE, max_items=3)


class FactCheckerInput(Contract):
    """Claims to check against evidence passages."""

    claims: list[Text(300)] = Field(min_length=1, max_length=MAX_CLAIMS, description="Claims, in order.")
    evidence: list[Text(1000)] = Field(default_factory=list, max_length=MAX_EVIDENCE,
                                       description="Evidence passages, most relevant first.")


class ClaimVerdict(Contract):
    """The verdict on one claim (the claim at the same position in the input)."""

    verdict: ClaimVerdictLabel = Field(description="Whether the evidence supports the claim.")
    evidence: EvidenceRefs = Field(
        description="Positions of the passages the verdict rests on.")
    confidence: Score = Field(description="Confidence in the verdict, 0 to 1.")


class FactCheckerOutput(Contract):
    """One verdict per input claim, in the same order."""

    verdicts: list[ClaimVerdict] = Field(max_length=MAX_CLAIMS, json_schema_extra=one_per("claims"),
                                         description="Verdicts, one per claim, in claim order.")


def render(inp: FactCheckerInput) -> str:
    """Numbered claims, then numbered evidence."""
    evidence = numbered(inp.evidence) if inp.evidence else "none"
    return f"Claims:\n{numbered(inp.claims)}\nEvidence:\n{evidence}"


SPEC = register(AgentSpec(
    name="fact_checker",
    input_model=FactCheckerInput,
    output_model=FactCheckerOutput,
    example=FactCheckerInput(
        claims=["The council approved the bridge on Monday.", "The bridge costs 90 million euros."],
        evidence=["Minutes: the council approved the bridge on Monday by 12 votes to 3.",
                  "The approved budget is 40 million euros."]),
    instructions=("You are the fact checker. For each numbered claim, in order, say whether the evidence "
                  "supports or refutes it, or leaves it unverified; cite the positions of the passages used."),
    render=render,
))
