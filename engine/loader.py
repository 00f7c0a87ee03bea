"""Async adapter loading where concurrent requests for one adapter share a single load.

Serve's multiplexing may route many requests for a cold adapter to a replica at once; each awaits
``ensure_loaded``. The first call starts one ``asyncio.Task`` for the name and every caller awaits it
under ``asyncio.shield``, so a caller that is cancelled (client went away) does not cancel the load the
others wait for. The load itself runs in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["AdapterLoader"]


class AdapterLoader:
    """Deduplicates concurrent adapter loads into one engine.

    Args:
        engine: anything with ``load_adapter(name, path)`` and ``is_loaded(name)``
            (an :class:`~engine.InferenceEngine`).

    Attributes:
        load_counts: loads started per adapter name, failed ones included; tests prove de-duplication with it.
    """

    def __init__(self, engine: Any):
        self._engine = engine
        self._tasks: dict[str, asyncio.Task] = {}
        self.load_counts: Counter[str] = Counter()

    async def ensure_loaded(self, name: str, path: str | Path) -> None:
        """Return once ``name`` is loaded, loading it from ``path`` unless a load is already running.

        Raises:
            AdapterLoadError, TooManyAdapters: the shared load failed; every waiter sees the same error,
                and the next call starts a fresh load (failures are not cached).
        """
        task = self._tasks.get(name)
        if task is None:
            if self._engine.is_loaded(name):
                return
            task = asyncio.get_running_loop().create_task(self._load(name, Path(path)))
            self._tasks[name] = task
            task.add_done_callback(lambda t: self._forget(name, t))
        await asyncio.shield(task)

    async def _load(self, name: str, path: Path) -> None:
        self.load_counts[name] += 1
        await asyncio.to_thread(self._engine.load_adapter, name, path)

    def _forget(self, name: str, task: asyncio.Task) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]
        if not task.cancelled():
            task.exception()  # mark retrieved: if every waiter was cancelled, nobody else would

    def in_flight(self) -> list[str]:
        """Names whose load is running now."""
        return sorted(self._tasks)
