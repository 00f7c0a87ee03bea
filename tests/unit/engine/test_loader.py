"""AdapterLoader: concurrent ensure_loaded calls share one load; failures reach every waiter, then retry."""

from __future__ import annotations

import asyncio

import pytest

from engine import AdapterLoader, AdapterLoadError
from tests.unit.engine.helpers import ADAPTER_NAMES

A = ADAPTER_NAMES[0]


def test_concurrent_ensure_loaded_loads_once(engine, adapter_dirs):
    loader = AdapterLoader(engine)

    async def main():
        await asyncio.gather(*(loader.ensure_loaded(A, adapter_dirs[A]) for _ in range(8)))
        await loader.ensure_loaded(A, adapter_dirs[A])  # already loaded: no new load

    asyncio.run(main())
    assert loader.load_counts[A] == 1
    assert engine.stats()["adapter_loads"] == 1
    assert engine.is_loaded(A) and loader.in_flight() == []


def test_failure_reaches_every_waiter_and_is_not_cached(engine, adapter_dirs, tmp_path):
    loader = AdapterLoader(engine)

    async def main():
        outcomes = await asyncio.gather(
            *(loader.ensure_loaded(A, tmp_path / "missing") for _ in range(4)), return_exceptions=True
        )
        assert all(isinstance(o, AdapterLoadError) for o in outcomes), outcomes
        assert loader.load_counts[A] == 1
        await loader.ensure_loaded(A, adapter_dirs[A])

    asyncio.run(main())
    assert loader.load_counts[A] == 2
    assert engine.is_loaded(A)


def test_cancelled_waiter_does_not_cancel_the_shared_load(engine, adapter_dirs):
    loader = AdapterLoader(engine)

    async def main():
        first = asyncio.create_task(loader.ensure_loaded(A, adapter_dirs[A]))
        second = asyncio.create_task(loader.ensure_loaded(A, adapter_dirs[A]))
        await asyncio.sleep(0)  # both are now waiting on the one load
        first.cancel()
        await second
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(main())
    assert loader.load_counts[A] == 1 and engine.is_loaded(A)
