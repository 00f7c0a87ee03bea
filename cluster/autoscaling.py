"""Memory-capped autoscaling: a Ray Serve custom policy that never asks for a replica memory cannot hold.

Serve's default policy scales on ongoing requests alone; Ray then places replicas by *logical* GPU
fractions, which know nothing about how much memory a replica really uses. :class:`MemoryCappedPolicy`
(``autoscaling_config.policy.policy_function``; Ray 2.60's custom policy API) takes the default
request-based decision and caps it by memory:

* **plan cap** -- the planner reserved ``reserved_mb[i]`` MiB for this deployment on GPU (node) ``i``.
  A replica needs ``replica_mb = max(planned budget, largest peak any replica reported)``, so at most
  ``sum(reserved_mb[i] // replica_mb)`` replicas fit. With replicas inside their budget this is the
  plan's ``max_replicas``; a replica that grew past its budget lowers it (down to what really fits).
* **free cap** -- per GPU that holds a replica: the free memory (``cudaMemGetInfo`` as the replicas
  report it; on logical GPUs: the GPU's memory minus headroom minus what our replicas there use) over
  ``replica_mb`` is how many more can join it. GPUs without a replica of ours count with their plan
  share (the smallest ones, conservatively).

Replicas report per-replica custom metrics through ``record_autoscaling_stats`` (see
``deployments/base_llm/replica_budget.py``), named by the ``METRIC_*`` constants below; a replica that has not
reported yet counts at its budget. Serve applies min/max_replicas, the delays and the scaling factors
to whatever this returns.

Self-contained on purpose (stdlib only, Ray imported inside the call): Serve pickles this module by
value into its controller.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["MemoryCappedPolicy", "MemoryCap", "ReplicaReport", "memory_cap", "POLICY_IMPORT_PATH",
           "METRIC_PEAK_MB", "METRIC_BUDGET_MB", "METRIC_GPU_KEY", "METRIC_GPU_TOTAL_MB", "METRIC_GPU_FREE_MB"]

POLICY_IMPORT_PATH = "cluster.autoscaling:MemoryCappedPolicy"
METRIC_PEAK_MB = "justnews_memory_peak_mb"        # measured peak of the replica (allocator + context), MiB
METRIC_BUDGET_MB = "justnews_memory_budget_mb"    # the budget it enforces, MiB
METRIC_GPU_KEY = "justnews_gpu_key"               # number naming (node, GPU); replicas sharing a GPU share it
METRIC_GPU_TOTAL_MB = "justnews_gpu_total_mb"     # memory of that GPU, MiB (CUDA, or the node's label)
METRIC_GPU_FREE_MB = "justnews_gpu_free_mb"       # device-wide free memory, MiB (real CUDA devices only)

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ReplicaReport:
    """What one running replica reported (None where it did not say)."""

    peak_mb: float | None = None
    budget_mb: float | None = None
    gpu_key: float | None = None
    gpu_total_mb: float | None = None
    gpu_free_mb: float | None = None


@dataclass(frozen=True)
class MemoryCap:
    """The memory cap and how it was reached."""

    replicas: int
    replica_mb: int
    plan_cap: int
    free_cap: int | None
    reason: str


def _headroom(total_mb: float, headroom_mb: int, headroom_fraction: float) -> float:
    return max(headroom_mb, math.ceil(total_mb * headroom_fraction))


def memory_cap(reports: list[ReplicaReport], *, budget_mb: int, reserved_mb: list[int], headroom_mb: int = 0,
               headroom_fraction: float = 0.05) -> MemoryCap:
    """How many replicas memory allows, from the plan's reservations and the replicas' reports.

    Args:
        reports: one per running replica (metrics may be missing).
        budget_mb: the planned memory of one replica.
        reserved_mb: MiB the plan reserved for this deployment on each GPU (node) it uses.
        headroom_mb, headroom_fraction: the placement policy's headroom (kept free on every GPU).
    """
    peaks = [r.peak_mb for r in reports if r.peak_mb is not None]
    replica_mb = max([budget_mb, *peaks])
    replica_mb = int(math.ceil(replica_mb))
    per_bin = sorted(int(mb // replica_mb) for mb in reserved_mb)
    plan_cap = sum(per_bin)
    gpus: dict[float, list[ReplicaReport]] = {}
    for r in reports:
        if r.gpu_key is not None and r.gpu_total_mb:
            gpus.setdefault(r.gpu_key, []).append(r)
    if not gpus:
        reason = f"plan cap {plan_cap} ({len(reserved_mb)} GPU share(s) / {replica_mb} MiB per replica)"
        return MemoryCap(plan_cap, replica_mb, plan_cap, None, reason)
    extra = 0
    for on_gpu in gpus.values():
        total = max(r.gpu_total_mb or 0 for r in on_gpu)
        room = total - _headroom(total, headroom_mb, headroom_fraction)
        free = [r.gpu_free_mb for r in on_gpu if r.gpu_free_mb is not None]
        if free:  # the device's own view, every process on it included
            room = min(room, min(free) - _headroom(total, headroom_mb, headroom_fraction))
        else:  # a logical GPU: only our replicas' use is known
            room -= sum(max(r.peak_mb or 0, r.budget_mb or budget_mb) for r in on_gpu)
        extra += max(0, int(room // replica_mb))
    unseen = per_bin[: max(0, len(per_bin) - len(gpus))]  # GPUs without a replica of ours yet
    free_cap = len(reports) + extra + sum(unseen)
    cap = min(plan_cap, free_cap)
    reason = (f"min(plan cap {plan_cap}, free cap {free_cap} = {len(reports)} running + {extra} more on "
              f"{len(gpus)} GPU(s) in use + {sum(unseen)} on {len(unseen)} other GPU share(s)) at "
              f"{replica_mb} MiB per replica")
    return MemoryCap(cap, replica_mb, plan_cap, free_cap, reason)


def _reports(metrics: Mapping[str, Mapping[Any, float]] | None, replicas: list[Any]) -> list[ReplicaReport]:
    metrics = metrics or {}
    get = lambda name, rid: (metrics.get(name) or {}).get(rid)  # noqa: E731
    return [ReplicaReport(get(METRIC_PEAK_MB, rid), get(METRIC_BUDGET_MB, rid), get(METRIC_GPU_KEY, rid),
                          get(METRIC_GPU_TOTAL_MB, rid), get(METRIC_GPU_FREE_MB, rid)) for rid in replicas]


class MemoryCappedPolicy:
    """Serve custom autoscaling policy: the request-based decision, capped by :func:`memory_cap`.

    Ray instantiates the class once with ``policy_kwargs`` (JSON: the planner writes them) and calls
    it every control-loop tick with an ``AutoscalingContext``.

    Args:
        budget_mb: planned memory of one replica, MiB.
        reserved_mb: MiB reserved for the deployment per GPU (node), from the plan's packing.
        headroom_mb, headroom_fraction: the placement policy's headroom.
    """

    def __init__(self, budget_mb: int, reserved_mb: list[int], headroom_mb: int = 0,
                 headroom_fraction: float = 0.05):
        if budget_mb <= 0 or not reserved_mb or min(reserved_mb) < budget_mb:
            raise ValueError(f"budget_mb ({budget_mb}) must be > 0 and <= every reserved_mb ({reserved_mb})")
        self.budget_mb = budget_mb
        self.reserved_mb = list(reserved_mb)
        self.headroom_mb = headroom_mb
        self.headroom_fraction = headroom_fraction
        self._last_reason: str | None = None

    def cap(self, ctx: Any) -> MemoryCap:
        """The memory cap for the replicas the context reports."""
        return memory_cap(_reports(ctx.aggregated_metrics, list(ctx.running_replicas)), budget_mb=self.budget_mb,
                          reserved_mb=self.reserved_mb, headroom_mb=self.headroom_mb,
                          headroom_fraction=self.headroom_fraction)

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

        desired, state = replica_queue_length_autoscaling_policy(ctx)
        cap = self.cap(ctx)
        state = dict(state or {})
        state.update(justnews_memory_cap=cap.replicas, justnews_replica_mb=cap.replica_mb)
        if desired > cap.replicas:
            if cap.reason != self._last_reason:
                log.info("%s: %.1f replicas wanted, memory allows %d: %s", ctx.deployment_name, desired,
                         cap.replicas, cap.reason)
                self._last_reason = cap.reason
            desired = cap.replicas
        return desired, state
