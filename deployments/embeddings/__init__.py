"""Embeddings for scout and memory: EmbeddingServer (plain) and its Serve deployment."""
