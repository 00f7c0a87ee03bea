"""The inference engine: one base model, resident LoRA adapters, one batched decode loop per call.

Every row of a ``generate`` call may name a different adapter (or none) and has its own sampling
parameters, stop strings and optional JSON schema; all rows share one forward pass per step, each row
adding its own adapter's LoRA delta (``lora_batch.py``, or PEFT's ``adapter_names`` with lora_kernel="peft"). The loop is our own rather than ``model.generate`` because HF's
generate applies one sampling config and one stopping rule to the whole batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import torch
import xgrammar as xgr

from .adapters import BASE_SLOT, AdapterRegistry
from .config import EngineConfig
from .constraints import GrammarCache, GrammarJob
from .cpu_threads import release_openmp_pool
from .decode import DecodeRow, run_decode
from .errors import AdapterNotLoaded, BatchTooLarge, InvalidRequest, RequestTooLarge
from .graphs import DecodeGraphs
from .kv_slots import SlotKVCache, kv_bytes_per_token
from .lora_kernels import bgmv_unavailable
from .params import GenerationRequest, GenerationResult
from .prefix_cache import PrefixCache
from .scheduler import ContinuousScheduler, RowHandle

__all__ = ["InferenceEngine"]


class InferenceEngine:
    """Batched generation over one base model and its resident LoRA adapters. Thread-safe.

    Args:
        model: a loaded Hugging Face causal LM (fp32/fp16/bf16 or bitsandbytes int8/nf4); never copied.
        tokenizer: its tokenizer.
        config: limits; defaults to ``EngineConfig()``.
        device: where input tensors go; defaults to the device of the model's first parameter.
        processor: a vision-language base's processor (image processor + tokenizer); requests may then carry
            images, one per image token of the prompt, which it expands into the image's tokens.
        on_step: called by the continuous loop after each forward with ``(rows, distinct adapters, seconds)``
            (metrics; in the loop's thread, so quick and never raising).
    """

    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig | None = None, *, device: str | None = None,
                 processor: Any = None, on_step: Callable[[int, int, float], None] | None = None):
        self.config = config or EngineConfig()
        self.tokenizer = tokenizer
        self.processor = processor
        self._image_token = getattr(processor, "image_token", None) if processor is not None else None
        self._image_token_id = tokenizer.convert_tokens_to_ids(self._image_token) if self._image_token else None
        self._pixel_dtype = next((p.dtype for n, p in model.named_parameters() if "vision_tower" in n), None)
        self.device = torch.device(device) if device else next(model.parameters()).device
        _check_decode_kernel(self.config, self.device)
        model.eval()
        self._model_config = model.config
        # A vision-language model keeps its language model's limits in text_config.
        max_pos = getattr(getattr(model.config, "text_config", model.config), "max_position_embeddings", None)
        needed = self.config.max_prompt_tokens + self.config.max_new_tokens_limit
        if max_pos is not None and needed > max_pos:
            raise ValueError(
                f"max_prompt_tokens + max_new_tokens_limit ({needed}) must be <= the model's "
                f"max_position_embeddings ({max_pos})"
            )
        self._vocab_size = model.get_output_embeddings().weight.shape[0]
        self._base_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        # One forward at a time: PEFT routes rows to adapters through hooks it installs per call.
        self._model_lock = threading.RLock()
        self._adapters = AdapterRegistry(model, self.config.max_loaded_adapters, self._model_lock,
                                         self.config.lora_kernel, dtype=model.get_input_embeddings().weight.dtype,
                                         decode_kernel=self.config.lora_decode_kernel)
        self._grammars: GrammarCache | None = None
        self._grammar_lock = threading.Lock()
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._eos_ids = _eos_ids(model, tokenizer)
        self._counters = {"generate_calls": 0, "rows": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._counter_lock = threading.Lock()
        self._model_config_full = model.config
        # The compute dtype (K/V are stored in it): the input embeddings' (never quantized by bitsandbytes).
        self._kv_dtype = model.get_input_embeddings().weight.dtype
        self._kv_bytes_per_token = kv_bytes_per_token(model.config, self._kv_dtype)  # fixed: read once
        self._scheduler: ContinuousScheduler | None = None
        self._graph_mode, self.graphs_off_reason = _graph_mode(self.config, self.device, model)
        self._on_step = on_step
        self._scheduler_lock = threading.Lock()
        self._release_cpu_pool()  # the thread that loaded the model holds an OpenMP pool the loop would share CPUs with

    def _release_cpu_pool(self) -> None:
        """On a CPU device, free the calling thread's OpenMP worker pool after it ran torch work (loading the
        model, an adapter), so the loop thread's forwards are not throttled by an idle pool (engine/cpu_threads.py)."""
        if self.device.type == "cpu":
            release_openmp_pool()

    # -- adapters ---------------------------------------------------------------------------------

    @property
    def adapters(self) -> AdapterRegistry:
        """The one owner of every adapter's residency, reference count and stacked-buffer entry (read its state
        here; load, hold and unload through the engine's methods)."""
        return self._adapters

    def load_adapter(self, name: str, path: str | Path, *, hold: bool = False) -> None:
        """Load a PEFT LoRA adapter directory (safetensors only) under ``name``. Idempotent.

        Args:
            hold: also take a reference for the caller (released with :meth:`release_adapter`); an adapter first
                loaded this way is unloaded when its last reference goes. A plain load stays until unloaded.

        Raises:
            AdapterLoadError: bad directory, pickle weights, or weights that do not fit the base.
            TooManyAdapters: ``max_loaded_adapters`` are already resident (:meth:`wait_for_adapter_room`).
        """
        try:
            self._adapters.load(name, Path(path), hold=hold)
        finally:
            self._release_cpu_pool()

    def hold_adapter(self, name: str) -> None:
        """Take a reference to resident ``name`` (a request that will use it, a cached handle).

        Raises:
            AdapterNotLoaded: not resident, or being unloaded.
        """
        self._adapters.hold(name)

    def release_adapter(self, name: str) -> None:
        """Drop a reference taken by :meth:`hold_adapter` or ``load_adapter(hold=True)``; the last reference of a
        held-loaded adapter unloads it here (under the model lock: call it off an event loop)."""
        self._adapters.unhold(name)

    def wait_for_adapter_room(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for room to load one more adapter; True if there is room."""
        return self._adapters.wait_for_room(timeout_s)

    def adapter_load_counts(self) -> dict[str, int]:
        """Loads per adapter name since start (a reload after an unload counts again)."""
        return dict(self._adapters.load_counts)

    def unload_adapter(self, name: str) -> None:
        """Unload ``name``; deferred until its references (running rows, holds) go. New requests see it gone at once.

        Raises:
            AdapterNotLoaded: ``name`` is not loaded.
        """
        try:
            self._adapters.unload(name)
        finally:
            self._release_cpu_pool()

    def loaded_adapters(self) -> list[str]:
        """Names requests may use, sorted."""
        return self._adapters.names()

    def is_loaded(self, name: str) -> bool:
        """True when requests may name ``name``."""
        return self._adapters.is_loaded(name)

    # -- generation -------------------------------------------------------------------------------

    def generate(
        self, requests: list[GenerationRequest], *, on_step: Callable[[int], None] | None = None
    ) -> list[GenerationResult]:
        """Generate a completion for every request in one batched decode loop.

        Args:
            requests: rows of the batch; each may use a different adapter, sampling, stops and schema.
            on_step: called after every decode step with the step index (0 = after prefill), outside the
                model lock; for metrics and tests.

        Returns:
            One result per request, in order.

        Raises:
            BatchTooLarge, RequestTooLarge, InvalidRequest, InvalidSchema, AdapterNotLoaded: before any compute.
            GrammarCompileTimeout, GrammarCompileBusy: a row's schema was not precompiled and its compile failed.
        """
        if not requests:
            return []
        rows = self._prepare(requests)
        names = {r.adapter for r in requests if r.adapter is not None}
        slots = self._adapters.acquire(names)
        try:
            adapter_names = [slots[r.adapter] if r.adapter is not None else BASE_SLOT for r in requests]
            run_decode(
                self._adapters,
                self._model_lock,
                rows,
                adapter_names,
                pad_id=self._pad_id,
                eos_ids=self._eos_ids,
                vocab_size=self._vocab_size,
                device=self.device,
                banned_ids=self._grammars.banned_ids if self._grammars is not None else None,
                on_step=on_step,
                pixel_dtype=self._pixel_dtype,
            )
        finally:
            self._adapters.release(names)
        results = [row.result(self.tokenizer, req) for row, req in zip(rows, requests)]
        with self._counter_lock:
            self._counters["generate_calls"] += 1
        for result in results:
            self._count(result)
        return results

    def _count(self, result: GenerationResult) -> None:
        with self._counter_lock:
            self._counters["rows"] += 1
            self._counters["prompt_tokens"] += result.prompt_tokens
            self._counters["completion_tokens"] += result.completion_tokens

    # -- continuous batching ----------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RowHandle:
        """Queue one request on the continuous-batching loop; it joins the running batch at the next step.

        Validates and pins the request's adapter before returning (an unload waits for the row); the KV cache
        is allocated at the first call. Compiles a schema that was not precompiled, and runs the image
        processor, in the calling thread: call it from a worker thread (``generate_async`` does).

        Returns:
            The row's handle: ``handle.future`` resolves to its :class:`GenerationResult`; ``handle.cancel()``
            drops it at the next step boundary and frees its slot.

        Raises:
            RequestTooLarge, InvalidRequest, InvalidSchema, AdapterNotLoaded: as ``generate``; RequestTooLarge
                also when prompt + max_new_tokens exceeds a KV slot.
            QueueFull: ``max_waiting_requests`` rows already wait (503).
            EngineClosed: after ``close``.
        """
        return self.submit_many([request])[0]

    def submit_many(self, requests: list[GenerationRequest]) -> list[RowHandle]:
        """``submit`` for several requests at once, all or none: as many as there are free slots join one prefill
        (benchmarks and batch jobs). Same refusals as ``submit``; one bad request refuses them all."""
        rows = [self._prepare([request])[0] for request in requests]
        pinned: list[set[str]] = []
        try:
            items = []
            for row, request in zip(rows, requests):
                names = {request.adapter} if request.adapter is not None else set()
                slots = self._adapters.acquire(names)
                pinned.append(names)
                items.append((row, request, names, slots.get(request.adapter, BASE_SLOT)))
            return self._continuous().submit_many(items)
        except BaseException:
            for names in pinned:
                self._adapters.release(names)
            raise

    async def generate_async(self, request: GenerationRequest) -> GenerationResult:
        """``submit`` from a worker thread (schema precompiled off the loop first) and await the result.

        Cancelling the awaiting task cancels the row: it leaves the batch at the next step and frees its slot.
        """
        if request.json_schema is not None and request.grammar is None:
            request = request.model_copy(update={"grammar": await self.precompile(request.json_schema)})
        handle = await asyncio.to_thread(self.submit, request)
        try:
            return await asyncio.wrap_future(handle.future)
        except asyncio.CancelledError:
            handle.cancel()
            raise

    def _continuous(self) -> ContinuousScheduler:
        with self._scheduler_lock:
            if self._scheduler is None:
                cfg = self.config
                slot_tokens = cfg.kv_slot_tokens or cfg.max_prompt_tokens + cfg.max_new_tokens_limit
                if cfg.kv_cache_bytes is not None:
                    cache = SlotKVCache.for_budget(self._model_config_full, budget_bytes=cfg.kv_cache_bytes,
                                                   max_slots=cfg.max_batch_size, slot_tokens=slot_tokens,
                                                   dtype=self._kv_dtype, device=self.device)
                else:
                    cache = SlotKVCache(self._model_config_full, slots=min(cfg.kv_slots or cfg.max_batch_size,
                                                                           cfg.max_batch_size),
                                        slot_tokens=slot_tokens, dtype=self._kv_dtype, device=self.device)
                prefixes = (PrefixCache(cache, block_tokens=cfg.prefix_block_tokens,
                                        capacity_bytes=cfg.prefix_cache_bytes) if cfg.prefix_cache_bytes else None)
                self._scheduler = ContinuousScheduler(
                    self._adapters, self._model_lock, cache, self.tokenizer, max_waiting=cfg.max_waiting_requests,
                    pad_id=self._pad_id, eos_ids=self._eos_ids, vocab_size=self._vocab_size, device=self.device,
                    pixel_dtype=self._pixel_dtype, on_result=self._count, on_step=self._on_step, prefixes=prefixes,
                    banned_ids=lambda: self._grammars.banned_ids if self._grammars is not None else None,
                    graphs=self._graph_mode,
                )
            return self._scheduler

    def set_max_running(self, n: int) -> None:
        """Let the continuous loop run at most ``n`` rows at once (at most ``max_batch_size``, its KV slots).

        Raises:
            ValueError: ``n`` is out of range (the message names the slots).
        """
        self._continuous().set_max_running(n)

    @property
    def healthy(self) -> bool:
        """False once the continuous loop's thread has died; rows submitted then would never run."""
        return self._scheduler is None or self._scheduler.healthy

    @property
    def waiting_rows(self) -> int:
        """Rows waiting for a slot of the continuous loop (cheap: for a per-request gauge)."""
        return self._scheduler.waiting if self._scheduler is not None else 0

    @property
    def kv_cache(self) -> SlotKVCache | None:
        """The continuous loop's KV cache (None before the first ``submit``)."""
        return self._scheduler.cache if self._scheduler is not None else None

    @property
    def decode_graphs(self) -> DecodeGraphs | None:
        """The continuous loop's graphed decode steps (None: eager decode, or before the first ``submit``)."""
        return self._scheduler.graphs if self._scheduler is not None else None

    def capture_decode_graphs(self) -> Future[int]:
        """Capture every decode-graph bucket not captured yet (bare-base buckets, and LoRA buckets once an adapter
        is loaded) as soon as the loop has no rows, instead of each on its first step; the future gives how many
        (0 where decode is not graphed). A replica calls it at start, after preloading its adapters.
        """
        return self._continuous().capture_graphs()

    def set_decode_graphs(self, on: bool) -> None:
        """Pause (False) or resume graphed decode steps from the next step on; the captured graphs are kept.
        Benchmarks compare the two in one run; an operator can rule graphs out without a restart.

        Raises:
            ValueError: resuming where decode is not graphed (the message says why not).
        """
        graphs = self._continuous().graphs
        if graphs is None:
            if on:
                raise ValueError(f"decode steps are not graphed here: {self.graphs_off_reason}")
            return
        with self._model_lock:
            graphs.active = on

    def set_lora_decode_kernel(self, kind: str) -> None:
        """Switch ``lora_decode_kernel`` ('auto', 'gather' or 'bgmv') from the next step on (benchmarks compare
        them in one run).

        Raises:
            ValueError: an unknown kind, or 'bgmv' where its kernels cannot run (the message says why).
        """
        config = EngineConfig.model_validate({**self.config.model_dump(), "lora_decode_kernel": kind})
        _check_decode_kernel(config, self.device)
        self.config = config
        self._adapters.set_decode_kernel(kind)

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token takes in this model (all layers), in the engine's compute dtype."""
        return self._kv_bytes_per_token

    def _prepare(self, requests: list[GenerationRequest]) -> list[DecodeRow]:
        cfg = self.config
        if len(requests) > cfg.max_batch_size:
            raise BatchTooLarge(f"batch of {len(requests)} requests exceeds max_batch_size ({cfg.max_batch_size})")
        for i, req in enumerate(requests):
            if req.params.max_new_tokens > cfg.max_new_tokens_limit:
                raise RequestTooLarge(
                    f"request {i}: max_new_tokens ({req.params.max_new_tokens}) exceeds "
                    f"max_new_tokens_limit ({cfg.max_new_tokens_limit})"
                )
        # The templated prompt carries its own BOS; adding special tokens again would double it.
        encoded = self.tokenizer([r.prompt for r in requests], add_special_tokens=False)["input_ids"]
        vision: list[dict[str, Any] | None] = [None] * len(requests)
        for i, req in enumerate(requests):
            shown = encoded[i].count(self._image_token_id) if self._image_token_id is not None else 0
            if req.images or shown:
                encoded[i], vision[i] = self._with_images(i, req, shown)
        for i, ids in enumerate(encoded):
            if len(ids) > cfg.max_prompt_tokens:
                raise RequestTooLarge(
                    f"request {i}: prompt has {len(ids)} tokens, max_prompt_tokens is {cfg.max_prompt_tokens}"
                )
            if not ids:
                raise InvalidRequest(f"request {i}: prompt is empty after tokenization")
        unknown = sorted({r.adapter for r in requests if r.adapter is not None} - set(self.loaded_adapters()))
        if unknown:
            # Checked again atomically by acquire(); this early check keeps grammar compiles off doomed batches.
            raise AdapterNotLoaded(f"adapter(s) {unknown} not loaded; loaded: {self.loaded_adapters()}")
        grammars = [self._grammar_of(r) for r in requests]
        return [DecodeRow(ids, req.params, grammar, self.tokenizer, vis)
                for ids, req, grammar, vis in zip(encoded, requests, grammars, vision)]

    def _with_images(self, i: int, request: GenerationRequest, shown: int) -> tuple[list[int], dict[str, Any]]:
        """Row ``i``'s token ids with every image token expanded to its image's tokens, and its pixels."""
        if self.processor is None:
            raise InvalidRequest(f"request {i}: this base is text-only and takes no images")
        if shown != len(request.images):
            raise InvalidRequest(f"request {i}: the prompt has {shown} {self._image_token} token(s) but "
                                 f"{len(request.images)} image(s) came with it; they must match one to one")
        try:
            enc = self.processor(text=[request.prompt], images=list(request.images), return_tensors="pt",
                                 add_special_tokens=False)
        except (ValueError, TypeError, OSError) as exc:  # an image the processor cannot take
            raise InvalidRequest(f"request {i}: the images could not be prepared: {exc}") from exc
        pixels = {k: enc[k] for k in ("pixel_values", "image_sizes") if k in enc}
        return enc["input_ids"][0].tolist(), pixels

    def _grammar_of(self, request: GenerationRequest) -> Any:
        if request.json_schema is None:
            return None
        if isinstance(request.grammar, xgr.CompiledGrammar):
            return request.grammar
        # Not precompiled (a direct caller): compile on the pool now, inside this batch's call.
        return self._grammar_cache().get(request.json_schema)

    def submit_schema(self, schema: dict[str, Any]) -> GrammarJob:
        """Start compiling ``schema`` on the compile pool (or find it cached / compiling); never blocks on it.

        The first call builds the grammar cache (a scan of the vocabulary), so call it from a worker thread.

        Raises:
            InvalidSchema, GrammarCompileTimeout, GrammarCompileBusy: see ``GrammarCache.submit``.
        """
        return self._grammar_cache().submit(schema)

    async def precompile(self, schema: dict[str, Any]) -> Any:
        """Compile ``schema`` off the event loop and the decode loop; put the result in ``GenerationRequest.grammar``.

        Waits for a free compile worker and then for the compile itself, each at most
        ``grammar_compile_timeout_s``; a waiter that gives up leaves a running compile running (others may
        share it), and a queued one nobody else waits for is dropped.

        Raises:
            InvalidSchema: the schema does not compile (400).
            GrammarCompileTimeout: its own compile ran past the timeout, now or before (400).
            GrammarCompileBusy: the pool is full, or no worker was free within the timeout (503).
        """
        cache = self._grammars if self._grammars is not None else await asyncio.to_thread(self._grammar_cache)
        job = cache.submit(schema)
        since = time.monotonic()
        done = asyncio.wrap_future(job.future)
        try:
            while True:
                left = cache.wait_left(job, since)
                try:
                    # shield: giving up must not cancel a compile that other requests may be waiting for.
                    return await asyncio.wait_for(asyncio.shield(done), left)
                except asyncio.TimeoutError:
                    continue
        finally:
            cache.leave(job)
            if not done.done():  # gave up: the outcome, when it comes, has no reader
                done.add_done_callback(lambda f: f.cancelled() or f.exception())

    def close(self, timeout_s: float = 0.0) -> None:
        """Stop the continuous loop (waiting up to ``timeout_s`` for its rows, then failing them with
        ``EngineClosed``) and the grammar compile threads (queued compiles are dropped; a running one ends on
        its own)."""
        if self._scheduler is not None:
            self._scheduler.close(timeout_s)
        if self._grammars is not None:
            self._grammars.close()

    def _grammar_cache(self) -> GrammarCache:
        # Built on first use: TokenizerInfo scans the whole vocabulary, wasted on engines that never constrain.
        with self._grammar_lock:
            if self._grammars is None:
                cfg = self.config
                self._grammars = GrammarCache(
                    self.tokenizer, self._vocab_size, cfg.grammar_cache_size, workers=cfg.grammar_compile_workers,
                    max_pending=cfg.max_pending_grammar_compiles, timeout_s=cfg.grammar_compile_timeout_s,
                    nice=cfg.grammar_compile_nice,
                )
            return self._grammars

    # -- introspection ----------------------------------------------------------------------------

    def memory_footprint(self) -> dict:
        """Bytes of the base's parameters and buffers, of each resident adapter's parameters as PEFT loads them,
        and what the adapters hold in all: the stacked buffers with ``lora_kernel="gathered"`` (every entry, used
        or not, in the compute dtype), PEFT's parameters with ``"peft"``."""
        adapters = self._adapters.bytes_by_adapter()
        held = self._adapters.buffer_bytes if self.config.lora_kernel == "gathered" else sum(adapters.values())
        return {"base_bytes": self._base_bytes, "adapters": adapters, "adapters_total_bytes": held}

    def stats(self) -> dict:
        """Counters and residency: adapters, pending unloads, memory, tokens served, grammars compiled."""
        mem = self.memory_footprint()
        with self._counter_lock:
            counters = dict(self._counters)
        return {
            "resident_adapters": len(mem["adapters"]),
            "loaded_adapters": self.loaded_adapters(),
            "pending_unloads": self._adapters.pending_unloads(),
            "adapter_references": self._adapters.references(),
            "adapter_loads": self._adapters.loads,
            "lora_kernel": self.config.lora_kernel,
            "lora_decode_kernel": self.config.lora_decode_kernel,
            "lora_buffer_bytes": self._adapters.buffer_bytes,
            "lora_buffer_reallocations": self._adapters.buffer_reallocations,
            "adapter_unloads": self._adapters.unloads,
            "model_memory_bytes": mem["base_bytes"],
            "adapter_memory_bytes": mem["adapters_total_bytes"],
            "grammars_compiled": self._grammars.compiles if self._grammars is not None else 0,
            "grammars_refused": self._grammars.refusals if self._grammars is not None else 0,
            "grammar_compiles_pending": self._grammars.pending if self._grammars is not None else 0,
            "kv_bytes_per_token": self.kv_bytes_per_token(),
            **self._continuous_stats(),
            **counters,
        }

    def _continuous_stats(self) -> dict[str, Any]:
        sched = self._scheduler
        if sched is None:
            return {"kv_cache_bytes": 0, "kv_slots": 0, "running_rows": 0, "waiting_rows": 0, "loop_alive": False,
                    "decode_graphs": self._graph_mode or "off", "decode_graphs_off_reason": self.graphs_off_reason}
        return {"kv_cache_bytes": sched.cache.nbytes, "kv_slots": sched.cache.slots,
                "kv_slot_tokens": sched.cache.slot_tokens, "max_running_rows": sched.max_running,
                "running_rows": sched.running, "loop_alive": sched.loop_alive,
                "waiting_rows": sched.waiting, **{f"continuous_{k}": v for k, v in vars(sched.stats).items()},
                **self._graph_stats(sched),
                **({f"prefix_{k}": v for k, v in vars(sched.prefixes.stats).items()} if sched.prefixes else {})}

    def _graph_stats(self, sched: ContinuousScheduler) -> dict[str, Any]:
        graphs = sched.graphs
        if graphs is None:
            return {"decode_graphs": "off", "decode_graphs_off_reason": self.graphs_off_reason}
        g = graphs.stats
        reason = None if graphs.enabled else f"a capture failed: {g.failed}" if g.failed else "paused"
        return {"decode_graphs": graphs.mode if graphs.enabled else "off", "decode_graphs_off_reason": reason,
                "decode_graph_captures": g.captures, "decode_graph_replays": g.replays,
                "decode_graph_padded_rows": g.padded_rows, "decode_graph_invalidations": g.invalidations,
                "decode_graph_buckets": [list(b) for b in g.buckets]}


def _check_decode_kernel(config: EngineConfig, device: torch.device) -> None:
    """Refuse ``lora_decode_kernel: bgmv`` where its Triton kernels cannot run."""
    if config.lora_decode_kernel == "bgmv":
        reason = bgmv_unavailable(device)
        if reason is not None:
            raise ValueError(f"lora_decode_kernel 'bgmv' cannot run here: {reason}")


def _graph_mode(config: EngineConfig, device: torch.device, model: Any) -> tuple[str | None, str | None]:
    """The continuous loop's decode-graph mode (``"cuda"``, ``"static"`` or None: eager) and why not graphed."""
    if config.decode_graphs == "off":
        return None, "decode_graphs is 'off'"
    if config.lora_kernel != "gathered":
        return None, "lora_kernel 'peft' routes rows through PEFT's per-call hooks"
    if config.decode_graphs == "static":
        return "static", None
    if device.type != "cuda":
        return None, f"no CUDA device ({device.type})"
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        return None, "a bitsandbytes base (its kernels are not captured)"
    return "cuda", None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(x) for x in source)
    return ids
