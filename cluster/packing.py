"""Best-fit bin packing of replicas onto GPUs (or CPU nodes), in the units Ray itself schedules.

In GPU mode a bin is one GPU with 10,000 units (Ray's fractional GPU precision is 1e-4) and a replica
asks for ``ceil(replica_mb / basis_mb * 10000)`` units, where ``basis_mb`` is the usable memory of the
smallest GPU. Any set of replicas whose units fit a GPU therefore fits its memory, whichever GPU Ray
picks -- the guarantee does not depend on Ray choosing our packing. In CPU mode a bin is a node and
units are MiB of its usable memory. CPUs are a second, per-node dimension when the inventory gives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GPU_UNITS", "Bin", "Packer"]

GPU_UNITS = 10_000


@dataclass
class Bin:
    """One GPU (or CPU node) being filled."""

    node: str
    gpu: int | None
    capacity: int
    memory_mb: int
    usable_mb: int
    used: int = 0
    used_mb: int = 0
    replicas: list[tuple[str, int, bool]] = field(default_factory=list)  # (deployment, index, is_minimum)

    @property
    def free(self) -> int:
        return self.capacity - self.used

    @property
    def label(self) -> str:
        return self.node if self.gpu is None else f"{self.node}:gpu{self.gpu}"


class Packer:
    """Places replicas one at a time on the bin that fits them most tightly (best fit)."""

    def __init__(self, bins: list[Bin], node_millicpus: dict[str, int | None], max_per_bin: int | None = None):
        self.bins = bins
        self.max_per_bin = max_per_bin
        self._cpus = dict(node_millicpus)  # remaining per node; None = not tracked

    def place(self, deployment: str, index: int, units: int, memory_mb: int, millicpus: int,
              is_minimum: bool) -> Bin | None:
        """Place one replica; return its bin, or None when no bin can take it (nothing changes then)."""
        fitting = [b for b in self.bins if b.free >= units
                   and (self.max_per_bin is None or len(b.replicas) < self.max_per_bin)
                   and (self._cpus[b.node] is None or self._cpus[b.node] >= millicpus)]
        if not fitting:
            return None
        # Tightest fit first keeps large holes for large replicas; ties go to inventory order (stable).
        best = min(fitting, key=lambda b: b.free - units)
        best.used += units
        best.used_mb += memory_mb
        best.replicas.append((deployment, index, is_minimum))
        if self._cpus[best.node] is not None:
            self._cpus[best.node] -= millicpus
        return best

    @property
    def free_units(self) -> int:
        return sum(b.free for b in self.bins)
