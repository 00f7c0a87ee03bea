"""The replica's own request batcher: mixes adapters in one engine call.

Ray Serve's ``@serve.batch`` splits every batch by multiplexed model id before calling the batched
function (``ray/serve/batching.py``, ``_split_batch_by_model_id``), so with one adapter per model id it
can never put two adapters into one forward pass. The engine can (each row names its own adapter), so
the replica batches by itself: callers ``submit`` an item that already carries its adapter, one loop
gathers up to ``max_batch_size`` items or waits ``batch_wait_timeout_s`` after the first, and runs the
batch in a single worker thread so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Hashable, Sequence, TypeVar

__all__ = ["BatcherClosed", "BatchRecord", "BatcherStats", "MixedBatcher"]

_RECENT = 32  # batch sizes kept in the stats, newest last

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """``submit`` after ``close`` began, or the item was still queued when the drain timed out."""


@dataclass(frozen=True)
class BatchRecord:
    """What one executed batch held, passed to the ``on_batch`` hook."""

    size: int
    keys: tuple[Hashable, ...]
    seconds: float

    @property
    def distinct_keys(self) -> int:
        return len(set(self.keys))


@dataclass
class BatcherStats:
    """Running totals of a batcher (plain numbers, cheap to return from a stats endpoint)."""

    batches: int = 0
    items: int = 0
    max_batch_size_seen: int = 0
    max_distinct_keys: int = 0
    mixed_batches: int = 0
    last_batch_keys: list[Any] = field(default_factory=list)
    recent_batch_sizes: list[int] = field(default_factory=list)

    def record(self, record: BatchRecord) -> None:
        self.batches += 1
        self.items += record.size
        self.max_batch_size_seen = max(self.max_batch_size_seen, record.size)
        self.max_distinct_keys = max(self.max_distinct_keys, record.distinct_keys)
        self.mixed_batches += record.distinct_keys > 1
        self.last_batch_keys = list(record.keys)
        self.recent_batch_sizes = [*self.recent_batch_sizes[-(_RECENT - 1):], record.size]


@dataclass
class _Pending(Generic[T]):
    item: T
    future: asyncio.Future


class MixedBatcher(Generic[T, R]):
    """Gather submitted items into batches and run them through a synchronous batch function.

    Args:
        run_batch: called in the worker thread with a list of items; returns one entry per item, either
            its result or the exception that item should raise.
        max_batch_size: most items per batch.
        batch_wait_timeout_s: how long to wait after the first item for the batch to fill.
        key: names the group of an item (its adapter) for the statistics.
        on_batch: called on the event loop after each batch (metrics); must not raise.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        key: Callable[[T], Hashable] = lambda _item: None,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ):
        self._run_batch = run_batch
        self._key = key
        self._on_batch = on_batch
        self.configure(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        self._queue: deque[_Pending[T]] = deque()
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-batch")
        self._running: list[_Pending[T]] = []
        self.stats = BatcherStats()
        # Started by the first submit: Serve may build the replica outside a running event loop.
        self._task: asyncio.Task | None = None

    def configure(self, *, max_batch_size: int | None = None, batch_wait_timeout_s: float | None = None) -> None:
        """Change limits; the batch being gathered now already uses the new values."""
        if max_batch_size is not None:
            if max_batch_size < 1:
                raise ValueError(f"max_batch_size ({max_batch_size}) must be >= 1")
            self.max_batch_size = max_batch_size
        if batch_wait_timeout_s is not None:
            if batch_wait_timeout_s < 0:
                raise ValueError(f"batch_wait_timeout_s ({batch_wait_timeout_s}) must be >= 0")
            self.batch_wait_timeout_s = batch_wait_timeout_s

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting the one running)."""
        return len(self._queue)

    @property
    def healthy(self) -> bool:
        """False once the batching loop has died; nothing queued would ever run."""
        return self._task is None or not self._task.done() or self._closing

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result (or raise the exception its row produced)."""
        if self._closing:
            raise BatcherClosed("the replica is shutting down and accepts no new requests")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._loop(), name="mixed-batcher")
        future = loop.create_future()
        self._queue.append(_Pending(item, future))
        self._idle.clear()
        self._arrived.set()
        return await future

    async def _gather(self) -> list[_Pending[T]]:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = time.monotonic() + self.batch_wait_timeout_s
        while len(self._queue) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch = []
        while self._queue and len(batch) < self.max_batch_size:
            pending = self._queue.popleft()
            if not pending.future.done():  # the caller gave up (cancelled) while queued
                batch.append(pending)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                self._mark_idle()
                continue
            items = [p.item for p in batch]
            started = time.monotonic()
            self._running = batch
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, items)
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # a bug in run_batch fails this batch, never the loop
                results = [exc] * len(batch)
            finally:
                self._running = []
            for pending, result in zip(batch, results):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
            record = BatchRecord(len(batch), tuple(self._key(i) for i in items), time.monotonic() - started)
            self.stats.record(record)
            if self._on_batch is not None:
                try:
                    self._on_batch(record)
                except Exception:  # metrics must never stop batching
                    pass
            self._mark_idle()

    def _mark_idle(self) -> None:
        if not self._queue:
            self._idle.set()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, let queued items run for up to ``timeout_s``, then fail the rest."""
        self._closing = True
        self._arrived.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        if self._task is not None:
            self._task.cancel()
        leftovers = list(self._running) + list(self._queue)
        self._queue.clear()
        for pending in leftovers:
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed("the replica stopped before this request ran"))
        self._executor.shutdown(wait=False)
