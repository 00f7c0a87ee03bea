"""Replica-side memory budget: Ray's GPU fractions are logical, so each replica polices itself.

A fractional ``num_gpus`` stops Ray from scheduling too many replicas on a GPU but not a replica from
allocating more than its share. The planner therefore sizes every replica (weights + KV cache +
adapters + context) and ships that figure in the ``JUSTNEWS_REPLICA_BUDGET_MB`` env var; at start the
replica calls :func:`apply_replica_budget`, which caps torch's CUDA caching allocator with
``torch.cuda.set_per_process_memory_fraction`` (an allocation past it raises OOM in *this* replica
instead of starving its neighbours), and the engine's batch and adapter limits keep it below the cap in
normal operation. :func:`measured_usage` reports the peak for metrics and for checking the plan.

No Ray import; torch is imported lazily so CPU-only tooling can import this module cheaply.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass

__all__ = ["BUDGET_ENV", "CONTEXT_ENV", "BudgetStatus", "MemoryUsage", "budget_from_env", "context_from_env", "apply_replica_budget",
           "measured_usage"]

BUDGET_ENV = "JUSTNEWS_REPLICA_BUDGET_MB"
CONTEXT_ENV = "JUSTNEWS_REPLICA_CONTEXT_MB"  # the part of the budget torch's allocator never sees
MIB = 1024 * 1024


@dataclass(frozen=True)
class BudgetStatus:
    """What :func:`apply_replica_budget` did."""

    budget_mb: int
    device: str
    enforced: bool
    fraction: float | None
    device_total_mb: int | None
    note: str


@dataclass(frozen=True)
class MemoryUsage:
    """Measured memory of this replica process, MiB."""

    device: str
    peak_mb: float
    current_mb: float
    source: str

    def over(self, budget_mb: int) -> bool:
        """Whether the peak went past a budget."""
        return self.peak_mb > budget_mb


def budget_from_env(default: int | None = None) -> int | None:
    """The budget the planner shipped in ``JUSTNEWS_REPLICA_BUDGET_MB``, or ``default``."""
    raw = os.environ.get(BUDGET_ENV)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{BUDGET_ENV} ({raw!r}) must be a whole number of MiB") from exc
    if value <= 0:
        raise ValueError(f"{BUDGET_ENV} ({value}) must be > 0")
    return value


def context_from_env(default: int = 0) -> int:
    """The CUDA-context part of the budget (``JUSTNEWS_REPLICA_CONTEXT_MB``), or ``default``."""
    raw = os.environ.get(CONTEXT_ENV)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{CONTEXT_ENV} ({raw!r}) must be a whole number of MiB") from exc
    if value < 0:
        raise ValueError(f"{CONTEXT_ENV} ({value}) must be >= 0")
    return value


def _cuda_index(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    _, _, idx = device.partition(":")
    return int(idx) if idx else torch.cuda.current_device()


def apply_replica_budget(budget_mb: int, device: str = "cuda", *, context_mb: int = 0) -> BudgetStatus:
    """Cap this process's CUDA allocations at ``budget_mb - context_mb`` on ``device``.

    Args:
        budget_mb: the replica's planned memory (``DeploymentPlan.memory_budget_mb``), MiB.
        device: 'cuda', 'cuda:N' or 'cpu'.
        context_mb: the part of the budget torch's allocator never sees (the CUDA context,
            ``DeploymentPlan.memory.context_mb``), so the cap leaves it out.

    Returns:
        A :class:`BudgetStatus`; ``enforced`` is False on the CPU, where Ray's ``memory`` request is the
        only (logical) limit and :func:`measured_usage` reports RSS against the budget instead.

    Raises:
        ValueError: the budget is not positive, or larger than the whole device.
    """
    if budget_mb <= 0 or not 0 <= context_mb < budget_mb:
        raise ValueError(f"budget_mb ({budget_mb}) must be > 0 and > context_mb ({context_mb}) >= 0")
    index = _cuda_index(device)
    if index is None:
        return BudgetStatus(budget_mb, device, False, None, None,
                            "no CUDA device: budget is reported against process RSS, not enforced")
    import torch

    total = torch.cuda.get_device_properties(index).total_memory
    fraction = (budget_mb - context_mb) * MIB / total
    if budget_mb * MIB > total:
        raise ValueError(f"budget_mb ({budget_mb}) exceeds the device's {total // MIB} MiB on cuda:{index}")
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return BudgetStatus(budget_mb, f"cuda:{index}", True, fraction, total // MIB,
                        f"torch.cuda.set_per_process_memory_fraction({fraction:.4f}, {index})")


def _rss_mb() -> tuple[float, float]:
    # ru_maxrss is KiB on Linux but bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (MIB if sys.platform == "darwin" else 1024)
    current = peak
    try:
        with open("/proc/self/statm") as fh:
            current = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError, IndexError):
        pass
    return peak, current


def measured_usage(device: str = "cuda") -> MemoryUsage:
    """Peak and current memory of this process: torch's CUDA allocator on a GPU, else process RSS."""
    index = _cuda_index(device)
    if index is None:
        peak, current = _rss_mb()
        return MemoryUsage("cpu", round(peak, 1), round(current, 1), "process RSS")
    import torch

    return MemoryUsage(f"cuda:{index}", round(torch.cuda.max_memory_allocated(index) / MIB, 1),
                       round(torch.cuda.memory_allocated(index) / MIB, 1), "torch.cuda.max_memory_allocated")
