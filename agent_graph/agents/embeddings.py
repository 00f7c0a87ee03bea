"""Embedding agents (scout, memory): texts in, vectors out, on their own sentence-transformers weights.

They are not prompted, but share the typed contract so the HTTP boundary and the pipeline validate
their requests like any other agent's. Field names match the embeddings deployment's request body.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ..contracts import AgentSpec, Contract, Text, register

__all__ = ["MAX_TEXTS", "EmbedInput", "EmbedOutput", "SCOUT", "MEMORY"]

MAX_TEXTS = 64


class EmbedInput(Contract):
    """Texts to embed."""

    texts: list[Text(8192)] = Field(min_length=1, max_length=MAX_TEXTS, description="Texts to embed, in order.")
    normalize: bool = Field(True, description="L2-normalise vectors so a dot product is the cosine similarity.")


class EmbedOutput(Contract):
    """One vector per text."""

    model: Text(200) = Field(description="Model that produced the vectors.")
    dimensions: int = Field(ge=1, le=8192, description="Length of each vector.")
    vectors: list[list[float]] = Field(min_length=1, max_length=MAX_TEXTS, description="One vector per input text.")

    @model_validator(mode="after")
    def _same_length(self) -> "EmbedOutput":
        for i, vector in enumerate(self.vectors):
            if len(vector) != self.dimensions:
                raise ValueError(f"vectors[{i}] has {len(vector)} values, expected dimensions ({self.dimensions})")
        return self


_EXAMPLE = EmbedInput(texts=["The council approved a new bridge.", "Bridge budget criticised."])

SCOUT = register(AgentSpec(name="scout", kind="embedding", input_model=EmbedInput, output_model=EmbedOutput,
                           example=_EXAMPLE))
MEMORY = register(AgentSpec(name="memory", kind="embedding", input_model=EmbedInput, output_model=EmbedOutput,
                            example=_EXAMPLE))
