"""Base pools per (base, variant): which BaseLLM pool serves each agent, and the plan of every pool.

An agent that runs on a shared base names it in the agent map (``base``): the text agents the text base
(``base_models@<version>``), the newsreader a named vision-language base (``base_models/<name>@<version>``).
A pool loads one base, and the map says, per agent, which load variants are acceptable
(``variant_preference``, best first) and whether quantised weights are (``allow_quantized``). The rules, in
order:

1. **An agent's pool** is on its own base, of the first variant of its ``variant_preference`` that the base
   offers, that ``allow_quantized`` permits, and whose replica (weights + KV cache + context + one adapter
   slot) fits the cluster's capacity basis (the smallest GPU, or the largest CPU node). On a CPU-only
   cluster ``fp32`` moves ahead of ``bf16`` / ``fp16`` when the agent lists it: CPUs have no fast
   half-precision matmul, and the tiny default's adapters are trained in fp32. No variant fits: the plan is
   refused.
2. **Agents on the same base and variant share one pool**, a Serve deployment that multiplexes all their
   adapters: ``BaseLLM-<variant>`` on the text base (``BaseLLM-bnb-int8``, ``BaseLLM-bf16`` ...),
   ``BaseLLM-<name>-<variant>`` on a named base (``BaseLLM-llava_tiny-fp32``). A pool exists only if some
   agent needs it. Each pool is a :class:`~cluster.demand.DeploymentDemand` sized by the planner from its
   own base's manifest figure for its own variant; a vision base's KV cache also holds the image tokens
   of each sequence (:mod:`cluster.sizing`).
3. **Routes between pools** follow the map: an agent's route is its own pool first, then every other pool
   *of its base* whose variant is in its ``variant_preference`` (and allowed), in that order. An agent never
   routes to another base's pool, and a never-quantised agent never has a quantised pool on its route, even
   when its own pool is down: it takes the next step of its fallback chain instead (the bare base on its
   pool, then the legacy heuristic).
4. **One pool per base when the preferred ones do not fit together** (e.g. a bf16 and an int8 pool of
   Mistral-7B on one 24 GB GPU): for each base with several pools, every agent of that base moves to the
   variant all of them accept that most of them already had, so the inventory serves everyone rather than
   nobody. No such variant for any base, or still no fit: the plan is refused with the numbers.

Pure logic, no Ray, no store access beyond the facts passed in (:func:`needs_from_map` reads them).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .demand import QUANTIZED, AdapterFacts, BaseFacts, DeploymentDemand, Variant, adapter_facts_from_store, \
    base_facts_from_store
from .errors import CapacityError, DemandError, NoVariantFitsError
from .inventory import Inventory
from .planner import Plan, capacity_basis, plan
from .policy import PlacementPolicy
from .sizing import variant_shortfall

__all__ = ["POOL_PREFIX", "TEXT_BASE", "base_name", "pool_name", "is_pool_name", "AgentNeed", "Pool", "PoolLayout",
           "assign_pools", "pool_demands", "needs_from_map", "plan_pools"]

POOL_PREFIX = "BaseLLM-"
TEXT_BASE = "base_models"  # the text base's namespace; a named base's is 'base_models/<name>'
_Frozen = ConfigDict(extra="forbid", frozen=True)
_VARIANTS = "|".join(map(re.escape, get_args(Variant)))
_POOL_NAME = re.compile(rf"^{POOL_PREFIX}(?:[a-z][a-z0-9_]{{0,63}}-)?(?:{_VARIANTS})$")
Bases = BaseFacts | Mapping[str, BaseFacts]


def _namespace(ref: str | None) -> str:
    return ref.partition("@")[0] if ref else TEXT_BASE


def base_name(ref: str | None) -> str | None:
    """The name of a named base ref (``'llava_tiny'`` for ``base_models/llava_tiny@v1``); None for the text base."""
    _, sep, name = _namespace(ref).partition("/")
    return name if sep else None


def pool_name(variant: str, base: str | None = None) -> str:
    """The Serve deployment name of the pool that serves ``variant`` of ``base`` (a base ref): ``BaseLLM-<variant>``
    on the text base (or ``base`` None), ``BaseLLM-<name>-<variant>`` on a named base."""
    name = base_name(base)
    return f"{POOL_PREFIX}{variant}" if name is None else f"{POOL_PREFIX}{name}-{variant}"


def is_pool_name(name: str) -> bool:
    """Whether ``name`` is one :func:`pool_name` can give (any variant, any legal base name)."""
    return bool(_POOL_NAME.match(name))


class AgentNeed(BaseModel):
    """What one agent of the map asks of its base (the map's fields, facts resolved)."""

    model_config = _Frozen

    agent: str = Field(min_length=1, description="Agent name.")
    variant_preference: tuple[Variant, ...] = Field(min_length=1, description="Acceptable variants, best first.")
    allow_quantized: bool = Field(description="Whether bnb-int8 / bnb-4bit weights are acceptable.")
    adapters: tuple[AdapterFacts, ...] = Field(default=(), description="The agent's adapters (all its tasks).")
    base: str | None = Field(default=None, description="The base the agent runs on (its map entry's, resolved); "
                             "None: the only base planned, else the text base.")

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
    """One base pool: a base and variant, the agents it serves first, and their adapters."""

    model_config = _Frozen

    name: str = Field(description="Serve deployment name, 'BaseLLM-<variant>' or 'BaseLLM-<base name>-<variant>'.")
    variant: Variant = Field(description="The base variant every replica of the pool loads.")
    agents: tuple[str, ...] = Field(min_length=1, description="Agents whose own pool this is.")
    adapters: tuple[str, ...] = Field(default=(), description="Adapter refs the pool preloads (its agents').")
    reason: str = Field(description="Why these agents landed on this variant.")
    base_ref: str | None = Field(default=None, description="The base every replica loads; None when not known "
                                 "(a layout built without facts).")

    @property
    def quantized(self) -> bool:
        """Whether the pool's weights are bitsandbytes-quantised."""
        return self.variant in QUANTIZED


class PoolLayout(BaseModel):
    """Every pool, and each agent's route over them (its own pool first)."""

    model_config = _Frozen

    pools: tuple[Pool, ...] = Field(min_length=1, description="The pools: the text base's first, the most agents "
                                    "first within a base.")
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
        """Refuse a layout (e.g. read back from an emitted config) that breaks an agent's preferences or base.

        Raises:
            DemandError: an agent has no route, or its route names a pool of another base or of a variant it
                does not accept.
        """
        problems = []
        for need in needs:
            route = self.routes.get(need.agent)
            if not route:
                problems.append(f"agent {need.agent!r} has no pool")
                continue
            for name in route:
                pool = self.pool(name)
                variant = pool.variant
                if need.base is not None and pool.base_ref is not None \
                        and _namespace(pool.base_ref) != _namespace(need.base):
                    problems.append(f"agent {need.agent!r} may not use pool {name!r}: it serves {pool.base_ref}, "
                                    f"the agent runs on {need.base}")
                elif variant not in need.variant_preference or (variant in QUANTIZED and not need.allow_quantized):
                    problems.append(f"agent {need.agent!r} may not use pool {name!r} ({variant}): it accepts "
                                    f"{list(need.variant_preference)}, allow_quantized={need.allow_quantized}")
        if problems:
            raise DemandError("the placement's pools do not fit the agent map: " + "; ".join(problems))


def _by_namespace(bases: Bases) -> dict[str, BaseFacts]:
    """The facts of each base, by namespace (one version each: a pool's name is per base, not per version)."""
    out: dict[str, BaseFacts] = {}
    for facts in [bases] if isinstance(bases, BaseFacts) else bases.values():
        known = out.setdefault(_namespace(facts.ref), facts)
        if known.ref != facts.ref:
            raise DemandError(f"two versions of one base, {known.ref} and {facts.ref}: its pools serve one version")
    if not out:
        raise DemandError("no base facts to place pools on")
    return out


def _base_of(need: AgentNeed, bases: dict[str, BaseFacts]) -> BaseFacts:
    if need.base is None and len(bases) == 1:
        return next(iter(bases.values()))
    try:
        return bases[_namespace(need.base)]
    except KeyError:
        raise DemandError(f"agent {need.agent!r}: no facts for its base {need.base or TEXT_BASE} "
                          f"(have {sorted(b.ref for b in bases.values())})") from None


def _base_order(refs: Iterable[str]) -> list[str]:
    """The text base first, then the named bases by name."""
    return sorted(set(refs), key=lambda r: (base_name(r) is not None, base_name(r) or ""))


def _fits(need: AgentNeed, variant: str, base: BaseFacts, policy: PlacementPolicy, device: str,
          capacity: tuple[int, str] | None) -> str | None:
    """None when one replica of ``variant`` fits the basis, else why not."""
    if capacity is None:
        return None
    one = DeploymentDemand(name=need.agent, base=base, adapters=need.adapters[:1], variant_preference=(variant,),
                           allow_quantized=variant in QUANTIZED)
    return variant_shortfall(one, policy, variant, device, capacity[0])


def assign_pools(needs: Sequence[AgentNeed], bases: Bases, *, policy: PlacementPolicy | None = None,
                 device: str = "cpu", capacity: tuple[int, str] | None = None) -> PoolLayout:
    """Put every agent on a pool of its base (module rules 1-3).

    Args:
        needs: the agents.
        bases: the one base they share, or ``{ref: facts}`` of every base an agent names (``AgentNeed.base``).
        policy: the placement policy (KV cache and context figures for the fit check).
        device: 'cuda' or 'cpu' (the CPU rule of rule 1).
        capacity: ``(usable MiB, label)`` one replica must fit; None skips the fit check (no inventory).

    Raises:
        NoVariantFitsError: an agent accepts no variant its base offers that fits, with each reason.
        DemandError: no agents, or an agent's base has no facts.
    """
    if not needs:
        raise DemandError("no agents to place on a base pool")
    policy = policy or PlacementPolicy()
    by_ns = _by_namespace(bases)
    chosen: dict[str, tuple[str, str, str]] = {}  # agent -> (base ref, variant, reason)
    for need in needs:
        base = _base_of(need, by_ns)
        skipped = []
        for variant in need.acceptable(device):
            if variant not in base.approx_vram_mb:
                skipped.append(f"{variant} not offered by {base.ref}")
                continue
            why_not = _fits(need, variant, base, policy, device, capacity)
            if why_not is None:
                first = "first acceptable variant" if not skipped else "skipped " + "; ".join(skipped)
                chosen[need.agent] = (base.ref, variant, first)
                break
            skipped.append(why_not)
        else:
            quantized = "" if need.allow_quantized else " (allow_quantized is false)"
            raise NoVariantFitsError(f"agent {need.agent!r}: none of {list(need.variant_preference)}{quantized} "
                                     f"can be served on {base.ref}: " + "; ".join(skipped))
    pools = []
    for ref in _base_order(c[0] for c in chosen.values()):
        by_variant: dict[str, list[AgentNeed]] = {}
        for need in needs:
            if chosen[need.agent][0] == ref:
                by_variant.setdefault(chosen[need.agent][1], []).append(need)
        for variant, members in sorted(by_variant.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            adapters = sorted({a.ref for n in members for a in n.adapters})
            reasons = "; ".join(f"{n.agent}: {chosen[n.agent][2]}" for n in members)
            pools.append(Pool(name=pool_name(variant, ref), variant=variant, agents=tuple(n.agent for n in members),
                              adapters=tuple(adapters), reason=reasons, base_ref=ref))
    routes = {}
    for need in needs:
        ref, variant, _ = chosen[need.agent]
        own = pool_name(variant, ref)
        mine = {p.variant: p.name for p in pools if p.base_ref == ref}
        others = [mine[v] for v in need.acceptable(device) if v in mine and mine[v] != own]
        routes[need.agent] = (own, *others)
    return PoolLayout(pools=tuple(pools), routes=routes)


def pool_demands(layout: PoolLayout, bases: Bases, adapters: Mapping[str, AdapterFacts],
                 **overrides: Any) -> list[DeploymentDemand]:
    """One demand per pool, pinned to its base and variant; ``overrides`` (min_replicas ...) apply to each."""
    by_ns = _by_namespace(bases)
    out = []
    for p in layout.pools:
        only = p.base_ref is None and len(by_ns) == 1
        base = next(iter(by_ns.values())) if only else by_ns.get(_namespace(p.base_ref))
        if base is None:
            raise DemandError(f"pool {p.name}: no facts for its base {p.base_ref}")
        out.append(DeploymentDemand(name=p.name, base=base, adapters=tuple(adapters[r] for r in p.adapters),
                                    variant_preference=(p.variant,), allow_quantized=p.quantized, **overrides))
    return out


def needs_from_map(agent_map: Any, store: Any) -> tuple[dict[str, BaseFacts], list[AgentNeed]]:
    """Every base's facts (by resolved ref) and every served agent's need, from a loaded agent map and a
    ModelStore. The agents are those that run on a shared base: the llm agents, and a multimodal agent
    whose entry names a ``base`` (the newsreader on a vision-language base).

    Raises:
        DemandError: a base is not in the store (naming the agent and the ref), or the agents name two
            versions of one base.
    """
    entries = {n: e for n, e in sorted(agent_map.agents.items()) if e.served and getattr(e, "base", None)}
    resolved: dict[str, str] = {}
    for name, e in entries.items():
        try:
            resolved[name] = str(store.resolve(e.base).ref)
        except (LookupError, ValueError, OSError) as exc:  # modelstore's NotFoundError / RefError
            raise DemandError(f"agent {name!r}: its base {e.base!r} is not in the ModelStore: {exc}") from None
    versions: dict[str, set[str]] = {}
    for ref in resolved.values():
        versions.setdefault(_namespace(ref), set()).add(ref)
    for namespace, refs in versions.items():
        if len(refs) > 1:
            names = sorted(n for n, r in resolved.items() if r in refs)
            raise DemandError(f"the agents {names} name {sorted(refs)}: the pools of {namespace} serve one version")
    bases = {ref: base_facts_from_store(store, ref) for ref in _base_order(resolved.values())}
    needs = []
    for name, e in entries.items():
        refs = sorted({r for r in [e.adapter, *(e.task_adapters or {}).values()] if r})
        needs.append(AgentNeed(agent=name, variant_preference=tuple(e.variant_preference),
                               allow_quantized=e.allow_quantized, base=resolved[name],
                               adapters=tuple(_facts(store, name, r) for r in refs)))
    return bases, needs


def _facts(store: Any, agent: str, ref: str) -> AdapterFacts:
    # Keep the map's ref ('@current'): replicas pin it when they preload, so a promote needs no re-plan.
    try:
        size = adapter_facts_from_store(store, ref).size_bytes
    except (LookupError, ValueError, OSError) as exc:
        raise DemandError(f"agent {agent!r}: its adapter {ref!r} is not in the ModelStore: {exc}") from None
    return AdapterFacts(ref=ref, size_bytes=size)


def _one_pool(needs: Sequence[AgentNeed], pools: Sequence[Pool], base: BaseFacts, policy: PlacementPolicy,
              device: str, capacity: tuple[int, str], inventory: str) -> Pool | None:
    """Rule 4 for one base's agents and pools: one pool of a variant every agent accepts (the one most agents
    already had); None when there is no such variant or only one pool."""
    if len(pools) < 2:
        return None
    common = [v for v in needs[0].acceptable(device) if v in base.approx_vram_mb
              and all(v in n.acceptable(device) and _fits(n, v, base, policy, device, capacity) is None for n in needs)]
    if not common:
        return None
    had = {p.variant: len(p.agents) for p in pools}
    variant = max(common, key=lambda v: (had.get(v, 0), -common.index(v)))
    reason = (f"one pool: the preferred pools {[p.name for p in pools]} do not fit {inventory} together, "
              f"and {variant} is acceptable to every agent")
    return Pool(name=pool_name(variant, base.ref), variant=variant, agents=tuple(n.agent for n in needs),
                adapters=tuple(sorted({a.ref for n in needs for a in n.adapters})), reason=reason, base_ref=base.ref)


def _one_pool_per_base(needs: Sequence[AgentNeed], layout: PoolLayout, bases: dict[str, BaseFacts],
                       policy: PlacementPolicy, device: str, capacity: tuple[int, str],
                       inventory: str) -> PoolLayout | None:
    """Rule 4: each base whose pools can become one does; None when no base's can."""
    pools: list[Pool] = []
    routes = dict(layout.routes)
    merged_any = False
    for ref in _base_order(p.base_ref for p in layout.pools):
        base = bases[_namespace(ref)]
        own = [p for p in layout.pools if p.base_ref == ref]
        members = [n for n in needs if _base_of(n, bases).ref == ref]
        merged = _one_pool(members, own, base, policy, device, capacity, inventory)
        if merged is None:
            pools += own
            continue
        merged_any = True
        pools.append(merged)
        routes.update({n.agent: (merged.name,) for n in members})
    return PoolLayout(pools=tuple(pools), routes=routes) if merged_any else None


def plan_pools(needs: Sequence[AgentNeed], bases: Bases, inventory: Inventory,
               policy: PlacementPolicy | None = None, **overrides: Any) -> tuple[PoolLayout, Plan]:
    """Assign the pools on ``inventory``'s capacity basis, then plan them together.

    Args:
        needs: the agents.
        bases: the one base they share, or ``{ref: facts}`` of every base an agent names.
        inventory: the cluster.
        policy: the placement policy.
        overrides: DeploymentDemand fields for every pool (min_replicas ...).

    Returns:
        The layout and the plan (one :class:`~cluster.planner.DeploymentPlan` per pool, same names).
    """
    policy = policy or PlacementPolicy()
    by_ns = _by_namespace(bases)
    device, basis_mb, label = capacity_basis(inventory, policy)
    layout = assign_pools(needs, by_ns, policy=policy, device=device, capacity=(basis_mb, label))
    facts = {a.ref: a for n in needs for a in n.adapters}
    try:
        result = plan(inventory, pool_demands(layout, by_ns, facts, **overrides), policy)
    except CapacityError as exc:
        merged = _one_pool_per_base(needs, layout, by_ns, policy, device, (basis_mb, label), inventory.name)
        if merged is None:
            raise
        try:
            result = plan(inventory, pool_demands(merged, by_ns, facts, **overrides), policy)
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
