"""TrainConfig: JSON round trip, refusals that name the value, and the resume fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from training.config import TrainConfig

BASE = dict(agent="critic", train_files=[Path("a.jsonl")], output_dir=Path("out"))


def test_round_trips_through_json():
    cfg = TrainConfig(**BASE, lora_r=16, max_steps=5)
    assert TrainConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_defaults_are_the_seed_plan_ones():
    cfg = TrainConfig(**BASE)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.quantization, cfg.gradient_checkpointing) == (64, 16.0, "auto", False)
    assert cfg.name == "mistral_critic_v1"


@pytest.mark.parametrize("overrides, needle", [
    ({"lora_r": 0}, "lora_r"),
    ({"eval_fraction": 1.0}, "eval_fraction"),
    ({"quantization": "int3"}, "quantization"),
    ({"train_files": []}, "train_files"),
    ({"dry_run": True, "publish": True}, "dry_run and publish are exclusive"),
    ({"quantization": "nf4", "device": "cpu", "gradient_checkpointing": True}, "needs a CUDA device"),
    ({"unknown": 1}, "unknown"),
    ({"lora_plus_ratio": 0.5}, "lora_plus_ratio"),
    ({"adam_beta2": 1.0}, "adam_beta2"),
])
def test_refuses_bad_values(overrides, needle):
    with pytest.raises(ValidationError, match=needle):
        TrainConfig(**{**BASE, **overrides})


def test_fingerprint_tracks_hyperparameters_only():
    a = TrainConfig(**BASE)
    assert a.fingerprint() == TrainConfig(**BASE, progress=False, publish=True).fingerprint()
    assert a.fingerprint() != TrainConfig(**BASE, learning_rate=1e-3).fingerprint()


@pytest.mark.parametrize("device, quant, cuda, expected", [
    ("auto", "auto", False, ("cpu", "fp32", False)),
    ("auto", "auto", True, ("cuda", "bnb-4bit", True)),
    ("cuda", "none", True, ("cuda", "bf16", False)),
    ("cpu", "nf4", False, ("cpu", "bnb-4bit", True)),
])
def test_plan_resolves_auto(device, quant, cuda, expected):
    from training.model import resolve_plan

    plan = resolve_plan(TrainConfig(**BASE, device=device, quantization=quant), cuda_available=cuda)
    assert (plan.device, plan.variant, plan.qlora) == expected


def test_the_cli_passes_a_regex_target_as_one_regex():
    from training.cli import build_parser, target_modules
    from training.config import VISION_LORA_TARGETS
    from training.errors import DataError

    regex = VISION_LORA_TARGETS + "|lm_head"
    args = build_parser().parse_args(["train", "--agent", "newsreader", "--target-modules", regex])
    assert target_modules(args.target_modules) == regex  # a str: PEFT matches it against the full module path
    config = TrainConfig(**{**BASE, "agent": "newsreader"}, target_modules=target_modules([regex]))
    assert config.target_modules == regex
    assert target_modules(["q_proj", "v_proj"]) == ["q_proj", "v_proj"]  # names stay a list, matched as suffixes
    with pytest.raises(DataError, match="must be the only value"):
        target_modules(["q_proj", ".*lm_head"])
