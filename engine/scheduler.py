"""Continuous batching: one loop owns the running batch; rows join and leave at step boundaries.

A request becomes a row in a bounded waiting queue (full: :class:`~engine.errors.QueueFull`, which the
serving layer answers 503 with Retry-After). Before every decode step the loop admits waiting rows into free
KV slots and prefills them together (right-padded, written from position 0 of their slots); their first token
comes from the prefill, and from then on they share every decode step with the rows already running. A row
that finishes (EOS, stop string, grammar done, max_new_tokens) or whose caller cancelled leaves at once: its
result is delivered, its adapter released and its slot freed (the last running row moves into it, so the
running rows stay the first ``n`` slots of :class:`~engine.kv_slots.SlotKVCache`).

Each row's tokens depend on its own prompt, adapter, sampling and seed only: its attention sees only its
own slot, its LoRA delta is its own adapter's (``lora_batch``), and its sampler owns its generator; so a row
gives the same tokens alone, mixed into a running batch, or joining mid-decode (tested).

Tokens are chosen for the whole batch at once (``sampling.choose_tokens``: a few tensor ops, one transfer);
sampled rows draw from their own seeded generators.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .adapters import AdapterRegistry
from .constraints import BatchMasker
from .cpu_threads import release_openmp_pool
from .decode import DecodeRow, vision_inputs
from .errors import EngineClosed, QueueFull, RequestTooLarge
from .graphs import DecodeGraphs
from .kv_slots import SlotKVCache
from .prefix_cache import PrefixCache
from .params import GenerationRequest, GenerationResult
from .sampling import choose_tokens

__all__ = ["RowHandle", "ContinuousScheduler", "SchedulerStats"]


class RowHandle:
    """A submitted row: its future result and a way to cancel it (its slot is freed at the next step)."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.future: Future[GenerationResult] = Future()
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None

    def cancel(self) -> None:
        """Give up on the row; it leaves the batch at the next step boundary."""
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()


@dataclass
class SchedulerStats:
    """Running totals of the loop."""

    decode_steps: int = 0
    prefills: int = 0
    rows_joined_mid_decode: int = 0
    rows_finished: int = 0
    rows_cancelled: int = 0
    rows_failed: int = 0
    refused_queue_full: int = 0
    max_running: int = 0
    mixed_steps: int = 0  # forwards whose rows used more than one adapter (the bare base counts as one)
    max_distinct_adapters: int = 0
    recent_batch_sizes: list[int] = field(default_factory=list)


@dataclass
class _Row:
    handle: RowHandle
    row: DecodeRow
    names: set[str]  # adapters pinned for this row
    slot_name: str  # the PEFT slot the row routes through (BASE_SLOT for the bare base)
    length: int = 0  # positions written in its KV slot
    last_token: int = 0
    prefix_digests: list[bytes] | None = None  # its prompt's shareable blocks (prefix cache), None: not shared


class ContinuousScheduler:
    """The loop thread that runs every submitted row to completion, batching all that are running.

    Args:
        adapters: the engine's adapter registry (pins, routing, the model).
        model_lock: held for each forward pass only.
        cache: the KV slots; its ``slots`` bound the running batch.
        tokenizer: decodes results.
        max_waiting: rows that may wait for a slot; one more is refused with :class:`QueueFull`.
        pad_id, eos_ids, vocab_size, device, pixel_dtype: from the engine.
        banned_ids: returns the tokens never allowed in constrained rows (or None).
        on_step: called in the loop thread after each forward (prefill or decode) and its token choice with
            ``(rows, distinct adapters, seconds)``; for metrics. Must be quick and must not raise.
        on_result: called with each delivered result (counters).
        prefixes: the prefix cache joining rows reuse and fill (None: no prefix sharing).
        graphs: ``"cuda"`` / ``"static"``: run decode steps through :class:`~engine.graphs.DecodeGraphs` in that
            mode (None: eager, the steps' shapes follow the batch).
    """

    def __init__(self, adapters: AdapterRegistry, model_lock: threading.RLock, cache: SlotKVCache, tokenizer: Any, *,
                 max_waiting: int, pad_id: int, eos_ids: set[int], vocab_size: int, device: torch.device,
                 pixel_dtype: torch.dtype | None = None, banned_ids: Callable[[], torch.Tensor | None] = lambda: None,
                 on_step: Callable[[int, int, float], None] | None = None,
                 prefixes: PrefixCache | None = None, graphs: str | None = None,
                 on_result: Callable[[GenerationResult], None] | None = None):
        self._adapters = adapters
        self._model_lock = model_lock
        self.cache = cache
        self._tokenizer = tokenizer
        self.max_waiting = max_waiting
        self.max_running = cache.slots  # lowered by set_max_running (a replica's runtime batch size)
        self._pad_id, self._eos_ids, self._vocab_size = pad_id, eos_ids, vocab_size
        self._device, self._pixel_dtype = device, pixel_dtype
        self._banned_ids = banned_ids
        self._on_step, self._on_result = on_step, on_result
        self.prefixes = prefixes
        self._waiting: collections.deque[_Row] = collections.deque()
        self._running: list[_Row] = []  # index == KV slot
        self._cond = threading.Condition()
        self._closed = False
        self._abort = False
        self._thread: threading.Thread | None = None
        self._capture_request: Future[int] | None = None  # capture_graphs: done by the loop once it is idle
        self._cpu_pools = device.type == "cpu"  # free idle OpenMP pools (see submit_many and _loop)
        self._masker: BatchMasker | None = None
        self._router = adapters.router()
        self._step_started, self._step_distinct = 0.0, 0
        self.stats = SchedulerStats()
        self.graphs = (DecodeGraphs(lambda **kw: adapters.model(**kw), cache, adapters.stacked, device=device,
                                    pad_id=pad_id, vocab_size=vocab_size, mode=graphs) if graphs is not None else None)

    # -- callers ---------------------------------------------------------------------------------------

    def submit(self, row: DecodeRow, request: GenerationRequest, names: set[str], slot_name: str) -> RowHandle:
        """Queue a prepared row whose adapters (``names``) the caller has already pinned; returns its handle.

        On any refusal the caller still owns the pins.

        Raises:
            RequestTooLarge: prompt + max_new_tokens does not fit a KV slot (the message names the numbers).
            QueueFull: ``max_waiting`` rows already wait.
            EngineClosed: the scheduler was closed.
        """
        return self.submit_many([(row, request, names, slot_name)])[0]

    def submit_many(self, items: list[tuple[DecodeRow, GenerationRequest, set[str], str]]) -> list[RowHandle]:
        """Queue several prepared rows at once, all or none: the loop sees them together, so as many as there
        are free slots join the same prefill. Same refusals as :meth:`submit` (the queue bound counts them all)."""
        for row, _, _, _ in items:
            need = len(row.prompt_ids) + row.params.max_new_tokens
            if need > self.cache.slot_tokens:
                raise RequestTooLarge(
                    f"prompt ({len(row.prompt_ids)} tokens) + max_new_tokens ({row.params.max_new_tokens}) = {need} "
                    f"tokens does not fit a KV slot of {self.cache.slot_tokens} tokens "
                    f"({self.cache.bytes_per_token} bytes per token, {self.cache.slots} slots)")
        handles = [RowHandle(request) for _, request, _, _ in items]
        if self._cpu_pools:  # this thread's OpenMP pool would throttle the loop thread's (engine/cpu_threads.py)
            release_openmp_pool()
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is closed and accepts no new requests")
            if len(self._waiting) + len(items) > self.max_waiting:  # callers who gave up free their places first
                for r in [r for r in self._waiting if r.handle.cancelled]:
                    self._waiting.remove(r)
                    self._finish(r, cancelled=True)
            if len(self._waiting) + len(items) > self.max_waiting:
                self.stats.refused_queue_full += len(items)
                raise QueueFull(f"{len(self._waiting)} requests already wait for a KV slot "
                                f"(max_waiting_requests {self.max_waiting}); retry shortly")
            for handle, (row, _, names, slot_name) in zip(handles, items):
                self._waiting.append(_Row(handle, row, names, slot_name))
            self._start_loop()
            self._cond.notify()
        return handles

    def _start_loop(self) -> None:  # under self._cond
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
            self._thread.start()

    def set_max_running(self, n: int) -> None:
        """Run at most ``n`` rows at once from the next step on (rows above it finish; none are cut).

        Raises:
            ValueError: ``n`` is below 1 or above the cache's slots.
        """
        if not 1 <= n <= self.cache.slots:
            raise ValueError(f"max running rows ({n}) must be between 1 and the KV cache's slots ({self.cache.slots})")
        with self._cond:
            self.max_running = n
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Rows waiting for a slot."""
        with self._cond:
            return len(self._waiting)

    @property
    def running(self) -> int:
        """Rows in the running batch."""
        with self._cond:
            return len(self._running)

    @property
    def loop_alive(self) -> bool:
        """Whether the loop thread runs (it starts at the first row and ends after ``close``)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        """False once the loop thread has died with rows left."""
        return self._thread is None or self._thread.is_alive() or self._closed

    def close(self, timeout_s: float = 0.0) -> None:
        """Refuse new rows; wait up to ``timeout_s`` for queued and running rows, then fail the rest."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while (self._waiting or self._running) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            leftovers, self._waiting = list(self._waiting), collections.deque()
            if self._running:  # the loop fails them at its next step boundary
                self._abort = True
                self._cond.notify_all()
        for r in leftovers:
            self._finish(r, error=EngineClosed("the engine stopped before this request ran"))

    # -- the loop ----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if self._cpu_pools and not self._waiting and not self._running:  # idle: free this thread's OpenMP
                release_openmp_pool()  # pool so it throttles no other thread's meanwhile (engine/cpu_threads.py)
            with self._cond:
                while not self._waiting and not self._running and not self._closed and self._capture_request is None:
                    self._cond.wait()
                capture = None
                if self._capture_request is not None and (self._closed or not (self._waiting or self._running)):
                    capture, self._capture_request = self._capture_request, None
            if capture is not None:
                self._capture_graphs(capture)
                continue
            with self._cond:
                if self._abort:  # closed and out of time: fail what is left, and stop
                    failed = [*self._running, *self._waiting]
                    self._running, self._waiting = [], collections.deque()
                elif self._closed and not self._running and not self._waiting:
                    self._cond.notify_all()
                    return
                else:
                    failed = None
            if failed is not None:
                for r in failed:
                    self._finish(r, error=EngineClosed("the engine stopped before this request finished"))
                with self._cond:
                    self._cond.notify_all()
                return
            with self._cond:
                joining = []
                room = min(self.cache.slots, self.max_running)
                while self._waiting and len(self._running) + len(joining) < room:
                    r = self._waiting.popleft()
                    if r.handle.cancelled:
                        self._finish(r, cancelled=True)
                        continue
                    joining.append(r)
            try:
                with torch.inference_mode():
                    if joining:
                        self._prefill(joining)
                    if self._running:
                        self._decode_step()
            except Exception as exc:  # a failed forward fails the rows in it, never the loop
                with self._cond:
                    failed = [*self._running, *(r for r in joining if r not in self._running)]
                    self._running = []
                for r in failed:
                    self._finish(r, error=exc)
            with self._cond:
                self._cond.notify_all()

    def capture_graphs(self) -> Future[int]:
        """Ask the loop to capture every decode-graph bucket not captured yet, as soon as no row runs or waits (the
        captures write into free KV slots); the future gives how many were captured (0: graphs off or closed)."""
        with self._cond:
            if self.graphs is None or not self.graphs.enabled or self._closed:
                done: Future[int] = Future()
                done.set_result(0)
                return done
            if self._capture_request is None:
                self._capture_request = Future()
            self._start_loop()
            self._cond.notify()
            return self._capture_request

    def _capture_graphs(self, request: Future[int]) -> None:
        try:
            if self._closed:
                request.set_result(0)
                return
            with self._model_lock, torch.inference_mode():
                request.set_result(self.graphs.capture_all())
        except Exception as exc:  # capture_all turns graphs off on a failed capture; anything else is reported
            request.set_exception(exc)

    def _begin_step(self, rows: list[_Row]) -> None:
        distinct = len({r.slot_name for r in rows})
        self._step_started, self._step_distinct = time.monotonic(), distinct
        self.stats.mixed_steps += distinct > 1
        self.stats.max_distinct_adapters = max(self.stats.max_distinct_adapters, distinct)

    def _forward(self, rows: list[_Row], input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 logits_to_keep: Any, extra_inputs: dict[str, Any]) -> torch.Tensor:
        self._begin_step(rows)
        with self._model_lock, self._router.step([r.slot_name for r in rows],
                                                                           self._device) as extra:
            out = self._adapters.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                       cache=self.cache, use_cache=True, logits_to_keep=logits_to_keep,
                                       **extra, **extra_inputs)
        return out.logits

    def _prefill(self, joining: list[_Row]) -> None:
        start, k = len(self._running), len(joining)
        lengths = [len(r.row.prompt_ids) for r in joining]
        # Cached prefix blocks are copied into the slots first; each row then prefills from where they end.
        starts = [self._reuse_prefix(r, start + i) for i, r in enumerate(joining)]
        width = max(n - p for n, p in zip(lengths, starts))
        ids = torch.full((k, width), self._pad_id, dtype=torch.long)
        for i, r in enumerate(joining):
            ids[i, :lengths[i] - starts[i]] = torch.tensor(r.row.prompt_ids[starts[i]:], dtype=torch.long)
        first = torch.tensor(starts, dtype=torch.long)
        positions = first[:, None] + torch.arange(width)[None, :]
        # Padded queries past a row's prompt write into positions decode overwrites later (clamped to the slot).
        write = positions.clamp(max=self.cache.slot_tokens - 1)
        kv_len = int(write.max()) + 1
        last = sorted(set(n - p - 1 for n, p in zip(lengths, starts)))
        self.cache.bind(start, write.to(self._device), kv_len)
        logits = self._forward(joining, ids.to(self._device), positions.to(self._device),
                               self.cache.prefill_mask(first.to(self._device), width, self.cache.dtype),
                               torch.tensor(last, device=self._device),
                               vision_inputs([r.row for r in joining], self._device, self._pixel_dtype))
        if self.prefixes is not None:
            for i, r in enumerate(joining):
                if r.prefix_digests is not None:
                    self.prefixes.store(r.prefix_digests, start + i)
        # logits: [k, len(last), vocab]; row i's own last prompt token is column last.index(its query index).
        picked = logits[torch.arange(k, device=logits.device),
                        torch.tensor([last.index(n - p - 1) for n, p in zip(lengths, starts)],
                                     device=logits.device)].float()
        self.stats.prefills += 1
        if self._running:
            self.stats.rows_joined_mid_decode += k
        with self._cond:
            self._running.extend(joining)
        for r, n in zip(joining, lengths):
            r.length = n
        now = time.monotonic()
        for r in joining:
            r.handle.first_token_at = now
        self._choose(joining, picked)

    def _reuse_prefix(self, r: _Row, slot: int) -> int:
        """Copy ``r``'s cached prefix blocks into ``slot``; the prompt tokens they cover (0 without a hit)."""
        if self.prefixes is None or r.row.vision is not None:
            return 0
        r.prefix_digests = self.prefixes.digests(r.slot_name, r.row.prompt_ids)
        return self.prefixes.copy_in(r.prefix_digests, slot)

    def _decode_step(self) -> None:
        rows = list(self._running)
        n = len(rows)
        logits = self._graphed_step(rows) if self.graphs is not None and self.graphs.enabled else None
        if logits is None:
            lengths = [r.length for r in rows]
            lengths_d = torch.tensor(lengths, dtype=torch.long, device=self._device)
            mask = self.cache.bind_decode(lengths_d, max(lengths) + 1)
            logits = self._forward(rows, torch.tensor([[r.last_token] for r in rows], device=self._device),
                                   lengths_d[:, None], mask, 1, {})[:, -1, :]
        for r in rows:
            r.length += 1
        self.stats.decode_steps += 1
        self.stats.max_running = max(self.stats.max_running, n)
        self.stats.recent_batch_sizes = [*self.stats.recent_batch_sizes[-31:], n]
        self._choose(rows, logits.float())

    def _graphed_step(self, rows: list[_Row]) -> torch.Tensor | None:
        """The decode step through the graphs (static buffers, a bucket's graph); None if it could not run."""
        self._begin_step(rows)
        entries = self._adapters.row_entries([r.slot_name for r in rows])
        with self._model_lock:
            return self.graphs.step([r.last_token for r in rows], [r.length for r in rows], entries)

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick every row's next token from ``logits`` ([rows, vocab], batch order), advance, and retire rows."""
        constrained = {p: r.row.constraint for p, r in enumerate(rows) if r.row.constraint is not None}
        if constrained:
            if self._masker is None:
                self._masker = BatchMasker(self.cache.slots, self._vocab_size, self._banned_ids())
            self._masker.apply(logits, constrained)
        chosen = choose_tokens(logits, [r.row.sampler for r in rows])  # one transfer for the batch
        done = []
        for p, r in enumerate(rows):
            token = r.last_token = chosen[p]
            if r.row.advance(token, self._eos_ids) or r.handle.cancelled:
                done.append(p)
        if self._on_step is not None:
            try:
                self._on_step(len(rows), self._step_distinct, time.monotonic() - self._step_started)
            except Exception:  # metrics must never stop the loop
                pass
        if done:
            self._retire([rows[p] for p in done])
        # Rows cancelled by their callers leave too, wherever they are in the batch.
        gone = [r for r in self._running if r.handle.cancelled]
        if gone:
            self._retire(gone)

    def _retire(self, leaving: list[_Row]) -> None:
        """Deliver and drop ``leaving`` from the running batch; keep the running rows in slots 0..n-1."""
        with self._cond:
            for r in sorted(leaving, key=self._running.index, reverse=True):
                p = self._running.index(r)
                last = len(self._running) - 1
                if p != last:
                    moved = self._running[last]
                    self.cache.move(last, p, moved.length)
                    self._running[p] = moved
                self._running.pop()
        for r in leaving:
            self._finish(r, cancelled=r.handle.cancelled)

    def _finish(self, r: _Row, *, error: BaseException | None = None, cancelled: bool = False) -> None:
        """Release the row's adapters and deliver its outcome (nothing to deliver to a cancelled caller)."""
        try:
            self._adapters.release(r.names)
        finally:
            if cancelled or r.handle.cancelled:
                self.stats.rows_cancelled += 1
                r.handle.future.cancel()
            elif error is not None:
                self.stats.rows_failed += 1
                _deliver(r.handle.future, error=error)
            else:
                self.stats.rows_finished += 1
                result = r.row.result(self._tokenizer, r.handle.request)
                if self._on_result is not None:
                    self._on_result(result)
                _deliver(r.handle.future, result=result)


def _deliver(future: Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
