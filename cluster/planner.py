"""The placement planner: inventory + demands + policy -> a Plan of Serve options per deployment.

Pure logic, no Ray import. The rules, in order:

1. **Capacity basis.** GPU mode: a replica must fit the *smallest* GPU's usable memory (memory minus
   headroom), because Ray's fractional ``num_gpus`` is logical and Ray may put a replica on any GPU.
   ``num_gpus`` is the replica's memory over that basis, rounded up to Ray's 1e-4 precision, so the
   fractions Ray packs onto one GPU never add up to more memory than it has. (A mixed inventory thus
   under-uses its larger GPUs; split it per GPU class to use them fully.) CPU mode: a replica must fit
   one node's usable memory and asks for it in ``ray_actor_options["memory"]`` (bytes).
2. **Sizing.** :func:`cluster.sizing.size_replica` picks the variant and the adapter slots.
3. **Minimums first.** Every deployment's ``min_replicas`` is placed, largest replicas first, each on
   the GPU/node it fits most tightly. If one does not fit, the plan is refused with the numbers. Then,
   while they fit, each deployment gets up to ``policy.preferred_min_replicas`` (one at a time,
   round-robin); those become its autoscaling ``min_replicas`` too.
4. **max_replicas: fair share of what is left.** The spare capacity is handed out one replica at a time,
   round-robin over the deployments in the order given, until no further replica fits anywhere (or a
   demand's own max_replicas is reached). Hence *all deployments at their max_replicas fit at once*:
   autoscaling can never ask for a replica the cluster cannot hold, and no GPU is overcommitted.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .autoscaling import POLICY_IMPORT_PATH
from .budget import BUDGET_ENV, CONTEXT_ENV
from .demand import MIB, DeploymentDemand
from .errors import CapacityError, DemandError, InventoryError
from .inventory import Inventory
from .packing import GPU_UNITS, Bin, Packer
from .policy import PlacementPolicy
from .sizing import ReplicaMemory, ReplicaSizing, size_replica

__all__ = ["Placement", "BinUsage", "DeploymentPlan", "Plan", "plan", "capacity_basis", "BUDGET_ENV",
           "MAX_REPLICAS_RULE"]

MAX_REPLICAS_RULE = ("minimums placed first (largest first, best fit); spare capacity then shared one replica "
                     "at a time round-robin, so every deployment at max_replicas fits at once")

_Frozen = ConfigDict(extra="forbid", frozen=True)


class Placement(BaseModel):
    """One replica of the packing witness: where it can land without overcommitting anything."""

    model_config = _Frozen

    deployment: str = Field(description="Deployment name.")
    replica: int = Field(ge=0, description="Replica number within the deployment.")
    node: str = Field(description="Node name.")
    gpu: int | None = Field(description="GPU index on the node; None in CPU mode.")
    memory_mb: int = Field(description="Replica memory, MiB.")
    minimum: bool = Field(description="Whether the replica is one of the deployment's min_replicas.")


class BinUsage(BaseModel):
    """How full one GPU (or CPU node) is when every deployment runs at max_replicas."""

    model_config = _Frozen

    node: str = Field(description="Node name.")
    gpu: int | None = Field(description="GPU index; None in CPU mode.")
    memory_mb: int = Field(description="Total memory of the GPU (node), MiB.")
    usable_mb: int = Field(description="Memory minus headroom, MiB.")
    used_mb: int = Field(description="Sum of the replicas' memory, MiB.")
    gpu_fraction_used: float | None = Field(description="Sum of the replicas' num_gpus; None in CPU mode.")
    replicas: tuple[str, ...] = Field(description="'name#i' of each replica placed here.")


class DeploymentPlan(BaseModel):
    """Everything one Serve deployment is configured with, and why."""

    model_config = _Frozen

    name: str = Field(description="Serve deployment name.")
    base_ref: str = Field(description="Base ref the replicas load.")
    device: Literal["cuda", "cpu"] = Field(description="Where the base runs.")
    variant: str = Field(description="Chosen base variant.")
    variant_reason: str = Field(description="Why that variant.")
    adapters: tuple[str, ...] = Field(description="Adapter refs the deployment serves.")
    memory: ReplicaMemory = Field(description="Replica memory breakdown, MiB.")
    num_gpus: float | None = Field(description="Fractional GPU per replica; None in CPU mode.")
    num_cpus: float = Field(description="CPUs per replica.")
    memory_bytes: int | None = Field(description="Ray memory request per replica (CPU mode), bytes.")
    max_num_models_per_replica: int = Field(ge=1, description="Adapters resident per replica (multiplex LRU).")
    models_reason: str = Field(description="Which limit set max_num_models_per_replica.")
    max_batch_size: int = Field(ge=1, description="Sequences decoded at once (user_config.max_batch_size).")
    max_ongoing_requests: int = Field(ge=1, description="Requests Serve sends one replica.")
    target_ongoing_requests: float = Field(gt=0, description="Autoscaling target per replica.")
    min_replicas: int = Field(ge=0, description="Autoscaling minimum: as asked, raised to the policy's "
                              "preferred_min_replicas where they fit.")
    max_replicas: int = Field(ge=1, description="Autoscaling maximum, what the inventory holds.")
    upscale_delay_s: float | None = Field(default=None, description="Autoscaling upscale delay, if set.")
    downscale_delay_s: float | None = Field(default=None, description="Autoscaling downscale delay, if set.")
    look_back_period_s: float | None = Field(default=None, description="Autoscaling look-back window, if set.")
    reserved_mb: tuple[int, ...] = Field(default=(), description="MiB reserved for this deployment on each GPU "
                                         "(node) that holds it at max_replicas; the memory-capped policy's input.")
    memory_autoscaling: bool = Field(default=True, description="Whether autoscaling_config names the memory-capped "
                                     "custom policy (cluster.autoscaling).")
    headroom_mb: int = Field(default=0, description="The policy's headroom_mb (the custom policy needs it).")
    headroom_fraction: float = Field(default=0.05, description="The policy's headroom_fraction.")

    @property
    def memory_budget_mb(self) -> int:
        """What the replica enforces on itself (see :mod:`cluster.budget`)."""
        return self.memory.total_mb

    @property
    def autoscaling_config(self) -> dict[str, Any]:
        """Serve's autoscaling_config."""
        cfg: dict[str, Any] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                               "target_ongoing_requests": self.target_ongoing_requests}
        for key in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key)
        if self.memory_autoscaling and self.reserved_mb:
            cfg["policy"] = {"policy_function": POLICY_IMPORT_PATH, "policy_kwargs": {
                "budget_mb": self.memory_budget_mb, "reserved_mb": list(self.reserved_mb),
                "headroom_mb": self.headroom_mb, "headroom_fraction": self.headroom_fraction}}
        return cfg

    @property
    def ray_actor_options(self) -> dict[str, Any]:
        """Serve's ray_actor_options; the budget travels as an env var the replica reads at start."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus is not None:
            opts["num_gpus"] = self.num_gpus
        if self.memory_bytes is not None:
            opts["memory"] = self.memory_bytes
        opts["runtime_env"] = {"env_vars": {BUDGET_ENV: str(self.memory_budget_mb),
                                            CONTEXT_ENV: str(self.memory.context_mb)}}
        return opts

    @property
    def user_config(self) -> dict[str, Any]:
        """The BaseLLM runtime config (reconfigurable without a restart)."""
        return {"max_batch_size": self.max_batch_size, "max_num_models_per_replica": self.max_num_models_per_replica}

    def deployment_options(self) -> dict[str, Any]:
        """The BaseLLM deployment's settings: autoscaling_config, max_ongoing_requests, ray_actor_options,
        max_num_models_per_replica and user_config."""
        return {"autoscaling_config": self.autoscaling_config, "max_ongoing_requests": self.max_ongoing_requests,
                "ray_actor_options": self.ray_actor_options,
                "max_num_models_per_replica": self.max_num_models_per_replica, "user_config": self.user_config}


class Plan(BaseModel):
    """The planner's answer for one inventory, set of demands and policy."""

    model_config = _Frozen

    inventory: str = Field(description="Inventory name.")
    inventory_summary: str = Field(description="Nodes and GPUs, one line.")
    device: Literal["cuda", "cpu"] = Field(description="GPU mode or CPU mode.")
    basis_mb: int = Field(description="Usable MiB one replica must fit (smallest GPU, or largest node).")
    basis_label: str = Field(description="Which GPU/node set the basis.")
    policy: PlacementPolicy = Field(description="The policy applied.")
    max_replicas_rule: str = Field(default=MAX_REPLICAS_RULE, description="How max_replicas was shared out.")
    deployments: tuple[DeploymentPlan, ...] = Field(description="One plan per deployment, in demand order.")
    placements: tuple[Placement, ...] = Field(description="Every replica (at max_replicas) and where it fits.")
    bins: tuple[BinUsage, ...] = Field(description="Per GPU (node) usage at max_replicas.")

    def deployment(self, name: str) -> DeploymentPlan:
        """The plan of one deployment; KeyError names the known ones."""
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(f"no deployment {name!r} in the plan; have {[d.name for d in self.deployments]}")

    def options(self) -> dict[str, dict[str, Any]]:
        """``{deployment name: deployment_options()}`` for the application builder."""
        return {d.name: d.deployment_options() for d in self.deployments}


def _bins(inventory: Inventory, policy: PlacementPolicy) -> tuple[list[Bin], int, str]:
    if inventory.has_gpus:
        bins = [Bin(n.name, g.index, GPU_UNITS, g.memory_mb, policy.usable_mb(g.memory_mb)) for n, g in inventory.gpus]
        smallest = min(bins, key=lambda b: b.usable_mb)
        label = f"the smallest GPU ({smallest.label}, {smallest.memory_mb} MiB)"
    else:
        bins = [Bin(n.name, None, policy.usable_mb(n.memory_mb), n.memory_mb, policy.usable_mb(n.memory_mb))
                for n in inventory.nodes if n.memory_mb]
        smallest = max(bins, key=lambda b: b.usable_mb)  # CPU replicas may use the roomiest node
        label = f"the largest node ({smallest.label}, {smallest.memory_mb} MiB)"
    if smallest.usable_mb <= 0:
        headroom = policy.headroom_for(smallest.memory_mb)
        raise InventoryError(f"{label} has no usable memory after headroom {headroom} MiB")
    return bins, smallest.usable_mb, label


def capacity_basis(inventory: Inventory, policy: PlacementPolicy | None = None) -> tuple[Literal["cuda", "cpu"], int, str]:
    """``(device, usable MiB one replica must fit, label)`` of an inventory (rule 1 of the module docstring)."""
    policy = policy or PlacementPolicy()
    _, basis_mb, label = _bins(inventory, policy)
    return ("cuda" if inventory.has_gpus else "cpu"), basis_mb, label


def _refuse_minimums(inventory: Inventory, demands: Sequence[DeploymentDemand], sizes: dict[str, ReplicaSizing],
                     units: dict[str, int], packer: Packer, placed: int, failed: tuple[str, int]) -> CapacityError:
    name, index = failed
    total = sum(d.min_replicas for d in demands)
    need = sum(d.min_replicas * sizes[d.name].memory.total_mb for d in demands)
    usable = sum(b.usable_mb for b in packer.bins)
    alone = {d.name: sum(b.capacity // units[d.name] for b in packer.bins) for d in demands}
    units_note = (f"1 GPU = {GPU_UNITS} units" if packer.bins[0].gpu is not None else "units are MiB of node memory")
    per = ", ".join(f"{d.name} min_replicas ({d.min_replicas}) x {sizes[d.name].memory.total_mb} MiB "
                    f"[at most {alone[d.name]} fit alone]" for d in demands if d.min_replicas)
    largest_free = max(b.free for b in packer.bins)
    return CapacityError(
        f"{inventory.name} ({inventory.summary()}) cannot hold every min_replicas: placed {placed} of {total}; "
        f"{name} replica #{index} needs {units[name]} units ({sizes[name].memory.total_mb} MiB) but the largest "
        f"free space is {largest_free} units ({units_note}). "
        f"Asked: {per}; together {need} MiB against {usable} MiB usable.")


def plan(inventory: Inventory, demands: Sequence[DeploymentDemand], policy: PlacementPolicy | None = None) -> Plan:
    """Plan every deployment's variant, replica size, Ray resources and autoscaling bounds.

    Args:
        inventory: the cluster's nodes and GPUs.
        demands: the deployments, in priority order (earlier ones win ties when spare capacity is shared).
        policy: headroom, KV cache, concurrency and quantisation rules; defaults to ``PlacementPolicy()``.

    Returns:
        The :class:`Plan`.

    Raises:
        NoVariantFitsError: a deployment has no variant that fits one replica.
        CapacityError: the minimums do not fit together, or a deployment cannot get even one replica.
        DemandError: demands are empty or repeat a name.
    """
    policy = policy or PlacementPolicy()
    if not demands:
        raise DemandError("no deployments to plan")
    names = [d.name for d in demands]
    if len(names) != len(set(names)):
        raise DemandError(f"deployment names must be unique; got {names}")
    device: Literal["cuda", "cpu"] = "cuda" if inventory.has_gpus else "cpu"
    bins, basis_mb, basis_label = _bins(inventory, policy)
    sizes = {d.name: size_replica(d, policy, device=device, capacity_mb=basis_mb, capacity_label=basis_label)
             for d in demands}
    mem = {n: s.memory.total_mb for n, s in sizes.items()}
    units = {n: math.ceil(mb * GPU_UNITS / basis_mb) if device == "cuda" else mb for n, mb in mem.items()}
    if device == "cuda" and policy.max_replicas_per_gpu:
        # Ray only sees the fraction, so the per-GPU replica limit must be expressed in it to be enforced.
        floor_units = math.ceil(GPU_UNITS / policy.max_replicas_per_gpu)
        units = {n: max(u, floor_units) for n, u in units.items()}
    millicpus = round(policy.num_cpus_per_replica * 1000)
    packer = Packer(bins, {n.name: None if n.cpus is None else round(n.cpus * 1000) for n in inventory.nodes},
                    policy.max_replicas_per_gpu)

    order = {n: i for i, n in enumerate(names)}
    minimums = sorted(((d.name, i) for d in demands for i in range(d.min_replicas)),
                      key=lambda r: (-units[r[0]], order[r[0]], r[1]))
    for placed, (name, i) in enumerate(minimums):
        if packer.place(name, i, units[name], mem[name], millicpus, is_minimum=True) is None:
            raise _refuse_minimums(inventory, demands, sizes, units, packer, placed, (name, i))

    counts = {d.name: d.min_replicas for d in demands}
    # Soft minimums (policy.preferred_min_replicas): one replica at a time, round-robin, while they fit.
    # A deployment that may scale to zero (min_replicas 0) keeps that choice.
    wanted = {d.name: min(max(d.min_replicas, policy.preferred_min_replicas), d.max_replicas or 10**9)
              if d.min_replicas else 0 for d in demands}
    pending = [d for d in demands if counts[d.name] < wanted[d.name]]
    while pending:
        still = []
        for d in pending:
            if packer.place(d.name, counts[d.name], units[d.name], mem[d.name], millicpus, is_minimum=True):
                counts[d.name] += 1
                if counts[d.name] < wanted[d.name]:
                    still.append(d)
        pending = still
    floors = dict(counts)
    active = [d for d in demands if d.max_replicas is None or counts[d.name] < d.max_replicas]
    while active:
        still = []
        for d in active:
            slot = packer.place(d.name, counts[d.name], units[d.name], mem[d.name], millicpus, is_minimum=False)
            if slot is not None:
                counts[d.name] += 1
                if d.max_replicas is None or counts[d.name] < d.max_replicas:
                    still.append(d)
        active = still
    for d in demands:
        if counts[d.name] == 0:
            raise CapacityError(f"{d.name}: not one replica ({mem[d.name]} MiB) fits beside the other deployments' "
                                f"minimums on {inventory.name}; lower them or give {d.name} another GPU/node")

    reserved: dict[str, list[int]] = {d.name: [] for d in demands}
    for b in packer.bins:
        for n in reserved:
            count = sum(1 for name, _, _ in b.replicas if name == n)
            if count:
                reserved[n].append(count * mem[n])
    deployments = []
    for d in demands:
        s = sizes[d.name]
        target = d.target_ongoing_requests or policy.effective_target_ongoing
        deployments.append(DeploymentPlan(
            name=d.name, base_ref=d.base.ref, device=device, variant=s.variant, variant_reason=s.variant_reason,
            adapters=tuple(a.ref for a in d.adapters), memory=s.memory,
            num_gpus=units[d.name] / GPU_UNITS if device == "cuda" else None, num_cpus=policy.num_cpus_per_replica,
            memory_bytes=mem[d.name] * MIB if device == "cpu" else None,
            max_num_models_per_replica=s.max_num_models_per_replica, models_reason=s.models_reason,
            max_batch_size=policy.max_concurrent_sequences,
            max_ongoing_requests=max(policy.effective_max_ongoing, math.ceil(target)),
            target_ongoing_requests=target, min_replicas=floors[d.name], max_replicas=counts[d.name],
            upscale_delay_s=policy.upscale_delay_s, downscale_delay_s=policy.downscale_delay_s,
            look_back_period_s=policy.look_back_period_s, reserved_mb=tuple(reserved[d.name]),
            memory_autoscaling=policy.memory_autoscaling, headroom_mb=policy.headroom_mb,
            headroom_fraction=policy.headroom_fraction))
    placements = [Placement(deployment=n, replica=i, node=b.node, gpu=b.gpu, memory_mb=mem[n], minimum=m)
                  for b in packer.bins for n, i, m in b.replicas]
    usage = [BinUsage(node=b.node, gpu=b.gpu, memory_mb=b.memory_mb, usable_mb=b.usable_mb, used_mb=b.used_mb,
                      gpu_fraction_used=round(b.used / GPU_UNITS, 4) if device == "cuda" else None,
                      replicas=tuple(f"{n}#{i}" for n, i, _ in b.replicas)) for b in packer.bins]
    return Plan(inventory=inventory.name, inventory_summary=inventory.summary(), device=device, basis_mb=basis_mb,
                basis_label=basis_label, policy=policy, deployments=tuple(deployments),
                placements=tuple(sorted(placements, key=lambda p: (order[p.deployment], p.replica))),
                bins=tuple(usage))
