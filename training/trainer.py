"""One training run, top to bottom: data, base + LoRA, the loop, checkpoints, the adapter and its summary.

Text agents train on JSONL ``{input, output}`` records rendered with their agent prompt; vision agents
(``newsreader``) on image + text records (:mod:`training.vision_task`) on a vision-language base, whose
examples carry ``pixel_values`` through the same loop. ``run_training(cfg)`` returns a :class:`TrainResult`;
with ``cfg.publish`` the adapter goes into the agent's ModelStore namespace through the store's atomic
publish, only after every step and the final evaluation succeeded, so a failed run publishes nothing.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from agent_graph.contracts import get_spec

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Encoded, data_hash, encode, read_records, shared_prefix_len
from .errors import DataError, TrainingError
from .loss import answer_loss
from .model import load_for_training, resolve_plan
from .summary import SUMMARY_FILE, build_summary
from .vision_data import encode_vision, read_vision_records, vision_data_hash

__all__ = ["TrainResult", "run_training", "micro_batch", "param_groups"]


@dataclass
class TrainResult:
    """What a run produced."""

    adapter_dir: Path
    summary: dict[str, Any]
    published_ref: str | None = None
    losses: list[float] = field(default_factory=list)


def micro_batch(m: int, n: int, size: int, seed: int) -> list[int]:
    """Example indices of micro-batch ``m``: a seeded permutation per epoch, read as one endless stream.

    A pure function of its arguments, so a resumed run sees exactly the batches the first one would have.
    """
    out, pos = [], m * size
    while len(out) < size:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        take = perm[offset : offset + size - len(out)]
        out += take
        pos += len(take)
    return out


def param_groups(named: list[tuple[str, Any]], lr: float, lora_plus_ratio: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: LoRA+ (Hayou et al., 2024) gives the B matrices ``lora_plus_ratio`` times the rate.

    The embedded default's adapters use it: on the random-init base it is what brings the classification
    tasks to their targets in 200 steps (bench/RESULTS.md).
    """
    if lora_plus_ratio == 1.0:
        return [{"params": [p for _, p in named]}]
    return [{"params": [p for n, p in named if ".lora_B." not in n]},
            {"params": [p for n, p in named if ".lora_B." in n], "lr": lr * lora_plus_ratio}]


def _split(records: list, fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0 or len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(records) * fraction)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 1.0 - 0.9 * min(1.0, (step - warmup) / span)


@torch.no_grad()
def _eval_loss(model: Any, examples: list[Encoded], prefix: list[int], pad_id: int, device: torch.device,
               batch_size: int) -> float | None:
    if not examples:
        return None
    model.eval()
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        n = sum(len(e.answer_ids) for e in chunk)
        total += answer_loss(model, chunk, prefix, pad_id, device).item() * n
        tokens += n
    model.train()
    return total / tokens


def run_training(cfg: TrainConfig, *, store: Any = None, log: Callable[[str], None] = lambda _m: None,
                 interrupt_after: int | None = None, log_every: int = 0) -> TrainResult:
    """Train one adapter as ``cfg`` says; publish it when ``cfg.publish``.

    Args:
        interrupt_after: stop with a checkpoint after this step, as a killed run would (tests of resume).
        log_every: also ``log`` the step and loss every this many steps (progress where a bar cannot
            show, e.g. several runs in parallel processes); 0: never.

    Raises:
        DataError: a record is invalid (file and line named); nothing was trained.
        TrainingError: the run cannot proceed (unknown agent, loss not finite, resume mismatch).
    """
    from modelstore import ModelStore

    started = time.monotonic()
    spec = get_spec(cfg.agent)
    if spec.kind not in ("llm", "multimodal"):
        raise TrainingError(f"agent {cfg.agent!r} is a {spec.kind} agent; only prompted (llm, multimodal) agents take "
                            "LoRA adapters")
    vision = spec.kind == "multimodal"  # image + text records (training.vision_task), checked before the base loads
    read = read_vision_records if vision else partial(read_records, spec)
    records = read(cfg.train_files, cfg.max_train_samples)
    if cfg.eval_files:
        train_recs, eval_recs = records, read(cfg.eval_files, cfg.max_eval_samples)
    else:
        train_recs, eval_recs = _split(records, cfg.eval_fraction, cfg.seed)
        eval_recs = eval_recs[: cfg.max_eval_samples] if cfg.max_eval_samples else eval_recs
    files = list(cfg.train_files) + list(cfg.eval_files)
    digest = vision_data_hash(files, train_recs + eval_recs) if vision else data_hash(files)
    log(f"{cfg.agent}: {len(train_recs)} training and {len(eval_recs)} held-out records (data sha256 {digest[:12]})")

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    store = store if store is not None else ModelStore(cfg.store_root)
    plan = resolve_plan(cfg)
    torch.manual_seed(cfg.seed)  # LoRA A init and dropout draw from the global generator
    loaded = load_for_training(store, cfg, plan)
    model, tokenizer, base_ref = loaded.model, loaded.tokenizer, loaded.base_ref
    device = torch.device(plan.device)
    if vision:
        train_ex = encode_vision(cfg.agent, train_recs, loaded.processor, cfg.max_seq_len)
        eval_ex = encode_vision(cfg.agent, eval_recs, loaded.processor, cfg.max_seq_len)
    else:
        train_ex = encode(spec, train_recs, tokenizer, cfg.max_seq_len)
        eval_ex = encode(spec, eval_recs, tokenizer, cfg.max_seq_len)
    # Checkpointed layers cannot return a cache; vision prompts differ from their first image token on.
    share = cfg.share_prefix and not cfg.gradient_checkpointing and not vision
    prefix = train_ex[0].prompt_ids[: shared_prefix_len(train_ex + eval_ex)] if share else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    per_step = cfg.batch_size * cfg.grad_accum
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train_ex) / per_step))
    if cfg.dry_run:
        total = min(total, cfg.dry_run_steps)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(param_groups(named, cfg.learning_rate, cfg.lora_plus_ratio), lr=cfg.learning_rate,
                                  betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, cfg.warmup_steps))
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    step, losses = 0, []
    if cfg.resume:
        restored = load_checkpoint(out_dir, model, optimizer, cfg.fingerprint(), digest)
        if restored is not None:
            step, losses = restored
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, cfg.warmup_steps),
                                                          last_epoch=step - 1) if step else scheduler
            log(f"resumed from {out_dir / 'checkpoint'} at step {step}")

    eval_before = _eval_loss(model, eval_ex, prefix, pad_id, device, max(cfg.batch_size, 8))
    model.train()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, desc=f"train {cfg.agent}", unit="step", disable=not cfg.progress, leave=False)
    while step < total:
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for a in range(cfg.grad_accum):
            batch = [train_ex[i] for i in micro_batch(step * cfg.grad_accum + a, len(train_ex), cfg.batch_size, cfg.seed)]
            loss = answer_loss(model, batch, prefix, pad_id, device) / cfg.grad_accum
            loss.backward()
            step_loss += loss.item()
        if not math.isfinite(step_loss):
            raise TrainingError(f"loss is {step_loss} at step {step}; lower learning_rate ({cfg.learning_rate})")
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(round(step_loss, 6))
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if log_every and step % log_every == 0 and step < total:
            log(f"{cfg.agent}: step {step}/{total}, loss {step_loss:.4f}")
        if cfg.save_every and step % cfg.save_every == 0 and step < total:
            save_checkpoint(out_dir, model, optimizer, step, cfg.fingerprint(), digest, losses)
        if interrupt_after is not None and step >= interrupt_after:
            bar.close()
            raise TrainingError(f"interrupted after step {step} of {total}; rerun with resume to continue")
    bar.close()
    eval_after = _eval_loss(model, eval_ex, prefix, pad_id, device, max(cfg.batch_size, 8))
    save_checkpoint(out_dir, model, optimizer, step, cfg.fingerprint(), digest, losses)

    adapter_dir = out_dir / "adapter"
    model.save_pretrained(adapter_dir, safe_serialization=True, save_embedding_layers=False)
    (adapter_dir / "README.md").unlink(missing_ok=True)  # PEFT's model card template; the manifest says it all
    summary = build_summary(cfg, plan, base_ref=str(base_ref), data_sha256=digest,
                            counts={"train": len(train_ex), "eval": len(eval_ex), "read": len(records)},
                            steps=step, losses=losses, eval_loss_before=eval_before, eval_loss=eval_after,
                            prefix_tokens=len(prefix), wall_time_s=time.monotonic() - started)
    (adapter_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    result = TrainResult(adapter_dir, summary, losses=losses)
    log(f"{cfg.agent}: {step} steps, final loss {losses[-1] if losses else float('nan'):.4f}, "
        f"eval loss {eval_before} -> {eval_after}")
    if cfg.publish:
        version = cfg.adapter_version or datetime.now(timezone.utc).strftime("t%Y%m%d-%H%M%S")
        store.publish_adapter(cfg.agent, cfg.name, adapter_dir, version, base_ref=str(base_ref),
                              training_summary=summary, promote=cfg.promote, force=cfg.force,
                              notes=f"Trained by justnews-train on {len(train_ex)} records.")
        result.published_ref = f"{cfg.agent}/{cfg.name}@{version}"
        log(f"published {result.published_ref}" + (" (current)" if cfg.promote else ""))
    return result
