"""Request and result types of the engine: what a caller sends per row and what it gets back."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.limits import LIMITS, Seed, TopK, check_stops

__all__ = ["SamplingParams", "GenerationRequest", "GenerationResult", "FinishReason"]

FinishReason = Literal["stop", "length"]

MAX_STOP_STRINGS = LIMITS.max_stop_strings


class SamplingParams(BaseModel):
    """How one row picks its next token and when it stops."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.0, ge=0.0, le=100.0, description="Softmax temperature; 0 means greedy (argmax).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling: keep the smallest set of tokens with this mass.")
    top_k: TopK = Field(0, description="Keep only the k most likely tokens before top_p; 0 keeps all.")
    max_new_tokens: int = Field(64, ge=1, description="Most tokens to generate; the engine caps it at max_new_tokens_limit.")
    stop: list[str] = Field(
        default_factory=list,
        description="Strings that end generation; the first match and everything after it is trimmed.",
    )
    seed: Seed | None = Field(
        None, description="Seeds this row's own random generator (int64 min .. uint64 max); None draws a fresh seed."
    )
    ignore_eos: bool = Field(
        False, description="Keep generating past EOS until max_new_tokens (fixed output lengths for benchmarks)."
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str]) -> list[str]:
        # An empty stop string would match at position 0 and end every row before its first token.
        return check_stops(value)


class GenerationRequest(BaseModel):
    """One row of a batch: an already chat-templated prompt, the adapter to use and how to sample."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., description="Prompt text, chat template already applied (it carries its own BOS).")
    adapter: str | None = Field(None, description="Name of a loaded adapter; None runs the bare base.")
    params: SamplingParams = Field(default_factory=SamplingParams, description="Sampling and stopping.")
    json_schema: dict[str, Any] | None = Field(
        None, description="JSON schema the completion must match (compact JSON); stop strings are ignored then."
    )
    request_id: str | None = Field(None, description="Caller's id, echoed in logs only.")
    images: list[Any] = Field(
        default_factory=list, repr=False,
        description="Decoded RGB images (PIL), one per image token in the prompt, in order; only a vision-language "
                    "base (an engine with a processor) takes them.",
    )
    grammar: Any = Field(
        None,
        exclude=True,
        repr=False,
        description=(
            "The compiled grammar of json_schema from InferenceEngine.precompile (an xgrammar CompiledGrammar); "
            "without it the engine compiles the schema inside generate(), delaying the whole batch."
        ),
    )


class GenerationResult(BaseModel):
    """What one row produced."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., description="Completion text, stop string (if any) trimmed, no special tokens.")
    prompt_tokens: int = Field(..., ge=0, description="Tokens in the prompt.")
    completion_tokens: int = Field(..., ge=0, description="Tokens generated, the EOS / grammar stop token included.")
    finish_reason: FinishReason = Field(..., description="'stop': EOS, stop string or grammar done; 'length': hit max_new_tokens.")
    adapter: str | None = Field(None, description="Adapter that produced it, None for the bare base.")
    request_id: str | None = Field(None, description="Echo of the request's id.")
