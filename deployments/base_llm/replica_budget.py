"""The replica's own memory budget: enforced at start, measured and reported while it runs.

Ray's GPU fractions are logical, so the planner ships each replica's budget in its environment
(``JUSTNEWS_REPLICA_BUDGET_MB`` / ``JUSTNEWS_REPLICA_CONTEXT_MB``, see :mod:`cluster.budget`).
:class:`ReplicaBudget` applies it before the base loads (``torch.cuda.set_per_process_memory_fraction``
on a GPU), exports the measured use as Prometheus gauges, and answers Serve's
``record_autoscaling_stats`` with the per-replica metrics :class:`cluster.autoscaling.MemoryCappedPolicy`
caps scaling by. Without a budget in the environment (tests, ``serve run`` by hand) nothing is
enforced and only the measurement is reported.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

from cluster.autoscaling import (METRIC_BUDGET_MB, METRIC_GPU_FREE_MB, METRIC_GPU_KEY, METRIC_GPU_TOTAL_MB,
                                 METRIC_PEAK_MB)
from cluster.budget import BudgetStatus, apply_replica_budget, budget_from_env, context_from_env, measured_usage
from cluster.discover import GPU_MEMORY_LABEL, GPU_MEMORY_RESOURCE

__all__ = ["ReplicaBudget"]

log = logging.getLogger(__name__)


def memory_gauges(metrics: Any) -> tuple[Any, Any, Any]:
    """The replica's memory gauges (peak, current, budget), built with ``metrics`` (``ray.serve.metrics``)."""
    return (
        metrics.Gauge("justnews_llm_memory_peak_mb", description="Peak memory of the replica, MiB "
                      "(CUDA allocator + context on a GPU, process RSS on the CPU)."),
        metrics.Gauge("justnews_llm_memory_current_mb", description="Current memory of the replica, MiB."),
        metrics.Gauge("justnews_llm_memory_budget_mb", description="The budget the replica enforces, MiB."),
    )


def _gpu_placement() -> tuple[float | None, float | None]:
    """(key, total MiB) of the GPU Ray gave this replica, from Ray's view (works for logical GPUs)."""
    try:
        import ray

        if not ray.is_initialized():
            return None, None
        ctx = ray.get_runtime_context()
        gpu_ids = ctx.get_accelerator_ids().get("GPU") or []
        if not gpu_ids:
            return None, None
        node_id = ctx.get_node_id()
        key = float(zlib.crc32(f"{node_id}:{','.join(gpu_ids)}".encode()))  # < 2**32: exact as a float
        label = (ctx.get_node_labels() or {}).get(GPU_MEMORY_LABEL)
        if label:
            return key, float(label)
        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                res = node.get("Resources") or {}
                if res.get(GPU_MEMORY_RESOURCE) and res.get("GPU"):
                    return key, float(res[GPU_MEMORY_RESOURCE]) / int(res["GPU"])
        return key, None
    except Exception as exc:  # outside Ray, or an older runtime context: report without placement
        log.debug("no GPU placement known: %s", exc)
        return None, None


class ReplicaBudget:
    """One replica's budget: what was applied, and its measured use on request.

    Args:
        device: the torch device the base runs on ('cpu', 'cuda', 'cuda:N').
        budget_mb: the budget; None reads ``JUSTNEWS_REPLICA_BUDGET_MB`` (absent: nothing enforced).
    """

    def __init__(self, device: str, budget_mb: int | None = None):
        self.device = device
        self.budget_mb = budget_mb if budget_mb is not None else budget_from_env()
        self.context_mb = context_from_env()
        self.status: BudgetStatus | None = None
        if self.budget_mb is not None:
            self.status = apply_replica_budget(self.budget_mb, device, context_mb=min(self.context_mb,
                                                                                        self.budget_mb - 1))
            log.info("replica budget %d MiB on %s: %s", self.budget_mb, device, self.status.note)
        self.gpu_key, self.gpu_total_mb = _gpu_placement()
        self._gauges = None

    def _export(self, peak_mb: float, current_mb: float) -> None:
        import ray
        from ray.serve import metrics

        if not ray.is_initialized():  # creating a Ray metric would start a local Ray instance
            return
        if self._gauges is None:
            self._gauges = memory_gauges(metrics)
        self._gauges[0].set(peak_mb)
        self._gauges[1].set(current_mb)
        if self.budget_mb is not None:
            self._gauges[2].set(self.budget_mb)

    def sample(self) -> dict[str, Any]:
        """Measure now, update the gauges and return a JSON-ready summary (for ``stats()``)."""
        usage = measured_usage(self.device)
        on_gpu = usage.device.startswith("cuda")
        context = self.context_mb if on_gpu else 0  # the allocator never sees the CUDA context
        peak, current = usage.peak_mb + context, usage.current_mb + context
        try:
            self._export(peak, current)
        except Exception as exc:  # metrics are best effort outside a Ray worker
            log.debug("memory gauges not exported: %s", exc)
        out: dict[str, Any] = {"device": usage.device, "source": usage.source, "peak_mb": round(peak, 1),
                               "current_mb": round(current, 1), "budget_mb": self.budget_mb,
                               "enforced": bool(self.status and self.status.enforced),
                               "over_budget": self.budget_mb is not None and peak > self.budget_mb}
        if on_gpu:
            import torch

            free, total = torch.cuda.mem_get_info(torch.device(usage.device))
            out.update(gpu_free_mb=free / 2**20, gpu_total_mb=total / 2**20)
        elif self.gpu_total_mb is not None:
            out["gpu_total_mb"] = self.gpu_total_mb
        return out

    def autoscaling_stats(self) -> dict[str, float]:
        """Serve's ``record_autoscaling_stats`` answer: numbers only, named by :mod:`cluster.autoscaling`."""
        s = self.sample()
        stats = {METRIC_PEAK_MB: float(s["peak_mb"])}
        if self.budget_mb is not None:
            stats[METRIC_BUDGET_MB] = float(self.budget_mb)
        if self.gpu_key is not None and s.get("gpu_total_mb"):
            stats[METRIC_GPU_KEY] = self.gpu_key
            stats[METRIC_GPU_TOTAL_MB] = float(s["gpu_total_mb"])
            if "gpu_free_mb" in s:
                stats[METRIC_GPU_FREE_MB] = float(s["gpu_free_mb"])
        return stats
