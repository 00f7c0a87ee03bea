"""QueueWriter: review-queue writes off the request path, so the queue can never slow or fail an answer.

``submit`` only puts the item on a bounded in-memory queue (never blocks); one daemon thread drains it in
batches into the database. When the database is unreachable or locked past its busy timeout, or the
in-memory queue is full, the items are dropped and counted (``on_failure(agent, reason, n)``) and the agent
keeps answering: a review queue is a sample for editors, not a log of record. The schema is migrated by
the same thread on first use (with the same failure handling), never on the request path.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from .store import NewItem, ReviewStore

__all__ = ["QueueWriter", "FailureHook", "QueuedHook"]

log = logging.getLogger(__name__)

FailureHook = Callable[[str, str, int], None]   # (agent, reason, items)
QueuedHook = Callable[[NewItem], None]


def _reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "locked"
    if "unable to open" in text or "connect" in text or "refused" in text or "timeout" in text:
        return "unavailable"
    return type(exc).__name__[:40]


class QueueWriter:
    """A background writer into a :class:`ReviewStore`.

    Args:
        store: a ReviewStore, or a zero-argument factory for one (built lazily on the writer thread, so a
            replica starts even when the database is down).
        max_pending: items held in memory at most; more are dropped with reason ``overflow``.
        batch: items written per transaction at most.
        on_queued: called per item written.
        on_failure: called per batch dropped, with the reason (``unavailable``, ``locked``, ``overflow``...).
    """

    def __init__(self, store: ReviewStore | Callable[[], ReviewStore], *, max_pending: int = 1000, batch: int = 64,
                 on_queued: QueuedHook | None = None, on_failure: FailureHook | None = None):
        self._factory = store if callable(store) and not isinstance(store, ReviewStore) else (lambda: store)
        self._store: ReviewStore | None = None
        self._q: queue.Queue[NewItem | None] = queue.Queue(maxsize=max_pending)
        self._batch = batch
        self._on_queued, self._on_failure = on_queued, on_failure
        self.written = 0
        self.dropped: dict[str, int] = {}
        self._idle = threading.Event()
        self._idle.set()
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="hitl-writer", daemon=True)
        self._thread.start()

    def submit(self, item: NewItem) -> bool:
        """Queue ``item`` for writing; False (and counted) when the in-memory queue is full. Never blocks."""
        self._idle.clear()
        try:
            self._q.put_nowait(item)
            return True
        except queue.Full:
            self._fail([item], "overflow")
            return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far was written or dropped; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._q.empty() and self._idle.wait(0.05) and self._q.empty():
                return True
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        self.flush(timeout)
        self._q.put(None)
        self._thread.join(timeout)

    def _fail(self, items: list[NewItem], reason: str) -> None:
        by_agent: dict[str, int] = {}
        for it in items:
            by_agent[it.agent] = by_agent.get(it.agent, 0) + 1
        for agent, n in by_agent.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n
            if self._on_failure is not None:
                try:
                    self._on_failure(agent, reason, n)
                except Exception:  # noqa: BLE001 - a metric must not stop the writer
                    pass

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            self._idle.clear()
            items = [first]
            while len(items) < self._batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                items.append(nxt)
            self._write(items)
            if self._q.empty():
                self._idle.set()

    def _write(self, items: list[NewItem]) -> None:
        try:
            if self._store is None:
                self._store = self._factory()
            self._store.enqueue_many(items)
        except Exception as exc:  # noqa: BLE001 - the database's trouble never reaches the agent
            reason = _reason(exc)
            self._fail(items, reason)
            now = time.monotonic()
            if now - self._last_warning > 30:
                self._last_warning = now
                log.warning("hitl: %d review item(s) not queued (%s): %s", len(items), reason,
                            str(exc).splitlines()[0][:300])
            return
        self.written += len(items)
        if self._on_queued is not None:
            for it in items:
                try:
                    self._on_queued(it)
                except Exception:  # noqa: BLE001
                    pass
