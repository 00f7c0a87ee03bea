"""The cluster's accelerator inventory: nodes, their GPUs and memory, as the planner sees them.

An inventory comes from a YAML file (``cluster/inventories/*.yaml``) or from a running Ray cluster
(:func:`cluster.discover.discover_from_ray`). The YAML form::

    name: rtx3090-2node
    nodes:
      - name: gpu-a
        cpus: 16              # optional: replicas also need num_cpus; None = not checked
        memory_gb: 64         # host memory Ray may schedule (memory_mb also accepted)
        gpus:                 # either a list of GPUs ...
          - {memory_mb: 24576, model: NVIDIA GeForce RTX 3090}
      - name: gpu-b
        cpus: 16
        memory_gb: 64
        gpu_count: 1          # ... or a count plus one size for all
        gpu_memory_mb: 24576

A node without GPUs is a CPU node; an inventory without any GPU is planned in CPU mode (memory
requests instead of fractional GPUs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InventoryError

__all__ = ["GPU", "Node", "Inventory", "load_inventory", "bundled_inventories", "BUNDLED_DIR"]

BUNDLED_DIR = Path(__file__).with_name("inventories")

_Strict = ConfigDict(extra="forbid", frozen=True)


class GPU(BaseModel):
    """One accelerator of a node."""

    model_config = _Strict

    index: int = Field(ge=0, description="Index of the GPU on its node (CUDA device ordinal).")
    memory_mb: int = Field(gt=0, description="Total device memory in MiB (nvidia-smi's figure).")
    model: str | None = Field(default=None, description="Product name, informational.")


class Node(BaseModel):
    """One machine of the cluster."""

    model_config = _Strict

    name: str = Field(min_length=1, description="Node name (hostname or Ray node id).")
    cpus: float | None = Field(default=None, ge=0, description="Schedulable CPUs; None leaves CPUs unchecked.")
    memory_mb: int | None = Field(
        default=None, gt=0, description="Schedulable host memory in MiB; required for CPU-only nodes."
    )
    gpus: tuple[GPU, ...] = Field(default=(), description="The node's GPUs, in device order.")

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        # YAML authors think in GB and "N GPUs of X MiB"; normalise both to the canonical fields here.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "memory_gb" in data:
            if data.get("memory_mb") is not None:
                raise ValueError(f"node {data.get('name')!r}: give memory_gb or memory_mb, not both")
            data["memory_mb"] = int(float(data.pop("memory_gb")) * 1024)
        if "gpu_count" in data or "gpu_memory_mb" in data:
            if data.get("gpus"):
                raise ValueError(f"node {data.get('name')!r}: give gpus or gpu_count/gpu_memory_mb, not both")
            count, mb = data.pop("gpu_count", None), data.pop("gpu_memory_mb", None)
            if count is None or mb is None:
                raise ValueError(f"node {data.get('name')!r}: gpu_count and gpu_memory_mb go together")
            model = data.pop("gpu_model", None)
            data["gpus"] = [{"index": i, "memory_mb": mb, "model": model} for i in range(int(count))]
        elif data.get("gpus"):
            data["gpus"] = [({"index": i, **g} if isinstance(g, dict) and "index" not in g else g)
                            for i, g in enumerate(data["gpus"])]
        return data

    @model_validator(mode="after")
    def _rules(self) -> "Node":
        indices = [g.index for g in self.gpus]
        if len(indices) != len(set(indices)):
            raise ValueError(f"node {self.name!r} lists GPU index twice: {indices}")
        if not self.gpus and self.memory_mb is None:
            raise ValueError(f"node {self.name!r} has no GPUs and no memory_mb: nothing to place replicas on")
        return self


class Inventory(BaseModel):
    """Every node the planner may place replicas on."""

    model_config = _Strict

    name: str = Field(default="inventory", description="Name shown in plans.")
    nodes: tuple[Node, ...] = Field(min_length=1, description="The cluster's nodes.")

    @model_validator(mode="after")
    def _rules(self) -> "Inventory":
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node names must be unique; repeated: {dupes}")
        return self

    @property
    def has_gpus(self) -> bool:
        """Whether the planner works in GPU mode (fractional num_gpus) rather than CPU mode."""
        return any(n.gpus for n in self.nodes)

    @property
    def gpus(self) -> list[tuple[Node, GPU]]:
        """Every (node, GPU) pair in inventory order."""
        return [(n, g) for n in self.nodes for g in n.gpus]

    def summary(self) -> str:
        """One line: '2 nodes, 2 GPUs (2 x 24576 MiB)'."""
        gpus = [g.memory_mb for _, g in self.gpus]
        if not gpus:
            mem = sum(n.memory_mb or 0 for n in self.nodes)
            return f"{len(self.nodes)} CPU node(s), {mem} MiB schedulable memory"
        sizes = ", ".join(f"{gpus.count(mb)} x {mb} MiB" for mb in sorted(set(gpus), reverse=True))
        return f"{len(self.nodes)} node(s), {len(gpus)} GPU(s) ({sizes})"


def bundled_inventories() -> list[str]:
    """Names of the example inventories shipped in ``cluster/inventories``."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def load_inventory(source: str | Path) -> Inventory:
    """Load an inventory from a YAML file, or by the name of a bundled one (``rtx3090-2node``).

    Raises:
        InventoryError: the file is missing, not YAML, or does not validate.
    """
    path = Path(source)
    if not path.exists() and (BUNDLED_DIR / f"{source}.yaml").exists():
        path = BUNDLED_DIR / f"{source}.yaml"
    if not path.is_file():
        raise InventoryError(f"inventory {str(source)!r} is neither a file nor one of {bundled_inventories()}")
    try:
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict):
            data.setdefault("name", path.stem)
        return Inventory.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise InventoryError(f"inventory {str(path)!r} is invalid: {exc}") from exc
