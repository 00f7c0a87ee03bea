"""Reasoning: short structured steps from premises to a conclusion."""

from __future__ import annotations

from pydantic import Field

from ..contracts import AgentSpec, Contract, IndexList, Score, Text, numbered, register

__all__ = ["MAX_PREMISES", "MAX_STEPS", "CLAIM_CHARS", "CONCLUSION_CHARS", "ReasoningInput", "ReasoningStep", "ReasoningOutput", "SPEC"]

MAX_PREMISES = 10
# Output lengths sized so the longest reply fits the engine's default max_new_tokens_limit (512 tokens,
# see agent_graph.budget): five 160-character steps and a 240-character conclusion needed 632.
MAX_STEPS, CLAIM_CHARS, CONCLUSION_CHARS = 4, 140, 200


# Positions into ReasoningInput.premises, at most three per step.
PremiseRefs = IndexList("premises", MAX_PREMISES, max_items=3)


class ReasoningInput(Contract):
    """A question and the premises to reason from."""

    question: Text(500) = Field(description="The question to answer.")
    premises: list[Text(300)] = Field(default_factory=list, max_length=MAX_PREMISES,
                                      description="Statements taken as true.")


class ReasoningStep(Contract):
    """One inference and the premises it rests on."""

    uses: PremiseRefs = Field(description="Positions of the premises used.")
    claim: Text(CLAIM_CHARS) = Field(description="What this step concludes.")


class ReasoningOutput(Contract):
    """Steps, the conclusion, and how sure it is."""

    steps: list[ReasoningStep] = Field(min_length=1, max_length=MAX_STEPS, description="Reasoning steps, in order.")
    conclusion: Text(CONCLUSION_CHARS) = Field(description="The answer to the question.")
    confidence: Score = Field(description="Confidence in the conclusion, 0 to 1.")


def render(inp: ReasoningInput) -> str:
    """The question, then the numbered premises."""
    premises = numbered(inp.premises) if inp.premises else "none"
    return f"Question: {inp.question}\nPremises:\n{premises}"


SPEC = register(AgentSpec(
    name="reasoning",
    input_model=ReasoningInput,
    output_model=ReasoningOutput,
    example=ReasoningInput(question="Will the bridge open this year?", premises=[
        "Construction starts in May.", "Building the bridge takes 18 months."]),
    instructions=("You are the reasoning agent. Answer the question in at most four short steps; each step "
                  "names the positions of the premises it uses. State a conclusion and a confidence from 0 to 1."),
    render=render,
))
