"""The BaseLLM Serve deployment: thin wiring around :class:`~deployments.base_llm.server.BaseLLMServer`.

Adapters are Serve multiplexed models: a caller picks one with
``handle.options(multiplexed_model_id="<agent>/<adapter>@<version>")`` or the HTTP header
``serve_multiplexed_model_id``; no id, ``""`` or ``"base"`` means the bare base. Serve routes a model
id to replicas that already hold it, and each replica's multiplexing LRU (size from the runtime config)
evicts and unloads the least recently used adapter.

Batching is the replica's own (:mod:`deployments.base_llm.batcher`), not ``@serve.batch``: Ray 2.60 splits a
``@serve.batch`` batch into one sub-batch per multiplexed model id, which would keep every adapter in
its own forward pass. The model id is read with ``serve.get_multiplexed_model_id()`` and resolved to an
adapter handle before the request enters the batcher, so the batcher never needs the request context.

``build_base_llm(settings)`` applies ``serve.deployment`` and ``serve.multiplexed`` in one place;
``app_builder(args)`` is the import path for ``serve run`` and ``serve_config.yaml``::

    serve run deployments.base_llm.deployment:app_builder store_root=/srv/model_store runtime.max_batch_size=16
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator

from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse

from deployments.base_llm.adapters import AdapterHandle
from deployments.errors import AdapterNotFoundError, InternalError, InvalidRequestError, ServeError, error_body
from deployments.base_llm.protocol import BASE_MODEL_IDS
from deployments.base_llm.replica_budget import ReplicaBudget
from deployments.base_llm.server import BaseLLMServer
from deployments.base_llm.settings import BaseLLMSettings, RuntimeConfig, resolve_device, unflatten_args

__all__ = ["BaseLLMDeployment", "build_base_llm", "app_builder"]

log = logging.getLogger(__name__)

GAUGE_REFRESH_S = 4.0

# Where @serve.multiplexed caches its LRU wrapper on the instance (ray/serve/api.py, `multiplexed`).
_MUX_ATTR = "__serve_multiplex_wrapper"


class BaseLLMDeployment:
    """The Serve-facing class; :func:`build_base_llm` subclasses it with a multiplexed ``get_model``.

    Args:
        settings: :class:`~deployments.base_llm.settings.BaseLLMSettings` as a JSON-ready dict.
    """

    def __init__(self, settings: dict[str, Any]):
        settings = BaseLLMSettings.model_validate(settings)
        planned = settings.planned.device if settings.planned else None
        self._settings = settings.model_copy(update={"device": resolve_device(settings.device, planned)})
        self._budget = ReplicaBudget(self._settings.device)  # before the base loads: caps CUDA allocations
        replica_id = serve.get_replica_context().replica_id.unique_id
        self._server = BaseLLMServer(self._settings, replica_id=replica_id)
        self._mux_limit = self._settings.runtime.max_num_models_per_replica
        loop = asyncio.get_running_loop()
        self._preload_task = loop.create_task(self._preload()) if self._settings.preload_adapters else None
        self._gauge_task = loop.create_task(self._export_gauges())
        self._graphs_task = loop.create_task(self._capture_decode_graphs())

    async def _export_gauges(self) -> None:
        # Ray 2.60 reports a gauge only if it was set since the previous report (every 10 s by default),
        # so an idle replica would drop out of Prometheus; refresh them well within that.
        while True:
            try:
                self._server.export_gauges()
                self._budget.sample()  # memory gauges
            except Exception:  # noqa: BLE001 - metrics must never take the replica down
                log.exception("exporting gauges failed")
            await asyncio.sleep(GAUGE_REFRESH_S)

    async def _preload(self) -> None:
        """Load the configured adapters through the multiplexer (so Serve routes their requests here)."""
        from modelstore.errors import NotFoundError

        wanted = self._settings.preload_adapters[: self._mux_limit]
        if len(wanted) < len(self._settings.preload_adapters):
            log.warning("preloading %d of %d adapters: max_num_models_per_replica is %d", len(wanted),
                        len(self._settings.preload_adapters), self._mux_limit)
        for ref in wanted:
            try:
                pinned = str(await asyncio.to_thread(self._server.store.pin, ref))
                await self.get_model(pinned)
            except Exception as exc:  # noqa: BLE001 - a replica serves without the adapter; say so and count it
                reason = "not_found" if isinstance(exc, (NotFoundError, AdapterNotFoundError)) else "load_error"
                log.warning("preloading adapter %s failed (%s): %s", ref, reason, exc)
                self._server.metrics.preload_failed(ref, reason)

    async def _capture_decode_graphs(self) -> None:
        """On a GPU, capture every decode-graph bucket once the preloaded adapters are in (so the LoRA buckets are
        captured too) and the loop is idle, rather than one bucket at a time on live requests' steps."""
        engine = self._server.engine
        if engine.stats()["decode_graphs"] != "cuda":
            return
        if self._preload_task is not None:
            await asyncio.wait([self._preload_task])
        started = time.monotonic()
        try:
            count = await asyncio.wrap_future(engine.capture_decode_graphs())
        except Exception:  # noqa: BLE001 - the loop then captures bucket by bucket (or decodes eagerly)
            log.exception("capturing the decode graphs at start failed")
            return
        log.info("captured %d decode graphs in %.1f s", count, time.monotonic() - started)

    async def get_model(self, model_id: str) -> AdapterHandle:
        """Load the adapter ``model_id`` names (the builder wraps this in ``serve.multiplexed``)."""
        return await self._server.acquire_adapter(model_id)

    async def _adapter_for_request(self) -> tuple[str, AdapterHandle | None]:
        model_id = serve.get_multiplexed_model_id()
        if model_id in BASE_MODEL_IDS:
            return model_id, None
        handle = await self.get_model(model_id)
        # No await between here and BaseLLMServer.generate counting the request as a user of the handle,
        # so no eviction can slip in between; a limit change is applied in a task that runs after that.
        wrapper = getattr(self, _MUX_ATTR, None)
        if wrapper is not None and wrapper.max_num_models_per_replica != self._mux_limit:
            asyncio.get_running_loop().create_task(self._apply_mux_limit())
        return model_id, handle

    async def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Handle entry point: ``handle.options(multiplexed_model_id=...).generate.remote(body)``.

        Returns:
            A :class:`~deployments.base_llm.protocol.GenerateResponse` as a dict.

        Raises:
            ServeError: a subclass with the HTTP status the ingress should answer with.
        """
        model_id, handle = await self._adapter_for_request()
        response = await self._server.generate(body, handle, model_id)
        return response.model_dump()

    async def generate_stream(self, body: dict[str, Any], heartbeat_s: float = 0.25) -> AsyncIterator[dict[str, Any]]:
        """Streamed entry point (``stream=True``): ``{"heartbeat": n}`` at once and every ``heartbeat_s``
        while the request waits or decodes, then ``{"result": GenerateResponse}``; errors raise as from
        :meth:`generate`. Callers use :func:`deployments.base_llm.client.pool_call`, which takes a silent
        stream for a dead replica within seconds instead of waiting for Ray to report the death."""
        beats = 0
        yield {"heartbeat": beats}
        task = asyncio.ensure_future(self.generate(body))  # copies the context: the multiplexed model id
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=heartbeat_s)
                if not task.done():
                    beats += 1
                    yield {"heartbeat": beats}
            yield {"result": task.result()}
        finally:
            if not task.done():  # the caller cancelled: the request leaves the batcher
                task.cancel()

    async def __call__(self, request: Request) -> JSONResponse:
        """Minimal HTTP path: POST a GenerateRequest JSON body, adapter in ``serve_multiplexed_model_id``."""
        try:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InvalidRequestError(f"request body is not valid JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise InvalidRequestError(f"request body must be a JSON object, got {type(body).__name__}")
            return JSONResponse(await self.generate(body))
        except ServeError as exc:
            return JSONResponse(error_body(exc), status_code=exc.status_code)
        except Exception as exc:  # a bug of ours: still a JSON body, never a bare 500
            log.exception("unexpected error serving an HTTP request")
            error = InternalError(f"{type(exc).__name__}: {exc}")
            return JSONResponse(error_body(error), status_code=error.status_code)

    async def stats(self) -> dict[str, Any]:
        """Replica statistics plus the multiplexer's view (cached model ids, LRU order, limit)."""
        wrapper = getattr(self, _MUX_ATTR, None)
        return {
            **self._server.stats(),
            "multiplexed_model_ids": list(wrapper.models) if wrapper is not None else [],
            "max_num_models_per_replica": self._mux_limit,
            "memory": self._budget.sample(),
            "placement": _where(),
        }

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve custom autoscaling metrics: measured memory for cluster.autoscaling.MemoryCappedPolicy."""
        return self._budget.autoscaling_stats()

    async def check_health(self) -> None:
        """Serve's periodic health check; raising marks the replica unhealthy and replaces it."""
        self._server.check_health()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a :class:`~deployments.base_llm.settings.RuntimeConfig` (Serve ``user_config``) without a restart."""
        runtime = self._server.reconfigure(RuntimeConfig.model_validate(user_config))
        self._mux_limit = runtime.max_num_models_per_replica
        await self._apply_mux_limit()

    async def _apply_mux_limit(self) -> None:
        # Ray exposes no API to resize the multiplexing LRU, so set the limit on its wrapper and evict
        # down to it under the wrapper's own lock (the same steps its load path takes when full).
        wrapper = getattr(self, _MUX_ATTR, None)
        if wrapper is None:  # created by the first get_model call, which then applies the limit
            return
        wrapper.max_num_models_per_replica = self._mux_limit
        async with wrapper._model_cache_lock:
            while len(wrapper.models) > self._mux_limit:
                await wrapper.unload_model_lru()

    async def __del__(self) -> None:
        """Graceful shutdown: Serve awaits this, then its multiplexer unloads every cached adapter."""
        await self._server.shutdown()


def _where() -> dict[str, Any]:
    """Where Ray put this replica: its node and the (possibly fractional, possibly logical) GPUs it holds."""
    import ray

    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "assigned": {k: v for k, v in ctx.get_assigned_resources().items() if k in ("CPU", "GPU", "memory")}}


def _multiplexed_class(max_num_models_per_replica: int) -> type:
    """Subclass :class:`BaseLLMDeployment` with ``get_model`` wrapped by ``serve.multiplexed``.

    The decorator takes its limit when applied, so the class is made per build; Ray finds the
    multiplexed method on the class statically and routes by model id.
    """

    async def get_model(self, model_id: str) -> AdapterHandle:
        return await self._server.acquire_adapter(model_id)

    get_model.__doc__ = BaseLLMDeployment.get_model.__doc__
    multiplexed = serve.multiplexed(max_num_models_per_replica=max_num_models_per_replica)(get_model)
    return type("BaseLLM", (BaseLLMDeployment,), {"get_model": multiplexed, "__module__": __name__})


def build_base_llm(settings: BaseLLMSettings | dict[str, Any]) -> Application:
    """Build the BaseLLM application from its settings (the one place Serve options are set).

    Args:
        settings: :class:`~deployments.base_llm.settings.BaseLLMSettings` or a dict of its fields.

    Returns:
        The bound application, for ``serve.run`` or as a node of a larger application.
    """
    if not isinstance(settings, BaseLLMSettings):
        settings = BaseLLMSettings.model_validate(settings)
    cls = _multiplexed_class(settings.runtime.max_num_models_per_replica)
    replicas: dict[str, Any] = ({"autoscaling_config": settings.autoscaling_config}
                                if settings.autoscaling_config else {"num_replicas": settings.num_replicas})
    deployment = serve.deployment(
        cls,
        name=settings.deployment_name,
        **replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options=settings.ray_actor_options,
        user_config=settings.runtime.model_dump(),
        graceful_shutdown_timeout_s=settings.graceful_shutdown_timeout_s,
        health_check_period_s=settings.health_check_period_s,
        health_check_timeout_s=settings.health_check_timeout_s,
    )
    return deployment.bind(settings.model_dump(mode="json"))


def app_builder(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run`` / ``serve_config.yaml``: flat or dotted args to settings."""
    return build_base_llm(BaseLLMSettings.model_validate(unflatten_args(dict(args))))
