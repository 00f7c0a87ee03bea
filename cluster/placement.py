"""The placement an application applies: the planner's answer for every base pool, as data.

``justnews plan --emit-serve-config`` writes an :class:`AppPlacement` as the application's
``args.placement``; ``deployments.app.build_app`` computes the same object at build time when the config
has none (from the store and the cluster's inventory). Either way it is the one source of what each pool's
replicas load (variant, device), what memory they may use (budget incl. KV cache), how many adapters they
keep, and the Serve options they get (resources, autoscaling bounds, max_ongoing_requests). Nothing else
sizes a pool.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .pools import Pool, PoolLayout, pool_name
from .planner import DeploymentPlan, Plan

__all__ = ["PoolPlacement", "AppPlacement", "placement_from_plan", "placement_without_plan"]


class PoolPlacement(BaseModel):
    """One pool: what its replicas load and the Serve options they run with."""

    model_config = ConfigDict(extra="forbid")

    variant: str = Field(description="Base variant every replica loads.")
    device: Literal["cuda", "cpu"] = Field(description="Where the plan puts the base (a replica that sees no GPU "
                                           "loads on the CPU and reports the mismatch).")
    base_ref: str = Field(description="Base ref the pool serves.")
    agents: list[str] = Field(min_length=1, description="Agents whose own pool this is.")
    adapters: list[str] = Field(default_factory=list, description="Adapter refs each replica preloads.")
    reason: str = Field("", description="Why these agents landed on this variant.")
    memory_budget_mb: int | None = Field(None, ge=1, description="Replica budget: weights + KV + adapters + context.")
    kv_cache_mb: int | None = Field(None, ge=0, description="KV cache share of the budget, MiB.")
    prefix_cache_mb: int | None = Field(None, ge=0, description="Prefix cache share of the budget, MiB (None: not "
                                        "planned; the engine's own prefix_cache_bytes applies).")
    serve_options: dict[str, Any] = Field(default_factory=dict, description="Serve deployment options from the "
                                          "plan: ray_actor_options, max_ongoing_requests, autoscaling_config, "
                                          "user_config (max_batch_size, max_num_models_per_replica).")

    @model_validator(mode="after")
    def _known_options(self) -> "PoolPlacement":
        allowed = {"ray_actor_options", "max_ongoing_requests", "autoscaling_config", "user_config"}
        unknown = sorted(set(self.serve_options) - allowed)
        if unknown:
            raise ValueError(f"serve_options {unknown} are not planned options (allowed: {sorted(allowed)})")
        return self


class AppPlacement(BaseModel):
    """Every pool of the application and each agent's route over them."""

    model_config = ConfigDict(extra="forbid")

    inventory: str = Field(description="What the plan was made for ('none': no plan, defaults).")
    pools: dict[str, PoolPlacement] = Field(min_length=1, description="Pool (deployment) name -> placement.")
    routes: dict[str, list[str]] = Field(description="Agent -> pool names it may use, own pool first.")

    @model_validator(mode="after")
    def _routes_name_pools(self) -> "AppPlacement":
        misnamed = {n: pool_name(p.variant, p.base_ref) for n, p in self.pools.items()
                    if n != pool_name(p.variant, p.base_ref)}
        if misnamed:
            wrong = ", ".join(f"{n!r} should be {w!r}" for n, w in misnamed.items())
            raise ValueError(f"pool names must say their base and variant: {wrong}")
        self.layout()  # PoolLayout validates that every route names a pool
        return self

    def layout(self) -> PoolLayout:
        """The pools and routes as a :class:`~cluster.pools.PoolLayout`."""
        pools = tuple(Pool(name=name, variant=p.variant, agents=tuple(p.agents), adapters=tuple(p.adapters),
                           reason=p.reason, base_ref=p.base_ref) for name, p in self.pools.items())
        return PoolLayout(pools=pools, routes={a: tuple(r) for a, r in self.routes.items()})


def _serve_options(d: DeploymentPlan) -> dict[str, Any]:
    opts = d.deployment_options()
    opts.pop("max_num_models_per_replica")  # Serve's schema has no such field: it lives in user_config
    return opts


def placement_from_plan(layout: PoolLayout, plan: Plan) -> AppPlacement:
    """The placement of a plan made by :func:`cluster.pools.plan_pools`."""
    pools = {}
    for pool in layout.pools:
        d = plan.deployment(pool.name)
        pools[pool.name] = PoolPlacement(
            variant=d.variant, device=d.device, base_ref=d.base_ref, agents=list(pool.agents),
            adapters=list(pool.adapters), reason=pool.reason, memory_budget_mb=d.memory_budget_mb,
            kv_cache_mb=d.memory.kv_cache_mb, prefix_cache_mb=d.memory.prefix_cache_mb,
            serve_options=_serve_options(d))
    return AppPlacement(inventory=plan.inventory, pools=pools, routes={a: list(r) for a, r in layout.routes.items()})


def placement_without_plan(layout: PoolLayout, base_ref: str | None = None, num_cpus: float = 1.0) -> AppPlacement:
    """Pools on defaults (``inventory: none``, or an 'auto' inventory that could not be read): CPU, no budget,
    ``num_cpus`` per replica (the policy's). Each pool serves its own base, else ``base_ref``."""
    missing = [p.name for p in layout.pools if not (p.base_ref or base_ref)]
    if missing:
        raise ValueError(f"pools {missing} name no base and no base_ref was given")
    pools = {p.name: PoolPlacement(variant=p.variant, device="cpu", base_ref=p.base_ref or base_ref,
                                   agents=list(p.agents), adapters=list(p.adapters), reason=p.reason,
                                   serve_options={"ray_actor_options": {"num_cpus": num_cpus}}) for p in layout.pools}
    return AppPlacement(inventory="none", pools=pools, routes={a: list(r) for a, r in layout.routes.items()})
