"""Per-variant base pools: which BaseLLM pool serves each llm agent, and the plan of every pool.

The agent map says, per agent, which load variants are acceptable (``variant_preference``, best first)
and whether quantised weights are (``allow_quantized``). The rules, in order:

1. **An agent's pool** is the first variant of its ``variant_preference`` that the base offers, that
   ``allow_quantized`` permits, and whose replica (weights + KV cache + context + one adapter slot) fits
   the cluster's capacity basis (the smallest GPU, or the largest CPU node). On a CPU-only cluster
   ``fp32`` moves ahead of ``bf16`` / ``fp16`` when the agent lists it: CPUs have no fast half-precision
   matmul, and the tiny default's adapters are trained in fp32. No variant fits: the plan is refused.
2. **Agents on the same variant share one pool**, a Serve deployment named ``BaseLLM-<variant>``
   (``BaseLLM-bnb-int8``, ``BaseLLM-bf16`` ...) that multiplexes all their adapters. A pool exists only
   if some agent needs it. Each pool is a :class:`~cluster.demand.DeploymentDemand` sized by the planner
   from the base manifest's figure for its own variant.
3. **Routes between pools** follow the map: an agent's route is its own pool first, then every other
   pool whose variant is in its ``variant_preference`` (and allowed), in that order. A never-quantised
   agent therefore never has a quantised pool on its route, even when its own pool is down: it takes
   the next step of its fallback chain instead (the bare base on its pool, then the legacy heuristic).
4. **One pool when the preferred ones do not fit together** (e.g. a bf16 and an int8 pool of Mistral-7B on
   one 24 GB GPU): every agent moves to the variant all of them accept that most of them already had, so
   the inventory serves everyone rather than nobody. No such variant: the plan is refused with the numbers.

Pure logic, no Ray, no store access beyond the facts passed in (:func:`needs_from_map` reads them).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .demand import QUANTIZED, AdapterFacts, BaseFacts, DeploymentDemand, Variant, adapter_facts_from_store, \
    base_facts_from_store
from .errors import CapacityError, DemandError, NoVariantFitsError
from .inventory import Inventory
from .planner import Plan, capacity_basis, plan
from .policy import PlacementPolicy
from .sizing import variant_shortfall

__all__ = ["POOL_PREFIX", "pool_name", "AgentNeed", "Pool", "PoolLayout", "assign_pools", "pool_demands",
           "needs_from_map", "plan_pools"]

POOL_PREFIX = "BaseLLM-"
_Frozen = ConfigDict(extra="forbid", frozen=True)


def pool_name(variant: str) -> str:
    """The Serve deployment name of the pool that serves ``variant``."""
    return f"{POOL_PREFIX}{variant}"


class AgentNeed(BaseModel):
    """What one llm agent of the map asks of the base (the map's fields, facts resolved)."""

    model_config = _Frozen

    agent: str = Field(min_length=1, description="Agent name.")
    variant_preference: tuple[Variant, ...] = Field(min_length=1, description="Acceptable variants, best first.")
    allow_quantized: bool = Field(description="Whether bnb-int8 / bnb-4bit weights are acceptable.")
    adapters: tuple[AdapterFacts, ...] = Field(default=(), description="The agent's adapters (all its tasks).")

    def acceptable(self, device: str) -> list[str]:
        """The variants this agent accepts, in the order they are tried on ``device`` (rule 1)."""
        order = [v for v in self.variant_preference if self.allow_quantized or v not in QUANTIZED]
        if device == "cpu" and "fp32" in order:
            half = [i for i, v in enumerate(order) if v in ("bf16", "fp16")]
            if half and half[0] < order.index("fp32"):
                order.remove("fp32")
                order.insert(half[0], "fp32")
        return order


class Pool(BaseModel):
    """One base pool: a variant, the agents it serves first, and their adapters."""

    model_config = _Frozen

    name: str = Field(description="Serve deployment name, 'BaseLLM-<variant>'.")
    variant: Variant = Field(description="The base variant every replica of the pool loads.")
    agents: tuple[str, ...] = Field(min_length=1, description="Agents whose own pool this is.")
    adapters: tuple[str, ...] = Field(default=(), description="Adapter refs the pool preloads (its agents').")
    reason: str = Field(description="Why these agents landed on this variant.")

    @property
    def quantized(self) -> bool:
        """Whether the pool's weights are bitsandbytes-quantised."""
        return self.variant in QUANTIZED


class PoolLayout(BaseModel):
    """Every pool, and each agent's route over them (its own pool first)."""

    model_config = _Frozen

    pools: tuple[Pool, ...] = Field(min_length=1, description="The pools, the most agents first.")
    routes: dict[str, tuple[str, ...]] = Field(description="Agent -> pool names it may use, in order.")

    @model_validator(mode="after")
    def _consistent(self) -> "PoolLayout":
        names = {p.name for p in self.pools}
        for agent, route in self.routes.items():
            unknown = [n for n in route if n not in names]
            if not route or unknown:
                raise ValueError(f"agent {agent!r}: route {list(route)} names unknown pools {unknown} "
                                 f"(pools: {sorted(names)})")
        return self

    def pool(self, name: str) -> Pool:
        """The pool called ``name``; KeyError names the known ones."""
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(f"no pool {name!r}; pools: {[p.name for p in self.pools]}")

    def check_against(self, needs: Iterable[AgentNeed]) -> None:
        """Refuse a layout (e.g. read back from an emitted config) that breaks an agent's preferences.

        Raises:
            DemandError: an agent has no route, or its route names a pool whose variant it does not accept.
        """
        problems = []
        for need in needs:
            route = self.routes.get(need.agent)
            if not route:
                problems.append(f"agent {need.agent!r} has no pool")
                continue
            for name in route:
                variant = self.pool(name).variant
                if variant not in need.variant_preference or (variant in QUANTIZED and not need.allow_quantized):
                    problems.append(f"agent {need.agent!r} may not use pool {name!r} ({variant}): it accepts "
                                    f"{list(need.variant_preference)}, allow_quantized={need.allow_quantized}")
        if problems:
            raise DemandError("the placement's pools do not fit the agent map: " + "; ".join(problems))


def _fits(need: AgentNeed, variant: str, base: BaseFacts, policy: PlacementPolicy, device: str,
          capacity: tuple[int, str] | None) -> str | None:
    """None when one replica of ``variant`` fits the basis, else why not."""
    if capacity is None:
        return None
    one = DeploymentDemand(name=need.agent, base=base, adapters=need.adapters[:1], variant_preference=(variant,),
                           allow_quantized=variant in QUANTIZED)
    return variant_shortfall(one, policy, variant, device, capacity[0])


def assign_pools(needs: Sequence[AgentNeed], base: BaseFacts, *, policy: PlacementPolicy | None = None,
                 device: str = "cpu", capacity: tuple[int, str] | None = None) -> PoolLayout:
    """Put every agent on a pool (module rules 1-3).

    Args:
        needs: the llm agents.
        base: the base they share.
        policy: the placement policy (KV cache and context figures for the fit check).
        device: 'cuda' or 'cpu' (the CPU rule of rule 1).
        capacity: ``(usable MiB, label)`` one replica must fit; None skips the fit check (no inventory).

    Raises:
        NoVariantFitsError: an agent accepts no variant the base offers that fits, with each reason.
        DemandError: no agents.
    """
    if not needs:
        raise DemandError("no llm agents to place on a base pool")
    policy = policy or PlacementPolicy()
    chosen: dict[str, tuple[str, str]] = {}
    for need in needs:
        skipped = []
        for variant in need.acceptable(device):
            if variant not in base.approx_vram_mb:
                skipped.append(f"{variant} not offered by {base.ref}")
                continue
            why_not = _fits(need, variant, base, policy, device, capacity)
            if why_not is None:
                first = "first acceptable variant" if not skipped else "skipped " + "; ".join(skipped)
                chosen[need.agent] = (variant, first)
                break
            skipped.append(why_not)
        else:
            quantized = "" if need.allow_quantized else " (allow_quantized is false)"
            raise NoVariantFitsError(f"agent {need.agent!r}: none of {list(need.variant_preference)}{quantized} "
                                     f"can be served: " + "; ".join(skipped))
    by_variant: dict[str, list[AgentNeed]] = {}
    for need in needs:
        by_variant.setdefault(chosen[need.agent][0], []).append(need)
    pools = []
    for variant, members in sorted(by_variant.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        adapters = sorted({a.ref for n in members for a in n.adapters})
        reasons = "; ".join(f"{n.agent}: {chosen[n.agent][1]}" for n in members)
        pools.append(Pool(name=pool_name(variant), variant=variant, agents=tuple(n.agent for n in members),
                          adapters=tuple(adapters), reason=reasons))
    variants = {p.variant: p.name for p in pools}
    routes = {}
    for need in needs:
        own = pool_name(chosen[need.agent][0])
        others = [variants[v] for v in need.acceptable(device) if v in variants and variants[v] != own]
        routes[need.agent] = (own, *others)
    return PoolLayout(pools=tuple(pools), routes=routes)


def pool_demands(layout: PoolLayout, base: BaseFacts, adapters: Mapping[str, AdapterFacts],
                 **overrides: Any) -> list[DeploymentDemand]:
    """One demand per pool, pinned to its variant; ``overrides`` (min_replicas ...) apply to each."""
    return [DeploymentDemand(name=p.name, base=base, adapters=tuple(adapters[r] for r in p.adapters),
                             variant_preference=(p.variant,), allow_quantized=p.quantized, **overrides)
            for p in layout.pools]


def needs_from_map(agent_map: Any, store: Any) -> tuple[BaseFacts, list[AgentNeed]]:
    """The base facts and every served llm agent's need, from a loaded agent map and a ModelStore.

    Raises:
        DemandError: the agents name more than one base.
    """
    entries = {n: e for n, e in sorted(agent_map.agents.items()) if e.kind == "llm" and e.served}
    bases = {str(store.resolve(e.base).ref) for e in entries.values()}
    if len(bases) != 1:
        raise DemandError(f"the base pools serve one base, but the llm agents name {sorted(bases)}")
    base = base_facts_from_store(store, bases.pop())
    needs = []
    for name, e in entries.items():
        refs = sorted({r for r in [e.adapter, *(e.task_adapters or {}).values()] if r})
        needs.append(AgentNeed(agent=name, variant_preference=tuple(e.variant_preference),
                               allow_quantized=e.allow_quantized,
                               adapters=tuple(_facts(store, r) for r in refs)))
    return base, needs


def _facts(store: Any, ref: str) -> AdapterFacts:
    # Keep the map's ref ('@current'): replicas pin it when they preload, so a promote needs no re-plan.
    return AdapterFacts(ref=ref, size_bytes=adapter_facts_from_store(store, ref).size_bytes)


def _one_pool(needs: Sequence[AgentNeed], layout: PoolLayout, base: BaseFacts, policy: PlacementPolicy, device: str,
              capacity: tuple[int, str], inventory: str) -> PoolLayout | None:
    """Rule 4: when the preferred pools do not fit the inventory together, one pool of a variant every agent
    accepts (the one most agents already had); None when there is no such variant or only one pool."""
    if len(layout.pools) < 2:
        return None
    common = [v for v in needs[0].acceptable(device) if v in base.approx_vram_mb
              and all(v in n.acceptable(device) and _fits(n, v, base, policy, device, capacity) is None for n in needs)]
    if not common:
        return None
    had = {p.variant: len(p.agents) for p in layout.pools}
    variant = max(common, key=lambda v: (had.get(v, 0), -common.index(v)))
    reason = (f"one pool: the preferred pools {[p.name for p in layout.pools]} do not fit {inventory} together, "
              f"and {variant} is acceptable to every agent")
    pool = Pool(name=pool_name(variant), variant=variant, agents=tuple(n.agent for n in needs),
                adapters=tuple(sorted({a.ref for n in needs for a in n.adapters})), reason=reason)
    return PoolLayout(pools=(pool,), routes={n.agent: (pool.name,) for n in needs})


def plan_pools(needs: Sequence[AgentNeed], base: BaseFacts, inventory: Inventory,
               policy: PlacementPolicy | None = None, **overrides: Any) -> tuple[PoolLayout, Plan]:
    """Assign the pools on ``inventory``'s capacity basis, then plan them together.

    Returns:
        The layout and the plan (one :class:`~cluster.planner.DeploymentPlan` per pool, same names).
    """
    policy = policy or PlacementPolicy()
    device, basis_mb, label = capacity_basis(inventory, policy)
    layout = assign_pools(needs, base, policy=policy, device=device, capacity=(basis_mb, label))
    facts = {a.ref: a for n in needs for a in n.adapters}
    try:
        result = plan(inventory, pool_demands(layout, base, facts, **overrides), policy)
    except CapacityError as exc:
        merged = _one_pool(needs, layout, base, policy, device, (basis_mb, label), inventory.name)
        if merged is None:
            raise
        try:
            result = plan(inventory, pool_demands(merged, base, facts, **overrides), policy)
        except CapacityError:
            raise exc from None
        layout = merged
    deployments = []
    for pool in layout.pools:
        d = result.deployment(pool.name)
        if d.variant != pool.variant:  # assign_pools checked the fit with the same sizing, so this is a bug
            raise NoVariantFitsError(f"pool {pool.name}: planned {d.variant}, not its variant {pool.variant}")
        deployments.append(d.model_copy(update={"variant_reason": pool.reason}))
    return layout, result.model_copy(update={"deployments": tuple(deployments)})
