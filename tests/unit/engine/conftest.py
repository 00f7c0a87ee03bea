"""Engine fixtures: one tiny Mistral base and three random adapters per session, a fresh engine per test.

The base is built once (seconds) and reloaded per test (milliseconds) so each test loads and unloads
adapters without seeing another test's state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.engine.helpers import ADAPTER_NAMES, make_adapter


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    from modelstore.tiny import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def adapter_dirs(tiny_base_dir, tmp_path_factory) -> dict[str, Path]:
    """Three adapters with distinct random weights, by name (names with '/', '@' and '.' as Serve sends)."""
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_base_dir, root / f"a{i}", seed=100 + i) for i, name in enumerate(ADAPTER_NAMES)}


@pytest.fixture(scope="session")
def tokenizer(tiny_base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base_dir)


@pytest.fixture
def base_model(tiny_base_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)


@pytest.fixture
def engine(base_model, tokenizer):
    from engine import InferenceEngine

    return InferenceEngine(base_model, tokenizer)


@pytest.fixture
def loaded_engine(engine, adapter_dirs):
    for name, path in adapter_dirs.items():
        engine.load_adapter(name, path)
    return engine
