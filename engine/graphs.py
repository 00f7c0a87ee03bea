"""Decode steps on static buffers, captured once per bucket as CUDA graphs and replayed.

An eager decode step of a 7B model launches a few thousand small kernels (every layer's projections, norms,
rotary, attention, and each LoRA layer's two matmuls); at 32 rows the GPU waits on Python and launches for
most of the step. A CUDA graph records the step's kernels once and replays them with one launch, which is
only sound when every tensor the step reads or writes keeps its address and shape. So a graphed step:

* reads its inputs from **static buffers** allocated once -- each row's last token, its length (its position
  and the slot position it writes), and its LoRA entry -- which the loop fills before each replay with one
  host-to-device copy;
* runs at a **bucket** of ``(rows, kv_len)``: rows rounded up to 1, 2, 4, 8, then multiples of 8 (at most the
  KV slots), and kv_len (the positions attention reads) to a power of two from 128 (at most a slot). Padding
  rows use the free slots after the running ones (slots ``n..rows-1``), write at their position 0 and attend
  to it alone with the bare base; nobody reads what they produce. Padding positions are masked like any
  position past a row's length;
* builds its attention mask and the dense LoRA kernel's row mask *inside* the step from those buffers (a
  few device ops, recorded with the rest), never on the host;
* applies the adapters from :class:`~engine.lora_batch.StackedLora`'s buffers, which a load or unload writes
  in place (a load copies into a free entry, an unload zeroes it): neither forces a capture. Only a rebuild
  of the buffers (an adapter of a higher rank than any before, or one touching a layer no earlier one did:
  ``StackedLora.reallocations``) or a switch of the decode kernel drops the LoRA graphs, which are captured
  again on their next use. A bucket whose rows all run the bare base has its own graph without the LoRA work.

A bucket is captured the first time a step needs it (one eager warm-up step, then the capture, both on the real
rows, which compute exactly what the replay computes), or ahead of traffic by :meth:`DecodeGraphs.capture_all`
(a replica asks for it at start, after preloading its adapters; the loop runs it once no row runs). Graphs share
one memory pool and write one logits buffer, so more buckets cost no more output memory.
Sampling stays outside the graph: it reads the static logits (``sampling.choose_tokens``: a few tensor ops,
one transfer) because seeded rows draw from their own generators. Prefill stays eager: its shapes vary with
every join.

On a device other than CUDA there is nothing to capture; ``mode="static"`` runs the very step function that
CUDA captures eagerly on the same buffers and buckets, which is how the CPU tests check it gives each row the
tokens of the dynamic eager step. A capture that fails (an op that needs the host mid-step, e.g. a quantized
kernel's) turns graphs off for the engine, which then decodes eagerly; ``stats`` names the error. Running out of
memory is not such a failure: the step fails like any out-of-memory step (its rows get a retryable error) and
the bucket is captured on a later step.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from .kv_slots import SlotKVCache
from .lora_batch import StackedLora

__all__ = ["DecodeGraphs", "GraphStats", "row_buckets", "kv_buckets"]

log = logging.getLogger(__name__)

KV_BUCKET_MIN = 128


def row_buckets(slots: int) -> list[int]:
    """Batch sizes a graph is captured for: 1, 2, 4, 8, then every multiple of 8, up to and including ``slots``."""
    sizes = [b for b in (1, 2, 4) if b < slots]
    sizes += list(range(8, slots, 8))
    return [*sizes, slots]


def kv_buckets(slot_tokens: int) -> list[int]:
    """Every kv length a graphed step may attend to with slots of ``slot_tokens``: powers of two from 128, then the
    whole slot; a step takes the smallest that holds its longest row."""
    buckets, bucket = [], KV_BUCKET_MIN
    while bucket < slot_tokens:
        buckets.append(bucket)
        bucket *= 2
    return [*buckets, slot_tokens]



@dataclass
class GraphStats:
    """Counters of the graphed decode path."""

    captures: int = 0  # graphs captured (or, mode "static", step functions built)
    replays: int = 0
    padded_rows: int = 0  # padding rows run in replays (the price of buckets)
    invalidations: int = 0  # LoRA graphs dropped because the stacked buffers were rebuilt or the kernel switched
    failed: str | None = None  # why graphs were turned off (a capture raised)
    buckets: list[tuple[int, int, bool]] = field(default_factory=list)  # (rows, kv_len, lora) of each live graph


class _Step:
    """One bucket's step: its function, and on CUDA its graph and static output."""

    def __init__(self, fn: Callable[[], torch.Tensor], graph: Any = None, out: torch.Tensor | None = None):
        self.fn, self.graph, self.out = fn, graph, out

    def run(self) -> torch.Tensor:
        if self.graph is None:
            return self.fn()
        self.graph.replay()
        return self.out


class DecodeGraphs:
    """The graphed decode steps of one continuous loop.

    Args:
        model: calls the model the loop runs (the registry's current module: PEFT may wrap the base meanwhile).
        cache: the loop's KV slots (allocated once: the graphs read and write them in place).
        stacked: the registry's stacked LoRA buffers (rows reach their adapters only through them).
        device: the model's device.
        pad_id: the token padding rows feed.
        vocab_size: of the logits (the static output every graph writes).
        mode: ``"cuda"`` captures and replays CUDA graphs; ``"static"`` runs the same step eagerly (any device).
    """

    def __init__(self, model: Callable[..., Any], cache: SlotKVCache, stacked: StackedLora, *, device: torch.device,
                 pad_id: int, vocab_size: int, mode: Literal["cuda", "static"]):
        if mode == "cuda" and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self._model, self.cache, self._stacked = model, cache, stacked
        self._device, self._pad_id, self.mode = device, pad_id, mode
        self.buckets = row_buckets(cache.slots)
        self.kv_buckets = kv_buckets(cache.slot_tokens)
        rows = self.buckets[-1]
        # The static inputs: row r's last token, length (= its position and write position), LoRA entry.
        self._inputs = torch.zeros((3, rows), dtype=torch.long, device=device)
        self._staging = torch.zeros((3, rows), dtype=torch.long, pin_memory=device.type == "cuda")
        # Every bucket's step writes its logits here: one output for all graphs, whatever their number.
        self._logits = torch.empty((rows, vocab_size), dtype=cache.dtype, device=device)
        self._steps: dict[tuple[int, int, bool], _Step] = {}
        self._pool = torch.cuda.graph_pool_handle() if mode == "cuda" else None
        self._lora_tag = self._current_lora_tag()
        self.stats = GraphStats()
        self.active = True  # False: paused (InferenceEngine.set_decode_graphs); the captured graphs are kept

    @property
    def enabled(self) -> bool:
        """False once a capture failed, or while paused (the loop then decodes eagerly)."""
        return self.active and self.stats.failed is None

    def step(self, tokens: list[int], lengths: list[int], entries: list[int]) -> torch.Tensor | None:
        """Run one decode step of the running rows (slots ``0..n-1``); their logits ``[n, vocab]``, or None when
        the step cannot be graphed (graphs off after a failure), in which case nothing ran.

        Called under the model lock, in the loop's thread. ``entries`` are the rows' stacked-LoRA entries (0: bare).
        """
        if not self.enabled:
            return None
        n = len(tokens)
        rows = next(b for b in self.buckets if b >= n)
        kv_len = next(b for b in self.kv_buckets if b > max(lengths))  # a row attends to positions 0..its length
        lora = any(entries)
        if lora:
            self._check_lora_tag()
        self._fill(tokens, lengths, entries, rows)
        key = (rows, kv_len, lora)
        step = self._steps.get(key)
        if step is None:
            try:
                logits = self._capture(key)
            except torch.OutOfMemoryError:  # memory, not capturability: the step fails like any OOM, and the
                raise  # bucket is captured on a later step
            except Exception as exc:  # not capturable here: decode eagerly from now on
                self._fail(key, exc)
                return None
        else:
            logits = step.run()
        self.stats.replays += 1
        self.stats.padded_rows += rows - n
        return logits[:n]

    def capture_all(self) -> int:
        """Capture every bucket not captured yet (largest first, so smaller ones reuse its pool memory): bare-base
        graphs, and LoRA graphs once the stacked buffers exist (after the first adapter load). Returns how many.

        Call under the model lock and only while no rows run: each capture runs the step on padding rows that
        write K/V into the first slots.
        """
        if not self.enabled:
            return 0
        self._check_lora_tag()
        variants = [False, True] if self._stacked.rank else [False]
        done = 0
        for rows in reversed(self.buckets):
            for kv_len in reversed(self.kv_buckets):
                for lora in variants:
                    key = (rows, kv_len, lora)
                    if key in self._steps:
                        continue
                    # Padding rows at the bucket's last position; a LoRA bucket's rows on entry 1 (zeros if empty).
                    self._fill([self._pad_id] * rows, [kv_len - 1] * rows, [int(lora)] * rows, rows)
                    try:
                        self._capture(key)
                    except torch.OutOfMemoryError:  # the rest are captured when a step needs them
                        log.warning("capturing decode graphs stopped at %s: out of memory", key)
                        return done
                    except Exception as exc:
                        self._fail(key, exc)
                        return done
                    done += 1
        return done

    def _fill(self, tokens: list[int], lengths: list[int], entries: list[int], rows: int) -> None:
        """The static inputs of a ``rows`` bucket: the given rows, then padding rows (pad token, slot position 0,
        bare base); one host-to-device copy."""
        n = len(tokens)
        staging = self._staging
        staging[:, n:rows] = 0
        staging[0, n:rows] = self._pad_id
        staging[:, :n] = torch.tensor([tokens, lengths, entries], dtype=torch.long)
        self._inputs[:, :rows].copy_(staging[:, :rows], non_blocking=True)

    def _fail(self, key: tuple[int, int, bool], exc: Exception) -> None:
        self.stats.failed = f"{type(exc).__name__}: {exc}"
        self._steps.clear()
        self.stats.buckets = []
        log.warning("decode graphs turned off: capturing %s failed: %s", key, self.stats.failed)

    def step_function(self, rows: int, kv_len: int, lora: bool) -> Callable[[], torch.Tensor]:
        """The step a bucket's graph records: everything from the static inputs to the last position's logits
        (``[rows, vocab]``); call it under the model lock."""
        return lambda: self._forward(rows, kv_len, lora)

    def _forward(self, rows: int, kv_len: int, lora: bool) -> torch.Tensor:
        tokens, lengths, entries = self._inputs[0, :rows], self._inputs[1, :rows], self._inputs[2, :rows]
        mask = self.cache.bind_decode(lengths, kv_len)
        route = self._stacked.route(entries, self._stacked.capacity) if lora else contextlib.nullcontext()
        with route:
            out = self._model(input_ids=tokens[:, None], attention_mask=mask, position_ids=lengths[:, None],
                              cache=self.cache, use_cache=True, logits_to_keep=1)
        logits = self._logits[:rows]
        logits.copy_(out.logits[:, -1, :])
        return logits

    def _capture(self, key: tuple[int, int, bool]) -> torch.Tensor:
        """Capture ``key``'s step and run it once on the inputs in place; its logits."""
        fn = self.step_function(*key)
        if self.mode == "static":
            step, logits = _Step(fn), fn()  # the first run is the warm-up a capture starts with
        else:
            # Warm up on a side stream (lazy library state is created outside the capture), record, replay. All
            # three run on the real rows and compute the same values, so their K/V writes are the replay's.
            current = torch.cuda.current_stream(self._device)
            side = torch.cuda.Stream(self._device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                fn()
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = fn()
            step = _Step(fn, graph, out)
            logits = step.run()
        self._steps[key] = step
        self.stats.captures += 1
        self.stats.buckets = sorted(self._steps)
        return logits

    # -- the LoRA buffers' generation -------------------------------------------------------------------------

    def _current_lora_tag(self) -> tuple[int, int, str]:
        s = self._stacked
        return s.reallocations, s.rank, s.decode_kernel

    def _check_lora_tag(self) -> None:
        """Drop the LoRA graphs when the buffers they recorded were rebuilt (or the decode kernel switched)."""
        tag = self._current_lora_tag()
        if tag != self._lora_tag:
            stale = [k for k in self._steps if k[2]]
            for k in stale:
                del self._steps[k]
            self.stats.invalidations += bool(stale)
            self.stats.buckets = sorted(self._steps)
            self._lora_tag = tag

