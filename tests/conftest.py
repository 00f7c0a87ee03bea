"""Shared fixtures: one seeded embedded-default store per test session, copied for tests that mutate it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in a test reaches the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def seeded_store_root(tmp_path_factory) -> Path:
    """A store with the tiny base and the seeded adapter of every text agent. Treat as read-only."""
    from modelstore import ModelStore
    from modelstore.seed import seed_default_store

    root = tmp_path_factory.mktemp("seeded-store")
    seed_default_store(ModelStore(root))
    return root


@pytest.fixture
def store(seeded_store_root, tmp_path):
    """A private, mutable copy of the seeded store."""
    from modelstore import ModelStore

    root = tmp_path / "store"
    shutil.copytree(seeded_store_root, root, symlinks=True)
    return ModelStore(root)
