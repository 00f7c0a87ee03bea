"""BaseLLMServer: one base model, its adapters and the replica's mixed-adapter batcher. No Serve wiring.

``deployments/base_llm.py`` wraps this class in a Serve deployment; tests and benchmarks can use it
directly inside any asyncio loop. A request arrives with the adapter handle its multiplexed model id
resolved to (or None for the bare base), is counted as using that adapter, and joins the engine's running
batch at its next decode step (continuous scheduling, the default), sharing every forward pass with requests
for other adapters; with static scheduling it waits in the replica's batcher for a batch instead.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from deployments.base_llm.adapters import AdapterHandle, AdapterPool
from deployments.base_llm.batcher import BatcherClosed, BatchRecord, MixedBatcher
from engine import EngineError, GenerationRequest, GenerationResult, InferenceEngine, SamplingParams
from deployments.errors import (InvalidRequestError, OverloadedError, RequestTooLargeError, is_oom, to_serve_error,
                                validation_summary)
from deployments.limits import LIMITS, check_image_count, check_json_schema, check_prompt
from deployments.vision.images import admit_image_async
from deployments.base_llm.loaded import LoadedReport
from deployments.base_llm.metrics import BASE_TAG, LLMMetrics
from deployments.base_llm.protocol import GenerateRequest, GenerateResponse
from deployments.base_llm.settings import BaseLLMSettings, RuntimeConfig, check_runtime_fits, resolve_device

__all__ = ["BaseLLMServer"]

log = logging.getLogger(__name__)


class BaseLLMServer:
    """Serve one base model and its LoRA adapters with mixed-adapter batching.

    Args:
        settings: the deployment settings (store, base, engine limits, initial runtime config).
        replica_id: reported in responses and stats.
        store: a ModelStore to use instead of opening ``settings.store_root``.
        loaded: an already loaded base (``modelstore.loading.LoadedBase``) to use instead of loading one.
    """

    def __init__(self, settings: BaseLLMSettings, *, replica_id: str = "local", store: Any = None,
                 loaded: Any = None):
        from modelstore import ModelStore
        from modelstore.loading import load_base

        planned = settings.planned
        settings = settings.model_copy(update={"device": resolve_device(settings.device, planned and planned.device)})
        self.settings = settings
        self.replica_id = replica_id
        self.store = store if store is not None else ModelStore(settings.store_root)
        if loaded is None:
            loaded = load_base(self.store, settings.base_ref, settings.variant, device=settings.device)
        self.base_ref = loaded.ref
        self.variant = loaded.variant
        if loaded.fallback_reason:
            log.warning("base variant fallback: %s", loaded.fallback_reason)
        self.loaded = LoadedReport.of(loaded.model, self.variant, settings, planned)
        (log.info if self.loaded.matches_plan else log.warning)("%s", self.loaded.describe())
        engine_config = settings.engine
        self.vision = getattr(loaded.manifest, "vision", None) if getattr(loaded, "processor", None) else None
        if self.vision is not None:
            # Image tokens come on top of the text a prompt may hold (the planner sizes the KV cache alike).
            engine_config = engine_config.model_copy(update={"max_prompt_tokens": engine_config.max_prompt_tokens
                                                             + self.vision.tokens_per_image
                                                             * self.vision.max_images_per_request})
        if engine_config.kv_cache_bytes is None and engine_config.kv_slots is None:
            # No planned KV budget: as many slots as the runtime batch size (a larger reconfigure is refused).
            engine_config = engine_config.model_copy(update={"kv_slots": min(settings.runtime.max_batch_size,
                                                                             engine_config.max_batch_size)})
        # The continuous loop's steps, recorded in its thread and exported with the gauges (Ray metrics are
        # not observed from the loop: a step must not wait on them).
        self._steps: collections.deque[tuple[int, int, float]] = collections.deque(maxlen=4096)
        self.engine = InferenceEngine(loaded.model, loaded.tokenizer, engine_config,
                                      processor=getattr(loaded, "processor", None), on_step=self._record_step)
        self.metrics = LLMMetrics()
        self.adapters = AdapterPool(self.store, self.engine, self.base_ref, self.metrics,
                                    verify=settings.verify_adapters, variant=self.variant)
        self.in_flight = 0
        self.metrics.declare(self.variant)
        self.metrics.set_loaded(self.loaded.model_dump())
        self._export_free_slots()
        self.runtime = settings.runtime
        self.batcher: MixedBatcher[GenerationRequest, GenerationResult] = MixedBatcher(
            self._run_batch,
            max_batch_size=self.runtime.max_batch_size,
            batch_wait_timeout_s=self.runtime.batch_wait_timeout_s,
            key=lambda req: req.adapter,
            on_batch=self._on_batch,
        )
        self.started_at = time.time()

    # -- adapters ---------------------------------------------------------------------------------

    async def acquire_adapter(self, model_id: str) -> AdapterHandle:
        """Resolve and load the adapter a multiplexed model id names (what ``get_model`` returns)."""
        return await self.adapters.acquire(model_id)

    # -- generation -------------------------------------------------------------------------------

    async def generate(self, body: GenerateRequest | dict, adapter: AdapterHandle | None = None,
                       model_id: str = "") -> GenerateResponse:
        """Generate one completion, batched with whatever else the replica is serving.

        Args:
            body: the request body (validated here when given as a dict).
            adapter: the handle of the request's adapter, None for the bare base.
            model_id: the multiplexed model id as the caller sent it, echoed back.

        Raises:
            ServeError: a subclass naming what was wrong (400/404/413/500/503).
        """
        started = time.monotonic()
        tag = adapter.name if adapter is not None and adapter.name else BASE_TAG
        self._track(+1)
        try:
            req = body if isinstance(body, GenerateRequest) else GenerateRequest.model_validate(body)
            images = await self._admit_images(req)
            request = self._to_engine_request(req, adapter, images)
            self.adapters.begin_use(adapter)
            try:
                if request.json_schema is not None:
                    # Compiled on the engine's compile pool before the request joins a batch: a slow schema
                    # delays only its own request, never the batch it would have joined.
                    request.grammar = await self.engine.precompile(request.json_schema)
                self.metrics.set_queue_depth(self.queue_depth + 1)
                if self.runtime.scheduling == "continuous":
                    # Joins the engine's running batch at its next step; a caller that goes away cancels the row.
                    result = await self.engine.generate_async(request)
                else:
                    result = await self.batcher.submit(request)
            finally:
                await self.adapters.end_use(adapter)
        except Exception as exc:
            if is_oom(exc) and self.runtime.scheduling == "continuous":
                self._after_oom(1)  # the step that ran out failed its rows (503, retryable); count each
            error = self._serve_error(exc)
            self.metrics.request_done(tag, time.monotonic() - started, error.error_type)
            if isinstance(error, OverloadedError):
                self.metrics.pool_rejected(self.variant, "oom" if is_oom(exc) else error.error_type)
            if error is exc:
                raise
            raise error from exc
        finally:
            self._track(-1)
        self.metrics.request_done(tag, time.monotonic() - started, "ok", result.prompt_tokens,
                                  result.completion_tokens)
        return GenerateResponse(
            text=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            model_id=model_id,
            adapter=result.adapter,
            base=str(self.base_ref),
            replica_id=self.replica_id,
            request_id=request.request_id,
        )

    def export_gauges(self) -> None:
        """Set every gauge again: Ray exports a gauge only when it was set since its last report."""
        self.metrics.set_resident(len(self.adapters.resident()))
        self.metrics.set_queue_depth(self.queue_depth)
        while self._steps:
            self.metrics.batch_done(*self._steps.popleft())
        self.metrics.set_engine(self.engine.stats())
        self.metrics.set_loaded(self.loaded.model_dump())
        self._export_free_slots()

    def _record_step(self, rows: int, distinct_adapters: int, seconds: float) -> None:
        self._steps.append((rows, distinct_adapters, seconds))

    @property
    def queue_depth(self) -> int:
        """Requests waiting to run: in the static batcher's queue and for a slot of the continuous loop."""
        return self.batcher.queued + self.engine.waiting_rows  # per request: not engine.stats(), which walks adapters

    def _track(self, delta: int) -> None:
        self.in_flight += delta
        self._export_free_slots()

    def _export_free_slots(self) -> None:
        self.metrics.set_free_slots(self.variant, self.settings.max_ongoing_requests - self.in_flight)

    async def _admit_images(self, req: GenerateRequest) -> list[Any]:
        """The request's images decoded (off the event loop) under the admission limits; 4xx when one is bad."""
        if not req.images:
            return []
        check_image_count(len(req.images))  # 413 before any image is looked at
        if self.vision is None:
            raise InvalidRequestError(f"{self.base_ref} is a text-only base and takes no images")
        if len(req.images) > self.vision.max_images_per_request:
            raise RequestTooLargeError(f"the request has {len(req.images)} images; {self.base_ref} takes at most "
                                       f"{self.vision.max_images_per_request} per request (max_images_per_request "
                                       f"of its manifest)")
        admitted = [await admit_image_async(source, LIMITS, field=f"images[{i}]") for i, source in enumerate(req.images)]
        return [a.image for a in admitted]

    def _to_engine_request(self, req: GenerateRequest, adapter: AdapterHandle | None,
                           images: list[Any] = ()) -> GenerationRequest:
        # Admission limits (deployments/limits.py) before any tokenizing or compiling.
        check_prompt(req.prompt, [m.content for m in req.messages or ()])
        if req.json_schema is not None:
            check_json_schema(req.json_schema)
        limit = self.engine.config.max_new_tokens_limit
        if req.max_new_tokens > limit:
            raise RequestTooLargeError(f"max_new_tokens ({req.max_new_tokens}) must be <= {limit}")
        prompt = req.prompt
        if prompt is None:
            messages = [m.model_dump() for m in req.messages]
            if images:  # the vision template takes content parts: the images open the first user turn
                first = next((m for m in messages if m["role"] == "user"), None)
                if first is None:
                    raise InvalidRequestError("images need a user message to go with")
                first["content"] = [{"type": "image"}] * len(images) + [{"type": "text", "text": first["content"]}]
                prompt = self.engine.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            else:
                prompt = self.engine.tokenizer.apply_chat_template(messages, tokenize=False,
                                                                   add_generation_prompt=True)
        params = SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                                max_new_tokens=req.max_new_tokens,
                                stop=req.stop, seed=req.seed, ignore_eos=req.ignore_eos)
        return GenerationRequest(prompt=prompt, adapter=adapter.name if adapter is not None else None,
                                 params=params, json_schema=req.json_schema, request_id=req.request_id,
                                 images=list(images))

    @staticmethod
    def _serve_error(exc: Exception):
        if isinstance(exc, ValidationError):
            return InvalidRequestError(validation_summary(exc.errors()))
        if isinstance(exc, BatcherClosed):
            return OverloadedError(str(exc))
        return to_serve_error(exc)

    def _run_batch(self, items: list[GenerationRequest]) -> list[GenerationResult | Exception]:
        """Runs in the batcher's worker thread: one engine call for the whole mixed batch."""
        try:
            return self.engine.generate(items)
        except Exception as exc:
            if is_oom(exc):
                self._after_oom(len(items))
            elif not isinstance(exc, EngineError):
                raise
            if len(items) == 1:
                return [exc]
            # The engine checks every row before any compute and fails the whole call for one bad row;
            # run the rows alone so only the offending caller gets the error.
            log.info("batch of %d failed (%s); retrying its rows one by one", len(items), exc)
            results: list[GenerationResult | Exception] = []
            for item in items:
                try:
                    results.append(self.engine.generate([item])[0])
                except Exception as row_exc:
                    if is_oom(row_exc):
                        self._after_oom(1)
                    results.append(row_exc)
            return results

    def _after_oom(self, rows: int) -> None:
        """Count an out-of-memory error and give the cached blocks back before the rows are retried alone."""
        log.warning("out of memory generating a batch of %d on %s (%s)", rows, self.variant, self.settings.device)
        self.metrics.oom(self.variant, "generate")
        if self.settings.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _on_batch(self, record: BatchRecord) -> None:
        self.metrics.batch_done(record.size, record.distinct_keys, record.seconds)
        self.metrics.set_queue_depth(self.batcher.queued)

    # -- lifecycle --------------------------------------------------------------------------------

    def reconfigure(self, runtime: RuntimeConfig | dict) -> RuntimeConfig:
        """Apply a new runtime config (batch size, wait time) to the running batcher.

        Raises:
            ValueError: the config is invalid or exceeds an engine limit (the old one stays in force).
        """
        runtime = runtime if isinstance(runtime, RuntimeConfig) else RuntimeConfig.model_validate(runtime)
        check_runtime_fits(runtime, self.engine.config)
        self.engine.set_max_running(runtime.max_batch_size)  # first: it refuses more rows than the KV slots
        self.batcher.configure(max_batch_size=runtime.max_batch_size,
                               batch_wait_timeout_s=runtime.batch_wait_timeout_s)
        self.runtime = runtime
        log.info("runtime config applied: %s", runtime.model_dump())
        return runtime

    def check_health(self) -> None:
        """Raise when the replica cannot serve (its batching loop or the engine's continuous loop died)."""
        if not self.batcher.healthy:
            raise RuntimeError(f"replica {self.replica_id}: the batching loop has stopped")
        if not self.engine.healthy:
            raise RuntimeError(f"replica {self.replica_id}: the engine's continuous batching loop has stopped")

    async def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop accepting requests and finish the queued ones (up to ``timeout_s``)."""
        timeout_s = self.settings.graceful_shutdown_timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        await self.batcher.close(timeout_s)
        # The continuous loop's rows get what is left of the grace period, then fail with a 503.
        await asyncio.to_thread(self.engine.close, max(0.0, timeout_s - (time.monotonic() - started)))

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters: adapter loads and evictions, residency, batch composition, engine stats."""
        return {
            "replica_id": self.replica_id,
            "base": str(self.base_ref),
            "variant": self.variant,
            "device": self.settings.device,
            "loaded": self.loaded.model_dump(),
            "runtime": self.runtime.model_dump(),
            "adapter_loads": dict(self.adapters.loads),
            "engine_adapter_loads": self.adapters.engine_loads,
            "adapter_evictions": dict(self.adapters.evictions),
            "resident_adapters": self.adapters.resident(),
            "queue_depth": self.queue_depth,
            "batches": asdict(self.batcher.stats),
            "metrics": self.metrics.snapshot(),
            "engine": self.engine.stats(),
        }
