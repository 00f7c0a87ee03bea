"""Train and publish the embedded default's adapters: one synthetic task per text agent (``training.synthetic``).

The tiny base is random-init, so an adapter learns its whole task, reading of the input included. What
makes that take 200-400 steps (``STEPS``; under a minute to two per agent on one core): inputs of a few
words whose label is a bag-of-words function of them, LoRA on the LM head as well as the projections (a
frozen random head with std 0.02 caps every logit near 2.5), LoRA+ (the B matrices learn 8x faster) with
AdamW beta2 0.99, and the shared-prefix loss. Published as ``<agent>/mistral_<agent>_v1@trained-1`` and promoted, so
``AGENT_MODEL_MAP.json``'s ``@current`` serves them; the random ``seed-1`` versions stay in the store. Idempotent:
published versions are skipped. ``scripts/run.sh`` runs this (``justnews-train defaults``) with one worker process
per core, so the eight train two at a time on two cores.

The newsreader (a vision agent) trains the same way on its synthetic visual task (``training.vision_task``:
:data:`N_VISION_TRAIN` images rendered into the work dir, a disjoint held-out split) with its own recipe
(:data:`VISION_RECIPE`: LoRA on the language model's projections and the LM head, not the vision tower or
projector; the text agents' rate, LoRA+ and AdamW beta2 0.99), published as ``newsreader/llava_newsreader_v1@trained-1`` on the pinned vision base.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .config import LORA_TARGETS, VISION_LORA_TARGETS, TrainConfig, default_adapter_name, is_vision_agent
from .synthetic import EXTRACTIVE, GENERATORS, write_dataset
from .trainer import run_training
from .vision_task import write_splits

__all__ = ["TRAINED_VERSION", "DEFAULT_AGENTS", "DEFAULT_VISION_AGENTS", "STEPS", "N_VISION_TRAIN", "N_VISION_EVAL",
           "TEXT_RECIPE", "VISION_RECIPE", "recipe", "default_data", "default_config", "trained_ref",
           "train_default_adapters"]

TRAINED_VERSION = "trained-1"
DEFAULT_AGENTS = tuple(GENERATORS)
DEFAULT_VISION_AGENTS = ("newsreader",)
N_TRAIN, N_EVAL = 2000, 64
N_VISION_TRAIN, N_VISION_EVAL = 2000, 128
# Optimizer steps per agent (batch 16); bench/RESULTS.md records what they reach. The extractive tasks
# fill three or four slots, each from the input, and exact match needs them all (200 steps: 0.02-0.20);
# chief_editor reached 0.69-1.00 over three seeds at 200 steps, 1.00 at 300. The newsreader, prompted with its
# user turn alone (no system turn, as LLaVA's chat format; with the 400-token system prompt it read 0.13 of
# the headlines), reads every held-out image's kind and headline after 600 steps (VISION_RECIPE below).
STEPS = {**{agent: 400 if agent in EXTRACTIVE else 200 for agent in GENERATORS}, "analyst": 300, "chief_editor": 300,
         "newsreader": 600}
# A newsreader step costs about this many text-agent steps (16 prompts of ~180 tokens, 64 of them image
# tokens, and the vision tower; measured 0.44 s against 0.185 s in one-thread workers): the parallel pool
# starts the costliest runs first so the workers end together.
STEP_COST = {"newsreader": 2.4}

# The per-agent recipes (the rest of TrainConfig's defaults apply). Text agents: LoRA on the LM head too (a
# frozen random head with std 0.02 caps every logit near 2.5), LoRA+ and AdamW beta2 0.99.
TEXT_RECIPE: dict[str, Any] = dict(
    lora_r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[*LORA_TARGETS, "lm_head"], batch_size=16,
    grad_accum=1, learning_rate=1e-3, lora_plus_ratio=8.0, adam_beta2=0.99, warmup_steps=10)
# Vision agents: the language model's projections and the LM head (the vision tower and projector stay frozen:
# the serving engine batches adapters through the language model and its head). With the head frozen the
# reply's logits stay capped (loss plateau near 5.5) and the one decision the image must settle after a shared
# first token -- "fire" and "flood" both begin with `f` -- was never learned: every held-out "fire" read as
# "flood" (headline 0.875). With the head at the text agents' rate (lr 1e-3, LoRA+ 8) it reads all 128
# held-out images right (bench/RESULTS.md, "Newsreader adapter"); at 4e-3 / LoRA+ 4 the same targets overfit
# (0.31).
VISION_RECIPE: dict[str, Any] = dict(
    lora_r=16, lora_alpha=32, lora_dropout=0.0, target_modules=f"{VISION_LORA_TARGETS}|lm_head", batch_size=16,
    grad_accum=1, learning_rate=1e-3, lora_plus_ratio=8.0, adam_beta2=0.99, warmup_steps=10)


def recipe(agent: str, steps: int | None = None) -> dict[str, Any]:
    """The default training hyper-parameters of ``agent`` (TrainConfig fields), ``max_steps`` included."""
    base = VISION_RECIPE if is_vision_agent(agent) else TEXT_RECIPE
    return {**base, "max_steps": steps or STEPS.get(agent, 200)}


def trained_ref(agent: str) -> str:
    """``<agent>/<default adapter name>@trained-1``: what the embedded default publishes for ``agent``."""
    return f"{agent}/{default_adapter_name(agent)}@{TRAINED_VERSION}"


def default_data(agent: str, data_dir: Path) -> tuple[Path, Path]:
    """Write ``agent``'s synthetic training and held-out splits into ``data_dir``; return both JSONL paths.

    Deterministic: the same agent always gets the same files, so the held-out split can be rebuilt to
    score an adapter on exactly the records its training held out.
    """
    if is_vision_agent(agent):
        return write_splits(Path(data_dir) / agent, N_VISION_TRAIN, N_VISION_EVAL)
    return write_dataset(agent, data_dir, N_TRAIN, N_EVAL)


def default_config(agent: str, train: Path, held: Path, output_dir: Path, *, steps: int | None = None,
                   store_root: Path | None = None, threads: int | None = None, publish: bool = True,
                   progress: bool = True, seed: int = 0) -> TrainConfig:
    """The embedded default's training settings for ``agent`` (plain LoRA on the CPU, :func:`recipe`)."""
    return TrainConfig(
        agent=agent, train_files=[train], eval_files=[held], output_dir=output_dir, store_root=store_root,
        adapter_version=TRAINED_VERSION, device="cpu", quantization="none", precision="fp32", threads=threads,
        **recipe(agent, steps), seed=seed, publish=publish, promote=True, progress=progress,
    )


def _train_one(agent: str, store: Any, root: Path, *, steps: int | None, threads: int | None, progress: bool,
               force: bool, log: Callable[[str], None], log_every: int = 0) -> dict[str, Any]:
    train, held = default_data(agent, root / "data")
    cfg = default_config(agent, train, held, root / "runs" / agent, steps=steps, threads=threads, progress=progress)
    if force:
        cfg = cfg.model_copy(update={"force": True})
    started = time.monotonic()
    result = run_training(cfg, store=store, log=log, log_every=log_every)
    return {"agent": agent, "ref": result.published_ref, "wall_time_s": round(time.monotonic() - started, 1),
            "eval_loss": result.summary["eval_loss"], "final_loss": result.summary["final_loss"]}


def _worker(agent: str, store_root: str, root: str, steps: int | None, force: bool) -> dict[str, Any]:
    """One agent in a worker process: one torch thread, step-count progress lines on stderr."""
    import sys
    import warnings

    from transformers.utils import logging as hf_logging

    from modelstore import ModelStore

    hf_logging.set_verbosity_error()  # the workers' progress is their step lines; no loader bars or warnings
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

    def log(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    return _train_one(agent, ModelStore(store_root), Path(root), steps=steps, threads=1, progress=False,
                      force=force, log=log, log_every=100)


def train_default_adapters(store: Any, *, agents: tuple[str, ...] | list[str] = DEFAULT_AGENTS,
                           steps: int | None = None, threads: int | None = None, work_dir: Path | None = None,
                           progress: bool = True, force: bool = False, workers: int = 1,
                           log: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Train and publish ``trained-1`` for every agent that lacks it; return one record per agent trained.

    Each record holds ``agent``, ``ref``, ``wall_time_s`` and the training summary's losses. With
    ``workers`` > 1 the agents train in that many worker processes at once (spawned, one torch thread
    each, longest runs first; the store's lock serialises the publishes) and ``threads`` is ignored; the
    records keep ``agents``' order either way, and a failure in any worker is raised once the others ended.
    """
    from modelstore.errors import NotFoundError

    todo = []
    for agent in agents:
        ref = trained_ref(agent)
        if not force:
            try:
                store.resolve(ref)
                continue
            except NotFoundError:
                pass
        todo.append(agent)
    with tempfile.TemporaryDirectory(prefix="justnews-train-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        if workers <= 1 or len(todo) <= 1:
            done = []
            for agent in todo:
                log(f"training {trained_ref(agent)} on its synthetic task")
                done.append(_train_one(agent, store, root, steps=steps, threads=threads, progress=progress,
                                       force=force, log=log))
            return done
        return _train_parallel(store, todo, root, steps=steps, force=force, workers=workers, log=log)


def _train_parallel(store: Any, todo: list[str], root: Path, *, steps: int | None, force: bool, workers: int,
                    log: Callable[[str], None]) -> list[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = min(workers, len(todo))
    # Costliest first: the pool ends together.
    order = sorted(todo, key=lambda a: -(steps or STEPS.get(a, 200)) * STEP_COST.get(a, 1.0))
    total_steps = sum(steps or STEPS.get(a, 200) for a in todo)
    log(f"training {len(todo)} adapters ({total_steps} steps) in {workers} worker processes, one thread each")
    started = time.monotonic()
    records, errors = {}, []
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_worker, a, str(store.root), str(root), steps, force): a for a in order}
        for fut in as_completed(futures):
            agent = futures[fut]
            try:
                records[agent] = rec = fut.result()
            except Exception as exc:  # noqa: BLE001 - reported, then raised after the others finish
                errors.append((agent, exc))
                log(f"{agent}: training failed: {exc}")
                continue
            log(f"[{len(records)}/{len(todo)}] published {rec['ref']} ({rec['wall_time_s']} s; "
                f"{time.monotonic() - started:.0f} s elapsed)")
    if errors:
        raise errors[0][1]
    return [records[a] for a in todo]
