"""The BaseLLM replica's Prometheus metrics, through Ray Serve's metrics API.

``ray.serve.metrics`` adds the ``deployment``, ``replica`` and ``application`` tags inside a replica and
works (as plain Ray metrics) outside one, so the server class needs no Serve context. Ray's own
``ray_serve_multiplexed_*`` metrics (load latency, resident model ids) come from the multiplexer and
complement these. The ``adapter`` tag is always a pinned ref the store knows, ``base`` for the bare base,
or ``invalid`` for an unparseable id, so a caller cannot blow up label cardinality.

Every method also updates :attr:`LLMMetrics.totals`, the same numbers as plain dicts for ``stats()``.
"""

from __future__ import annotations

from collections import Counter as _Tally
from typing import Any

from ray.serve import metrics

__all__ = ["LLMMetrics", "BASE_TAG", "INVALID_TAG"]

BASE_TAG = "base"
INVALID_TAG = "invalid"

_LATENCY_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
_BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
_ADAPTER_COUNTS = [1, 2, 3, 4, 6, 8, 12, 16, 32]


def _zero(counter: Any, tags: dict[str, str]) -> None:
    # Ray's public Counter.inc refuses 0; recording a zero point is how a labelled counter is initialised.
    try:
        from ray.serve.metrics import _add_serve_context_tag_values

        _add_serve_context_tag_values(counter._tag_keys, tags)
        counter._record(0, tags=tags)
    except Exception:  # noqa: BLE001 - best effort: without it the series appears at the first event
        pass


class LLMMetrics:
    """Counters, gauges and histograms of one replica, prefixed ``justnews_llm_``."""

    def __init__(self) -> None:
        p = "justnews_llm_"
        self.adapter_loads = metrics.Counter(
            p + "adapter_loads", description="Adapters loaded into the base.", tag_keys=("adapter",)
        )
        self.adapter_load_latency = metrics.Histogram(
            p + "adapter_load_latency_s",
            description="Seconds to resolve, verify and load an adapter.",
            boundaries=_LATENCY_S,
            tag_keys=("adapter",),
        )
        self.adapter_load_failures = metrics.Counter(
            p + "adapter_load_failures",
            description="Adapter loads that failed, by reason (invalid_ref, not_found, load_error).",
            tag_keys=("adapter", "reason"),
        )
        self.adapter_evictions = metrics.Counter(
            p + "adapter_evictions", description="Adapters evicted by the multiplexing LRU.", tag_keys=("adapter",)
        )
        self.resident_adapters = metrics.Gauge(p + "resident_adapters", description="Adapters resident in the base.")
        self.queue_depth = metrics.Gauge(p + "queue_depth", description="Requests waiting to run: in the static batcher, or for a "
                                           "KV slot of the continuous loop.")
        self.batch_size = metrics.Histogram(
            p + "batch_size", description="Requests (rows) per engine forward pass.", boundaries=_BATCH_SIZES
        )
        self.batch_adapters = metrics.Histogram(
            p + "batch_distinct_adapters",
            description="Distinct adapters (the bare base counts as one) per engine forward pass.",
            boundaries=_ADAPTER_COUNTS,
        )
        self.batch_latency = metrics.Histogram(
            p + "batch_latency_s", description="Seconds one engine forward took: a whole generate call "
            "(static) or one prefill / decode step (continuous).", boundaries=_LATENCY_S
        )
        self.prompt_tokens = metrics.Counter(
            p + "prompt_tokens", description="Prompt tokens processed.", tag_keys=("adapter",)
        )
        self.generated_tokens = metrics.Counter(
            p + "generated_tokens", description="Completion tokens generated.", tag_keys=("adapter",)
        )
        self.request_latency = metrics.Histogram(
            p + "request_latency_s",
            description="Seconds from a request entering the replica to its result, by adapter and outcome.",
            boundaries=_LATENCY_S,
            tag_keys=("adapter", "outcome"),
        )
        self.preload_failures = metrics.Counter(
            p + "preload_failures", description="Adapters a replica could not preload at start, by reason.",
            tag_keys=("adapter", "reason"))
        self.adapter_swaps = metrics.Counter(
            p + "adapter_swaps",
            description="Hot swaps: a version of an adapter loaded where another version of it had served.",
            tag_keys=("adapter", "version"))
        self.hotswap_failures = metrics.Counter(
            p + "hotswap_failures", description="Hot swaps whose new version failed to load, by reason.",
            tag_keys=("adapter", "version", "reason"))
        self.oom_events = metrics.Counter(
            p + "oom_events", description="Out-of-memory errors while generating or loading an adapter.",
            tag_keys=("variant", "where"))
        self.pool_free_slots = metrics.Gauge(
            p + "pool_free_slots", description="Requests this replica can still take (max_ongoing_requests minus "
            "in flight), by base variant; summed per variant it is the pool's headroom.", tag_keys=("variant",))
        self.pool_rejections = metrics.Counter(
            p + "pool_rejections", description="Requests refused because the replica's pool was out of capacity "
            "(overloaded, adapter capacity, OOM), by base variant.", tag_keys=("variant", "reason"))
        self.base_loaded_bytes = metrics.Gauge(
            p + "base_loaded_bytes", description="Bytes of the base weights this replica loaded, by the variant and "
            "device it loaded them as.", tag_keys=("variant", "device"))
        self.plan_mismatch = metrics.Gauge(
            p + "plan_mismatch", description="1 when the replica loaded another variant or device than the placement "
            "plan chose for its pool (or more weights than its budget), else 0.",
            tag_keys=("variant", "device", "planned_variant", "planned_device"))
        self.prefix_reused_tokens = metrics.Counter(
            p + "prefix_reused_tokens", description="Prompt tokens whose K/V came from the prefix cache (an agent's "
            "system prompt computed once per adapter) instead of a prefill.")
        self.kv_running_rows = metrics.Gauge(
            p + "kv_running_rows", description="Rows the continuous loop is decoding (each holds one KV slot).")
        self.kv_slots = metrics.Gauge(p + "kv_slots", description="KV slots of the continuous loop's cache.")
        self.decode_graph_replays = metrics.Counter(
            p + "decode_graph_replays", description="Decode steps run by replaying a captured CUDA graph.")
        self.decode_graphs_captured = metrics.Gauge(
            p + "decode_graphs_captured", description="CUDA graphs of the decode step this replica holds, one per "
            "(rows, kv length, LoRA or not) bucket used so far; 0 when decode is eager (CPU, or a failed capture).")
        self._prefix_reported = 0
        self._replays_reported = 0
        self.totals: dict[str, Any] = {
            "preload_failures": _Tally(),
            "adapter_swaps": _Tally(),
            "hotswap_failures": _Tally(),
            "oom_events": _Tally(),
            "pool_rejections": _Tally(),
            "adapter_loads": _Tally(),
            "adapter_load_failures": _Tally(),
            "adapter_evictions": _Tally(),
            "requests": _Tally(),
            "generated_tokens": _Tally(),
        }

    def set_engine(self, stats: dict[str, Any]) -> None:
        """Export the continuous loop's occupancy and the prefix cache's reuse from ``InferenceEngine.stats()``."""
        self.kv_running_rows.set(stats.get("running_rows", 0))
        self.kv_slots.set(stats.get("kv_slots", 0))
        reused = stats.get("prefix_reused_tokens", 0)
        if reused > self._prefix_reported:  # Ray counters refuse increments <= 0
            self.prefix_reused_tokens.inc(reused - self._prefix_reported)
            self._prefix_reported = reused
        graphed = stats.get("decode_graphs") == "cuda"  # "static" runs the graphs' step eagerly: nothing replayed
        replays = stats.get("decode_graph_replays", 0) if graphed else 0
        if replays > self._replays_reported:
            self.decode_graph_replays.inc(replays - self._replays_reported)
            self._replays_reported = replays
        self.decode_graphs_captured.set(len(stats.get("decode_graph_buckets", [])) if graphed else 0)

    def set_loaded(self, report: dict[str, Any]) -> None:
        """Export a :class:`~deployments.base_llm.loaded.LoadedReport` (as a dict)."""
        tags = {"variant": report["variant"], "device": report["device"].split(":")[0]}
        self.base_loaded_bytes.set(report["weight_bytes"], tags=tags)
        planned = report.get("planned") or {}
        self.plan_mismatch.set(1 if report["mismatches"] else 0, tags={
            **tags, "planned_variant": planned.get("variant", "none"), "planned_device": planned.get("device", "none")})

    def adapter_loaded(self, adapter: str, seconds: float) -> None:
        self.adapter_loads.inc(tags={"adapter": adapter})
        self.adapter_load_latency.observe(seconds, tags={"adapter": adapter})
        self.totals["adapter_loads"][adapter] += 1

    def adapter_load_failed(self, adapter: str, reason: str) -> None:
        self.adapter_load_failures.inc(tags={"adapter": adapter, "reason": reason})
        self.totals["adapter_load_failures"][f"{adapter}:{reason}"] += 1

    def declare(self, variant: str) -> None:
        """Export zero-valued series of the rare events the alert rules watch (OOM, pool rejections), so
        Prometheus' ``increase()`` sees their first occurrence, and the pool's full headroom."""
        for where in ("generate", "adapter_load"):
            _zero(self.oom_events, {"variant": variant, "where": where})
        for reason in ("oom", "overloaded"):
            _zero(self.pool_rejections, {"variant": variant, "reason": reason})

    def preload_failed(self, adapter: str, reason: str) -> None:
        self.preload_failures.inc(tags={"adapter": adapter, "reason": reason})
        self.totals["preload_failures"][f"{adapter}:{reason}"] += 1

    def adapter_swapped(self, namespace: str, version: str) -> None:
        self.adapter_swaps.inc(tags={"adapter": namespace, "version": version})
        self.totals["adapter_swaps"][f"{namespace}@{version}"] += 1

    def hotswap_failed(self, namespace: str, version: str, reason: str) -> None:
        self.hotswap_failures.inc(tags={"adapter": namespace, "version": version, "reason": reason})
        self.totals["hotswap_failures"][f"{namespace}@{version}:{reason}"] += 1

    def oom(self, variant: str, where: str) -> None:
        self.oom_events.inc(tags={"variant": variant, "where": where})
        self.totals["oom_events"][f"{variant}:{where}"] += 1

    def pool_rejected(self, variant: str, reason: str) -> None:
        self.pool_rejections.inc(tags={"variant": variant, "reason": reason})
        self.totals["pool_rejections"][f"{variant}:{reason}"] += 1

    def set_free_slots(self, variant: str, free: int) -> None:
        self.pool_free_slots.set(max(0, free), tags={"variant": variant})

    def adapter_evicted(self, adapter: str) -> None:
        self.adapter_evictions.inc(tags={"adapter": adapter})
        self.totals["adapter_evictions"][adapter] += 1

    def set_resident(self, count: int) -> None:
        self.resident_adapters.set(count)

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def batch_done(self, size: int, distinct_adapters: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_adapters.observe(distinct_adapters)
        self.batch_latency.observe(seconds)

    def request_done(self, adapter: str, seconds: float, outcome: str, prompt_tokens: int = 0,
                     completion_tokens: int = 0) -> None:
        self.request_latency.observe(seconds, tags={"adapter": adapter, "outcome": outcome})
        self.totals["requests"][f"{adapter}:{outcome}"] += 1
        if outcome == "ok":
            if prompt_tokens > 0:  # Ray counters refuse increments <= 0
                self.prompt_tokens.inc(prompt_tokens, tags={"adapter": adapter})
            if completion_tokens > 0:
                self.generated_tokens.inc(completion_tokens, tags={"adapter": adapter})
            self.totals["generated_tokens"][adapter] += completion_tokens

    def snapshot(self) -> dict[str, dict[str, int]]:
        """The plain totals as JSON-ready dicts."""
        return {name: dict(tally) for name, tally in self.totals.items()}
