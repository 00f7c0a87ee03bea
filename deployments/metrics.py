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
        self.queue_depth = metrics.Gauge(p + "queue_depth", description="Requests waiting in the replica batcher.")
        self.batch_size = metrics.Histogram(
            p + "batch_size", description="Requests per engine forward pass.", boundaries=_BATCH_SIZES
        )
        self.batch_adapters = metrics.Histogram(
            p + "batch_distinct_adapters",
            description="Distinct adapters (the bare base counts as one) per engine forward pass.",
            boundaries=_ADAPTER_COUNTS,
        )
        self.batch_latency = metrics.Histogram(
            p + "batch_latency_s", description="Seconds one batched generate call took.", boundaries=_LATENCY_S
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
        self.totals: dict[str, Any] = {
            "adapter_loads": _Tally(),
            "adapter_load_failures": _Tally(),
            "adapter_evictions": _Tally(),
            "requests": _Tally(),
            "generated_tokens": _Tally(),
        }

    def adapter_loaded(self, adapter: str, seconds: float) -> None:
        self.adapter_loads.inc(tags={"adapter": adapter})
        self.adapter_load_latency.observe(seconds, tags={"adapter": adapter})
        self.totals["adapter_loads"][adapter] += 1

    def adapter_load_failed(self, adapter: str, reason: str) -> None:
        self.adapter_load_failures.inc(tags={"adapter": adapter, "reason": reason})
        self.totals["adapter_load_failures"][f"{adapter}:{reason}"] += 1

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
