"""OpenAI-compatible request and response bodies for ``/v1/chat/completions``, ``/v1/embeddings`` and ``/v1/models``.

Only what the newsroom's clients use is modelled, but what is modelled follows the OpenAI schema so the
official ``openai`` client parses it: ``response_format`` with ``json_schema`` (constrained decoding),
``stream`` (server-sent events of ``chat.completion.chunk``), ``stop``, ``seed``, ``usage``, and content parts
(``text``, and ``image_url`` with a ``data:`` URL for the models that read images).
Unknown request fields are ignored, as OpenAI-compatible servers commonly do, except ``n`` > 1 and
tools, which are refused rather than silently dropped. Every bound on a caller's value comes from
``deployments/limits.py``.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.limits import LIMITS, ChoiceCount, MaxNewTokens, Seed, TopK, check_stops

__all__ = ["TextPart", "ImageURL", "ImagePart", "ContentPart", "ChatMessageIn", "JsonSchemaFormat", "ResponseFormat",
           "StreamOptions", "ChatCompletionRequest", "ChatCompletionResponse", "ChatCompletionChunk", "Usage", "ModelCard", "ModelList", "completion_id",
           "CHAT_ENDPOINT", "EMBEDDINGS_ENDPOINT", "EmbeddingRequest", "EmbeddingData", "EmbeddingUsage",
           "EmbeddingResponse"]

CHAT_ENDPOINT = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"


def completion_id() -> str:
    """A fresh OpenAI-style completion id."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


class TextPart(BaseModel):
    """A text content part."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = Field(description="'text'.")
    text: str = Field(description="The text.")


class ImageURL(BaseModel):
    """Where an image part's image is: only ``data:image/...;base64,`` URLs (remote URLs are not fetched: 400)."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=1, description="A data:image/png|jpeg|webp;base64, URL (or bare base64). Size, "
                     "pixel and format limits are the admission limits (413/415/400).")
    detail: Literal["auto", "low", "high"] | None = Field(None, description="Accepted for compatibility; ignored.")


class ImagePart(BaseModel):
    """An image content part (only for models that read images: ``modalities`` in /v1/models)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["image_url"] = Field(description="'image_url'.")
    image_url: ImageURL = Field(description="The image.")


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessageIn(BaseModel):
    """One chat turn: its text, or OpenAI content parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"] = Field(description="Speaker.")
    content: str | list[ContentPart] = Field(
        description="Text of the turn (at most max_prompt_chars, 413 beyond), or content parts: text parts (joined "
        "by newlines) and, for a model that reads images, image_url parts in the first user turn (at most "
        "max_images_per_request images, 413 beyond).")

    @field_validator("content")
    @classmethod
    def _some_parts(cls, v: str | list[Any]) -> str | list[Any]:
        if isinstance(v, list) and not 1 <= len(v) <= LIMITS.max_messages:
            raise ValueError(f"content must hold 1 to {LIMITS.max_messages} parts, got {len(v)}")
        return v

    def text(self) -> str:
        """The turn's text: the content, or its text parts joined by newlines."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))

    def image_urls(self) -> list[tuple[int, str]]:
        """``(part index, url)`` of every image part, in order."""
        if isinstance(self.content, str):
            return []
        return [(j, p.image_url.url) for j, p in enumerate(self.content) if isinstance(p, ImagePart)]


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema`` as OpenAI defines it."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field("response", max_length=64, description="Schema name (informational).")
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON schema the reply must satisfy.")
    strict: bool | None = Field(None, description="Accepted for compatibility; decoding is always constrained.")


class ResponseFormat(BaseModel):
    """``text`` (free), ``json_object`` (any JSON object) or ``json_schema`` (this schema)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"] = Field(description="Kind of output constraint.")
    json_schema: JsonSchemaFormat | None = Field(None, description="Required when type is json_schema.")

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.type 'json_schema' needs a response_format.json_schema object")
        return self

    def schema_dict(self) -> dict[str, Any] | None:
        if self.type == "json_schema":
            return self.json_schema.schema_
        if self.type == "json_object":
            return {"type": "object"}
        return None


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send a final chunk with usage and no choices.")


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``; ``model`` is an agent name, ``base`` or ``base:<adapter ref>``."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"model": "critic", "messages": [{"role": "user", "content": "Is this headline fair: 'Bridge costs soar'?"}],
         "max_tokens": 32},
        {"model": "base", "messages": [{"role": "user", "content": "Rate the tone."}], "max_tokens": 24,
         "response_format": {"type": "json_schema", "json_schema": {"name": "tone", "schema": {
             "type": "object", "properties": {"negative": {"type": "boolean"}}, "required": ["negative"]}}}},
        {"model": "base:analyst/mistral_analyst_v1@current", "messages": [{"role": "user", "content": "Hello"}],
         "max_tokens": 8, "stream": True, "stream_options": {"include_usage": True}}]})

    model: str = Field(min_length=1, max_length=200, description="Agent name, 'base', or 'base:<agent>/<adapter>@<version>'.")
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=LIMITS.max_messages, description="The conversation.")
    max_tokens: MaxNewTokens | None = Field(None, description="Most tokens to generate (alias max_completion_tokens).")
    max_completion_tokens: MaxNewTokens | None = Field(None, description="Newer name of max_tokens.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: TopK = Field(0, description="Extension (as vLLM): sample among the k most likely tokens; 0 turns it off.")
    stop: str | list[str] | None = Field(None, description="Stop string(s).")
    seed: Seed | None = Field(None, description="Random seed for reproducible sampling (int64 min .. uint64 max).")
    stream: bool = Field(False, description="Stream chat.completion.chunk events (server-sent events).")
    stream_options: StreamOptions | None = Field(None, description="Options of a streamed response.")
    response_format: ResponseFormat | None = Field(None, description="Output constraint.")
    n: ChoiceCount = Field(1, description="Only one choice per request is supported.")
    user: str | None = Field(None, max_length=256, description="Caller tag (logged only).")
    tools: list[Any] | None = Field(None, description="Not supported: refused when non-empty.")

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v: list[Any] | None) -> list[Any] | None:
        if v:
            raise ValueError(f"tools are not supported (got {len(v)})")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        return check_stops([v] if isinstance(v, str) else v)

    def new_tokens(self, default: int) -> int:
        """The requested completion budget, or ``default``."""
        return self.max_completion_tokens or self.max_tokens or default


class _Message(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class _Choice(BaseModel):
    index: int = 0
    message: _Message
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    """Token counts, OpenAI style."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    """A whole completion."""

    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[_Choice]
    usage: Usage
    system_fingerprint: str | None = Field(None, description="The adapter ref (or base ref) that answered.")


class _Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class _ChunkChoice(BaseModel):
    index: int = 0
    delta: _Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[_ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    """One entry of ``/v1/models``: an id that ``endpoint`` accepts as its ``model``."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "justnews"
    kind: Literal["base", "agent", "adapter", "embedding"] = Field(description="What the id names.")
    modalities: list[Literal["text", "image"]] = Field(default_factory=lambda: ["text"], description="What the model "
                                                       "reads: image_url content parts only where 'image' is listed.")
    ref: str | None = Field(None, description="Pinned ModelStore ref (or embeddings model) behind the id.")
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings"] = Field(
        description="The one endpoint that takes this id as its model.")


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``; ``model`` is an embedding agent (scout, memory) or the embeddings model.

    Token arrays as ``input`` are not supported (strings only). Limits on the count and length of the inputs
    are the embeddings deployment's ``max_texts`` and ``max_chars`` (413 beyond).
    """

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"model": "scout", "input": ["The council approved a bridge.", "The club won on Sunday."]},
        {"model": "memory", "input": "Bridge budget criticised.", "encoding_format": "base64"}]})

    model: str = Field(min_length=1, max_length=200, description="'scout', 'memory' or the embeddings model name.")
    input: str | list[str] = Field(description="A text, or a list of texts, to embed (strings only).")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="'float': lists of numbers; 'base64': little-endian float32 bytes, base64-encoded.")
    dimensions: int | None = Field(None, ge=1, description="Only the model's own vector length is served "
                                   "(400 for any other).")
    user: str | None = Field(None, max_length=256, description="Caller tag (logged only).")

    @field_validator("input")
    @classmethod
    def _some_input(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("input must hold at least one text")
        return v

    def texts(self) -> list[str]:
        """The inputs as a list, in order."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    """One vector."""

    object: Literal["embedding"] = "embedding"
    index: int = Field(description="Position of the input it embeds.")
    embedding: list[float] | str = Field(description="The vector (floats, or base64 of float32 bytes).")


class EmbeddingUsage(BaseModel):
    """Tokens the embeddings model read."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """``POST /v1/embeddings``'s answer."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str = Field(description="The model as requested.")
    usage: EmbeddingUsage
