"""Fixtures of the review-queue tests: a real SQLite file per test, migrated by the real Alembic env."""

from __future__ import annotations

import pytest

from agent_graph import get_spec


@pytest.fixture
def hitl_store(tmp_path, monkeypatch):
    from hitl import ReviewStore

    monkeypatch.delenv("JUSTNEWS_HITL_DB", raising=False)
    store = ReviewStore(store_root=str(tmp_path / "store"))
    yield store
    store.close()


def example_item(agent: str = "critic", reasons=("blocking_verdict",), **kw):
    """A NewItem of ``agent`` with its contract's example input and a valid answer."""
    from hitl import NewItem

    spec = get_spec(agent)
    answers = {
        "critic": {"verdict": "reject", "issues": [{"kind": "accuracy", "severity": "high", "note": "wrong cost"}]},
        "fact_checker": {"verdicts": [{"verdict": "supported", "evidence": [0], "confidence": 0.9},
                                      {"verdict": "unverified", "evidence": [], "confidence": 0.3}]},
        "chief_editor": {"decision": "revise", "priority": "normal", "notes": ["attribute 'wasteful'"]},
    }
    return NewItem(agent=agent, input=spec.example.model_dump(mode="json"), output=answers[agent],
                   reasons=tuple(reasons), answered_by=f"{agent}/mistral_{agent}_v1@trained-1", step="adapter", **kw)


def train_argv(agent: str, data, store_root, output_dir, *, steps: int, version: str = "hitl-1",
               promote: bool = True) -> list[str]:
    """``justnews train`` arguments for the next adapter version from exported review decisions: the embedded
    default's CPU settings (``training.defaults``: LoRA r16 on every projection and lm_head, LoRA+, lr 1e-3)."""
    return ["train", "--agent", agent, "--train-files", str(data), "--eval-fraction", "0",
            "--adapter-name", f"mistral_{agent}_v1", "--adapter-version", version, "--store-root", str(store_root),
            "--output-dir", str(output_dir), "--device", "cpu", "--quantization", "none", "--precision", "fp32",
            "--threads", "1", "--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0", "--target-modules",
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head",
            "--max-steps", str(steps), "--batch-size", "16", "--grad-accum", "1", "--learning-rate", "1e-3",
            "--lora-plus-ratio", "8", "--adam-beta2", "0.99", "--warmup-steps", "10", "--no-progress", "--publish",
            *([] if promote else ["--no-promote"])]
