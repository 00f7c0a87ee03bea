"""The embeddings Serve deployment: :class:`~deployments.embeddings.server.EmbeddingServer` as it is, with
Serve's options applied here, late (the class itself has no Serve imports)."""

from __future__ import annotations

from deployments.embeddings.server import EmbeddingServer, EmbeddingSettings

__all__ = ["build_embeddings"]


def build_embeddings(settings: EmbeddingSettings | dict | None = None, name: str = "Embeddings"):
    """Bind the embeddings deployment (Serve options come from ``settings``)."""
    from ray import serve

    settings = EmbeddingSettings.model_validate(settings or {})
    deployment = serve.deployment(EmbeddingServer, name=name, num_replicas=settings.num_replicas,
                                  ray_actor_options=settings.ray_actor_options)
    return deployment.bind(settings.model_dump())
