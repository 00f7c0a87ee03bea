"""Discover the inventory from a running Ray cluster (the only module of ``cluster`` that touches Ray).

Ray knows how many GPUs a node has but not how much memory each one holds, so nodes declare it, by
either convention (first match wins, per node):

1. a node label with the memory of *one* GPU in MiB:
   ``ray start --labels=justnews.io/gpu-memory-mb=24576`` (``ray.cluster_utils`` / ``ray.init``: a dict);
2. a custom resource with the memory of *all* the node's GPUs together, in MiB:
   ``ray start --resources='{"gpu_memory_mb": 49152}'`` (divided evenly over ``GPU``);
3. the ``gpu_memory_mb`` argument of :func:`discover_from_ray` (one figure for every GPU).

A node with GPUs that none of these describe is refused with its name. ``import ray`` happens inside
:func:`discover_from_ray` only, so the planner and its tests never import Ray.
"""

from __future__ import annotations

from typing import Any, Iterable

from .errors import InventoryError
from .inventory import GPU, Inventory, Node

__all__ = ["GPU_MEMORY_LABEL", "GPU_MEMORY_RESOURCE", "inventory_from_ray_nodes", "discover_from_ray"]

GPU_MEMORY_LABEL = "justnews.io/gpu-memory-mb"
GPU_MEMORY_RESOURCE = "gpu_memory_mb"
_MIB = 1024 * 1024


def _per_gpu_mb(node: dict[str, Any], gpus: int, fallback: int | None, name: str) -> int:
    labels = node.get("Labels") or {}
    if GPU_MEMORY_LABEL in labels:
        try:
            return int(labels[GPU_MEMORY_LABEL])
        except ValueError as exc:
            raise InventoryError(f"node {name}: label {GPU_MEMORY_LABEL}={labels[GPU_MEMORY_LABEL]!r} "
                                 "must be a whole number of MiB") from exc
    total = (node.get("Resources") or {}).get(GPU_MEMORY_RESOURCE)
    if total:
        return int(total) // gpus
    if fallback:
        return fallback
    raise InventoryError(f"node {name} has {gpus} GPU(s) but no memory figure: set the node label "
                         f"{GPU_MEMORY_LABEL} (MiB per GPU), the resource {GPU_MEMORY_RESOURCE} (MiB, all GPUs), "
                         "or pass gpu_memory_mb")


def inventory_from_ray_nodes(nodes: Iterable[dict[str, Any]], *, gpu_memory_mb: int | None = None,
                             name: str = "ray-cluster") -> Inventory:
    """Build an :class:`Inventory` from ``ray.nodes()`` entries (alive nodes only).

    Args:
        nodes: the ``ray.nodes()`` list (dicts with NodeName/NodeID, Alive, Resources, Labels).
        gpu_memory_mb: memory of one GPU for nodes that declare none.
        name: the inventory's name.

    Raises:
        InventoryError: no alive node, or a GPU node without a memory figure.
    """
    out = []
    for node in nodes:
        if not node.get("Alive", True):
            continue
        res = node.get("Resources") or {}
        node_name = str(node.get("NodeName") or node.get("NodeManagerHostname") or node.get("NodeID") or "node")
        if any(n.name == node_name for n in out):  # several raylets on one host share a NodeName
            node_name = f"{node_name}-{str(node.get('NodeID', len(out)))[:8]}"
        count = int(res.get("GPU", 0))
        per_gpu = _per_gpu_mb(node, count, gpu_memory_mb, node_name) if count else 0
        memory = int(res["memory"]) // _MIB if res.get("memory") else None
        out.append(Node(name=node_name, cpus=res.get("CPU"), memory_mb=memory,
                        gpus=tuple(GPU(index=i, memory_mb=per_gpu) for i in range(count))))
    if not out:
        raise InventoryError("the Ray cluster reports no alive node")
    return Inventory(name=name, nodes=tuple(out))


def discover_from_ray(address: str | None = None, *, gpu_memory_mb: int | None = None) -> Inventory:
    """Read the inventory of a running Ray cluster.

    Connects with ``ray.init(address=address or "auto")`` unless this process is already connected,
    and disconnects again only if it connected here.

    Args:
        address: Ray address; None means the running cluster (``auto``).
        gpu_memory_mb: memory of one GPU for nodes that declare none (see the module docstring).
    """
    import ray  # lazily: the planner itself never needs Ray

    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=address or "auto", logging_level="ERROR", log_to_driver=False)
    try:
        return inventory_from_ray_nodes(ray.nodes(), gpu_memory_mb=gpu_memory_mb)
    finally:
        if connected_here:
            ray.shutdown()
