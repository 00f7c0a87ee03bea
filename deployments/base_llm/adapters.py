"""Adapters as Serve multiplexed "models": a handle per model id, a pool that loads and unloads them.

Serve's multiplexer (``ray/serve/multiplex.py``, ``_ModelMultiplexWrapper``) caches whatever the
``@serve.multiplexed`` method returns per model id in an LRU ``OrderedDict``. On eviction (and on
replica shutdown) it pops the least recently used entry and, if the object has a ``__del__``
attribute, awaits it when it is a coroutine function (else runs it in a thread pool), then replaces it
with a no-op. :class:`AdapterHandle` is that cached object. Its ``__del__`` is bound per instance to
the async :meth:`AdapterHandle.release`, never defined on the class, so only the multiplexer triggers
it, on the event loop; the garbage collector never sees a class-level finaliser to call at a random
time and thread.

The engine (:class:`engine.AdapterRegistry`) owns every adapter's residency and reference count; the pool
only resolves model ids and takes and drops references there. Each live handle holds one (several model ids
may pin to one version: ``x/y``, ``x/y@current`` and ``x/y@v3``), and so does each request from the moment it
is counted until it has finished (queued in the batcher included), besides the running row's own. The engine
unloads an adapter when its last reference goes, so an eviction never pulls an adapter from under a request
already waiting in the replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from modelstore.refs import CURRENT, AdapterRef, BaseRef, ModelRef, parse_ref

from engine import AdapterNotLoaded, TooManyAdapters
from deployments.errors import (
    AdapterLoadFailedError,
    AdapterNotFoundError,
    InvalidRequestError,
    OverloadedError,
    is_oom,
    to_serve_error,
)
from deployments.base_llm.metrics import INVALID_TAG, LLMMetrics

__all__ = ["AdapterHandle", "AdapterPool"]

log = logging.getLogger(__name__)


class AdapterHandle:
    """One multiplexed model id, resolved: the pinned ref and the engine adapter name.

    Attributes:
        model_id: the id exactly as the caller sent it.
        ref: the pinned ref (``@current`` replaced by the version it pointed at when loaded).
        name: the engine adapter name (the pinned ref as a string), or None for the bare base.
    """

    def __init__(self, model_id: str, ref: ModelRef, pool: "AdapterPool | None"):
        self.model_id = model_id
        self.ref = ref
        self.name: str | None = str(ref) if isinstance(ref, AdapterRef) else None
        self.released = False
        self._pool = pool
        # The multiplexer's eviction hook; see the module docstring for why it is per instance.
        self.__del__ = self.release

    async def release(self) -> None:
        """Drop this handle's reference to its adapter (idempotent); the engine unloads it with the last one."""
        if self.released:
            return
        self.released = True
        if self._pool is not None and self.name is not None:
            await self._pool._drop_holder(self)

    def __repr__(self) -> str:
        return f"AdapterHandle({self.model_id!r} -> {self.name or 'base'}, released={self.released})"


class AdapterPool:
    """Resolves model ids against the store and loads their adapters into the engine, holding a reference there
    for every handle and every request (the engine owns the counts and unloads at the last reference).

    Args:
        store: the :class:`~modelstore.ModelStore`.
        engine: the :class:`~engine.InferenceEngine` holding the base.
        base_ref: the pinned ref of the loaded base; adapters validated against another base are refused.
        metrics: where loads, failures and evictions are counted.
        verify: recompute an adapter's checksums before loading it.
        capacity_timeout_s: how long a load waits for an unload to free engine capacity.
    """

    def __init__(self, store: Any, engine: Any, base_ref: BaseRef, metrics: LLMMetrics, *, verify: bool = True,
                 capacity_timeout_s: float = 60.0, variant: str = "unknown"):
        self._store = store
        self._engine = engine
        self._base_ref = base_ref
        self._metrics = metrics
        self._verify = verify
        self._capacity_timeout_s = capacity_timeout_s
        self._variant = variant
        self._served: dict[str, str] = {}  # adapter namespace -> the version last loaded (hot-swap detection)
        self._loading: dict[str, asyncio.Future] = {}  # adapter name -> its load in progress (shared)
        self.loads: Counter[str] = Counter()  # successful acquires per model id (what Serve calls a load)
        self.evictions: Counter[str] = Counter()

    @property
    def engine_loads(self) -> dict[str, int]:
        """Engine loads per adapter name (a reload after an unload counts again)."""
        return self._engine.adapter_load_counts()

    def resident(self) -> list[str]:
        """Adapters resident in the engine (each held by a handle or an in-flight request), sorted."""
        return self._engine.loaded_adapters()

    async def acquire(self, model_id: str) -> AdapterHandle:
        """Resolve ``model_id``, load its adapter if needed and return a handle holding it.

        Raises:
            InvalidRequestError: the id is not a valid ref.
            AdapterNotFoundError: the store has no such adapter/version, or the id names another base.
            AdapterLoadFailedError: verification or the engine load failed.
            OverloadedError: no engine capacity freed up within ``capacity_timeout_s``.
        """
        started = time.monotonic()
        tag = INVALID_TAG
        ref: ModelRef | None = None
        try:
            ref = parse_ref(model_id)
            tag = str(ref)
            handle = await self._acquire(model_id, ref)
        except Exception as exc:
            error = self._public_error(exc)
            reason = {InvalidRequestError: "invalid_ref", AdapterNotFoundError: "not_found"}.get(
                type(error), "load_error"
            )
            self._metrics.adapter_load_failed(tag, reason)
            if is_oom(exc):
                self._metrics.oom(self._variant, "adapter_load")
            if isinstance(ref, AdapterRef) and ref.version != CURRENT:
                previous = self._served.get(ref.namespace)
                if previous is not None and previous != ref.version:
                    self._metrics.hotswap_failed(ref.namespace, ref.version, reason)
            if error is exc:
                raise
            raise error from exc
        self.loads[model_id] += 1
        if handle.name is not None:
            self._metrics.adapter_loaded(handle.name, time.monotonic() - started)
            self._metrics.set_resident(len(self.resident()))
        return handle

    def _public_error(self, exc: Exception) -> Exception:
        # Callers see store errors verbatim, minus where the store lives on this machine.
        error = to_serve_error(exc)
        root = str(getattr(self._store, "root", "")) or None
        message = str(error)
        if root and root in message:
            message = message.replace(f"the store at {root} ", "the store ").replace(root, "<store>")
            return type(error)(message)
        return error

    async def _acquire(self, model_id: str, ref: ModelRef) -> AdapterHandle:
        resolved = await asyncio.to_thread(self._store.resolve, ref)
        pinned = resolved.ref
        if isinstance(pinned, BaseRef):
            if pinned != self._base_ref:
                raise AdapterNotFoundError(
                    f"model id {model_id!r} resolves to {pinned}; this deployment serves {self._base_ref}"
                )
            return AdapterHandle(model_id, pinned, None)
        name = str(pinned)
        try:  # resident already: take the handle's reference on the loop, no thread, no model lock
            self._engine.hold_adapter(name)
            return AdapterHandle(model_id, pinned, self)
        except AdapterNotLoaded:
            pass
        await self._check(name, pinned, resolved)
        await self._load_held(name, resolved.path)
        previous = self._served.get(pinned.namespace)
        if previous is not None and previous != pinned.version:
            self._metrics.adapter_swapped(pinned.namespace, pinned.version)
        self._served[pinned.namespace] = pinned.version
        return AdapterHandle(model_id, pinned, self)

    async def _check(self, name: str, pinned: AdapterRef, resolved: Any) -> None:
        adapter_info = resolved.manifest.adapter
        if adapter_info is not None and adapter_info.base_ref != str(self._base_ref):
            raise AdapterLoadFailedError(
                f"adapter {name} was validated against {adapter_info.base_ref}; this deployment serves "
                f"{self._base_ref}"
            )
        report = await asyncio.to_thread(self._store.verify, pinned, dry_run=not self._verify)
        if not report.ok:
            detail = "; ".join(f"{path}: {why}" for path, why in sorted(report.bad_files.items()))
            raise AdapterLoadFailedError(f"adapter {name} failed verification: {detail}")

    async def _load_held(self, name: str, path: Any) -> None:
        """Load ``name`` and take one engine reference for the caller. Concurrent callers for one adapter share one
        load (one task per adapter, awaited under ``asyncio.shield``, as Ray's LoRA loader does): its creator
        inherits the reference the load takes, the others take their own once it is done; every waiter sees the
        same error, and a failed load is not remembered."""
        while True:
            loading = self._loading.get(name)
            if loading is None:
                break
            await asyncio.shield(loading)
            try:
                self._engine.hold_adapter(name)
                return
            except AdapterNotLoaded:  # unloaded again in between (its only reference went): load it anew
                continue
        loading = asyncio.ensure_future(self._load_with_room(name, path))
        self._loading[name] = loading
        loading.add_done_callback(lambda t: self._loading.pop(name, None) if self._loading.get(name) is t else None)
        try:
            await asyncio.shield(loading)
        except asyncio.CancelledError:  # the caller went away: the reference the load takes is nobody's
            loading.add_done_callback(lambda t: t.cancelled() or t.exception() is not None
                                      or asyncio.ensure_future(self._release(name)))
            raise

    async def _load_with_room(self, name: str, path: Any) -> None:
        # Load and take a reference in one engine call, waiting for room while every resident adapter is
        # referenced (an unload frees it when the last request or handle of one lets go).
        deadline = time.monotonic() + self._capacity_timeout_s
        while True:
            try:
                await asyncio.to_thread(self._engine.load_adapter, name, path, hold=True)
                return
            except TooManyAdapters:
                left = deadline - time.monotonic()
                if left <= 0 or not await asyncio.to_thread(self._engine.wait_for_adapter_room, left):
                    limit = self._engine.config.max_loaded_adapters
                    raise OverloadedError(
                        f"cannot load adapter {name}: {len(self.resident())} adapters resident and in use, "
                        f"engine max_loaded_adapters is {limit}"
                    ) from None

    def begin_use(self, handle: AdapterHandle | None) -> None:
        """Take the engine reference of a request that will run with ``handle``'s adapter (before it queues)."""
        if handle is None or handle.name is None:
            return
        try:
            self._engine.hold_adapter(handle.name)
        except AdapterNotLoaded:
            raise OverloadedError(f"adapter {handle.name} was unloaded before the request could use it; retry") from None

    async def end_use(self, handle: AdapterHandle | None) -> None:
        """Drop :meth:`begin_use`'s reference; the last one unloads the adapter (in a worker thread)."""
        if handle is None or handle.name is None:
            return
        await self._release(handle.name)

    async def _drop_holder(self, handle: AdapterHandle) -> None:
        self.evictions[handle.model_id] += 1
        self._metrics.adapter_evicted(handle.name)
        await self._release(handle.name)

    async def _release(self, name: str) -> None:
        try:
            await asyncio.to_thread(self._engine.release_adapter, name)
        except Exception as exc:  # the reference is gone either way; say why the unload failed
            log.warning("releasing adapter %s failed: %s", name, exc)
        self._metrics.set_resident(len(self.resident()))
