"""The training summary: what a published adapter's manifest records about how it was made."""

from __future__ import annotations

import platform
from typing import Any

from .config import TrainConfig

__all__ = ["SUMMARY_FILE", "library_versions", "build_summary"]

SUMMARY_FILE = "training_summary.json"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the weights."""
    import peft
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__}
    try:
        import bitsandbytes

        out["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:  # optional on CPU-only installs
        pass
    return out


def build_summary(cfg: TrainConfig, plan: Any, *, base_ref: str, data_sha256: str, counts: dict[str, int],
                  steps: int, losses: list[float], eval_loss_before: float | None, eval_loss: float | None,
                  prefix_tokens: int, wall_time_s: float) -> dict[str, Any]:
    """A JSON-ready summary: data hash and counts, hyper-parameters, losses, wall time, library versions."""
    tail = losses[-max(1, min(10, len(losses))):] if losses else []
    return {
        "agent": cfg.agent,
        "adapter_name": cfg.name,
        "base_ref": base_ref,
        "data": {"sha256": data_sha256, "train_files": [str(p) for p in cfg.train_files],
                 "eval_files": [str(p) for p in cfg.eval_files], "samples": counts},
        "hyperparameters": cfg.hyperparameters(),
        "device": plan.device,
        "variant": plan.variant,
        "qlora": plan.qlora,
        "steps": steps,
        "dry_run": cfg.dry_run,
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(tail) / len(tail) if tail else None,
        "eval_loss_before": eval_loss_before,
        "eval_loss": eval_loss,
        "shared_prefix_tokens": prefix_tokens,
        "wall_time_s": round(wall_time_s, 2),
        "versions": library_versions(),
    }
