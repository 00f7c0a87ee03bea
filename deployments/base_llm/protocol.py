"""The BaseLLM request and response bodies, shared by the handle and HTTP paths.

The adapter is not part of the body: it travels as the Serve multiplexed model id
(``handle.options(multiplexed_model_id=...)`` or the ``serve_multiplexed_model_id`` HTTP header) so
Serve can route the request to a replica that already holds it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.limits import LIMITS, MaxNewTokens, Seed, TopK, check_stops

__all__ = ["ChatMessage", "GenerateRequest", "GenerateResponse", "BASE_MODEL_IDS"]

# Model ids that mean "no adapter": the bare base.
BASE_MODEL_IDS = frozenset({"", "base"})


class ChatMessage(BaseModel):
    """One chat turn; the base's chat template turns a list of them into the prompt."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"] = Field(description="Who speaks.")
    content: str = Field(description="What they say.")


class GenerateRequest(BaseModel):
    """A generation request: exactly one of ``prompt`` (already templated) or ``messages``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1, description="Prompt text with the chat template already applied.")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, max_length=LIMITS.max_messages,
        description="Chat turns; the replica applies the base's chat template."
    )
    max_new_tokens: MaxNewTokens = Field(64, description="Most tokens to generate (capped by the engine's limit).")
    temperature: float = Field(0.0, ge=0.0, le=100.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: TopK = Field(0, description="Sample among the k most likely tokens only; 0 turns it off.")
    stop: list[str] = Field(default_factory=list, description="Strings that end generation (trimmed from the text).")
    seed: Seed | None = Field(None, description="Per-request random seed, for reproducible sampling.")
    ignore_eos: bool = Field(False, description="Generate exactly max_new_tokens, past EOS (benchmarks).")
    json_schema: dict[str, Any] | None = Field(
        None, description="JSON schema the completion must satisfy (size, depth, properties and enums bounded by "
        "deployments.limits, checked by the replica before anything else)."
    )
    request_id: str | None = Field(None, max_length=128, description="Caller's id, echoed back.")
    images: list[str] = Field(
        default_factory=list,
        description="Images as base64 or 'data:' URLs (PNG, JPEG, WebP), one per image token of the prompt in order "
        "(with 'messages', they go into the first user turn); admitted in the replica under deployments.limits "
        "(bytes, pixels, count), and only a vision-language base takes them.",
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str]) -> list[str]:
        return check_stops(value)

    @model_validator(mode="after")
    def _one_prompt(self) -> "GenerateRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class GenerateResponse(BaseModel):
    """What a generation returns."""

    text: str = Field(description="The completion.")
    finish_reason: Literal["stop", "length"] = Field(description="'stop' (EOS, stop string, schema done) or 'length'.")
    prompt_tokens: int = Field(description="Tokens in the prompt.")
    completion_tokens: int = Field(description="Tokens generated.")
    model_id: str = Field(description="The multiplexed model id as requested ('' for the bare base).")
    adapter: str | None = Field(description="Pinned adapter ref that served it; None for the bare base.")
    base: str = Field(description="Pinned base ref of the replica.")
    replica_id: str = Field(description="Serve replica that served it.")
    request_id: str | None = Field(None, description="Echo of the request's id.")
