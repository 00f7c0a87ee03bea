"""Train and publish the embedded default's adapters: one synthetic task per text agent (``training.synthetic``).

The tiny base is random-init, so an adapter learns its whole task, reading of the input included. What
makes that take 200 steps (under a minute per agent on one core): inputs of a few words whose label is a
bag-of-words function of them, LoRA on the LM head as well as the projections (a frozen random head with
std 0.02 caps every logit near 2.5), LoRA+ (the B matrices learn 8x faster) with AdamW beta2 0.99, and the
shared-prefix loss. Published as ``<agent>/mistral_<agent>_v1@trained-1`` and promoted, so
``AGENT_MODEL_MAP.json``'s ``@current`` serves them; the random ``seed-1`` versions stay in the store. Idempotent: published versions are skipped.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .config import LORA_TARGETS, TrainConfig
from .synthetic import GENERATORS, write_dataset
from .trainer import run_training

__all__ = ["TRAINED_VERSION", "DEFAULT_AGENTS", "STEPS", "default_config", "train_default_adapters"]

TRAINED_VERSION = "trained-1"
DEFAULT_AGENTS = tuple(GENERATORS)
N_TRAIN, N_EVAL = 2000, 64
# Optimizer steps per agent (batch 16); bench/RESULTS.md records what they reach.
STEPS = {agent: 200 for agent in GENERATORS}


def default_config(agent: str, train: Path, held: Path, output_dir: Path, *, steps: int | None = None,
                   store_root: Path | None = None, threads: int | None = None, publish: bool = True,
                   progress: bool = True, seed: int = 0) -> TrainConfig:
    """The embedded default's training settings for ``agent`` (plain LoRA on the CPU)."""
    return TrainConfig(
        agent=agent, train_files=[train], eval_files=[held], output_dir=output_dir, store_root=store_root,
        adapter_version=TRAINED_VERSION, device="cpu", quantization="none", precision="fp32", threads=threads,
        lora_r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[*LORA_TARGETS, "lm_head"],
        max_steps=steps or STEPS.get(agent, 200), batch_size=16, grad_accum=1, learning_rate=1e-3, lora_plus_ratio=8.0,
        adam_beta2=0.99, warmup_steps=10,
        seed=seed, publish=publish, promote=True, progress=progress,
    )


def train_default_adapters(store: Any, *, agents: tuple[str, ...] | list[str] = DEFAULT_AGENTS,
                           steps: int | None = None, threads: int | None = None, work_dir: Path | None = None,
                           progress: bool = True, force: bool = False,
                           log: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Train and publish ``trained-1`` for every agent that lacks it; return one record per agent trained.

    Each record holds ``agent``, ``ref``, ``wall_time_s`` and the training summary's losses.
    """
    from modelstore.errors import NotFoundError

    done = []
    with tempfile.TemporaryDirectory(prefix="justnews-train-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        for agent in agents:
            ref = f"{agent}/mistral_{agent}_v1@{TRAINED_VERSION}"
            if not force:
                try:
                    store.resolve(ref)
                    continue
                except NotFoundError:
                    pass
            log(f"training {ref} on its synthetic task")
            train, held = write_dataset(agent, root / "data", N_TRAIN, N_EVAL)
            cfg = default_config(agent, train, held, root / "runs" / agent, steps=steps, threads=threads,
                                 progress=progress)
            if force:
                cfg = cfg.model_copy(update={"force": True})
            started = time.monotonic()
            result = run_training(cfg, store=store, log=log)
            done.append({"agent": agent, "ref": result.published_ref, "wall_time_s": round(time.monotonic() - started, 1),
                         "eval_loss": result.summary["eval_loss"], "final_loss": result.summary["final_loss"]})
    return done
