"""Training fixtures: synthetic datasets and a fast training config on the session's seeded store."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def critic_data(tmp_path_factory) -> tuple[Path, Path]:
    """A small synthetic critic dataset: (train, held-out) JSONL files."""
    from training.synthetic import write_dataset

    return write_dataset("critic", tmp_path_factory.mktemp("critic-data"), 64, 16)


@pytest.fixture
def fast_config(critic_data, tmp_path):
    """A factory of tiny-run configs (a few steps of plain LoRA on the CPU), overridable per test."""
    from training.config import LORA_TARGETS, TrainConfig

    def make(**overrides) -> TrainConfig:
        fields = dict(agent="critic", train_files=[critic_data[0]], eval_files=[critic_data[1]],
                      output_dir=tmp_path / "run", device="cpu", quantization="none", precision="fp32",
                      lora_r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[*LORA_TARGETS, "lm_head"],
                      max_steps=6, batch_size=8, grad_accum=1, learning_rate=5e-3, seed=7, progress=False,
                      adapter_version="test-1")
        fields.update(overrides)
        return TrainConfig(**fields)

    return make
