"""``build_app(args)``: the whole JustNews application, as ``serve_config.yaml`` imports it.

Reads the agent map and the ModelStore, checks that the store holds every model the map names (failing
fast with one message listing each problem), takes the placement (the planner's pools, see
:mod:`cluster.pools`) and binds:

    Ingress (FastAPI) -> Agent-<name> (one per served agent) -> base pools | Embeddings
                      -> CanaryController (the canary gate; ``GET /canary``)

A base pool is a BaseLLM deployment of one base and variant: ``BaseLLM-<variant>`` on the text base,
``BaseLLM-<name>-<variant>`` on a named base (the newsreader's vision-language base, when the map serves it).
Each agent on a base is bound to the pools of its route (own pool first, then only pools of its own base
whose variant the map lets it use). The placement is one source of truth for every pool, whichever way it
arrives:

1. ``placement`` args: what ``justnews plan --emit-serve-config`` wrote (applied unchanged; checked
   against the map, so a route can never give a never-quantised agent an int8 pool);
2. else planned here: ``inventory: auto`` discovers the running Ray cluster (if that or planning fails,
   the builder logs why and places the pools on defaults), any other value is an inventory file or a
   bundled name (its errors stop the build), ``inventory: none`` places the pools on defaults.

Each pool's BaseLLM settings, in order of precedence (later wins): :class:`~deployments.base_llm.settings.
BaseLLMSettings` defaults; the placement (variant, planned device and budget, Serve options, runtime
config, preloaded adapters); ``llm`` args (every pool); ``pools.<name>`` args (that pool). An explicit
``num_replicas`` turns the plan's autoscaling off.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.serve import Application

from cluster.placement import AppPlacement
from deployments.agent.deployment import AgentDeploymentSettings, build_agent
from deployments.canary.deployment import CanarySettings, build_canary_controller
from deployments.embeddings.deployment import build_embeddings
from deployments.embeddings.server import EmbeddingSettings
from deployments.ingress.deployment import build_ingress
from deployments.ingress.server import IngressSettings
from deployments.base_llm.settings import BaseLLMSettings, unflatten_args

__all__ = ["AppSettings", "AppBuildError", "build_app", "plan_placement", "pool_settings"]

log = logging.getLogger(__name__)

EMBEDDING_MODEL = "all-MiniLM-L6-v2"


class AppBuildError(RuntimeError):
    """The application cannot start: the store, the map or the settings are wrong (the message says how)."""


class AppSettings(BaseModel):
    """``build_app`` args (``serve_config.yaml``'s ``args``; dotted keys such as ``llm.num_replicas`` work too)."""

    model_config = ConfigDict(extra="forbid")

    store_root: str | None = Field(None, description="ModelStore root; None: $MODEL_STORE_ROOT or the default.")
    map_path: str | None = Field(None, description="AGENT_MODEL_MAP.json; None: the one shipped in agent_graph.")
    strict: bool = Field(False, description="No agent falls back: a failed adapter is a clear 503 instead.")
    check_budgets: bool = Field(True, description="Refuse a map whose max_new_tokens cannot hold an agent's largest "
                                "valid reply (agent_graph.budget). False starts it anyway: such replies truncate "
                                "and take the fallback chain (fault drills, tests).")
    inventory: str = Field("auto", min_length=1, description="'auto' (discover the Ray cluster), 'none' (no "
                           "planning), or an inventory file / bundled name used to plan the base pools. Ignored "
                           "when 'placement' is given.")
    placement: AppPlacement | None = Field(None, description="The placement `justnews plan --emit-serve-config` "
                                           "wrote; when given, nothing is planned at build time.")
    policy: dict[str, Any] = Field(default_factory=dict, description="PlacementPolicy fields for planning at "
                                   "build time (e.g. num_cpus_per_replica).")
    llm: dict[str, Any] = Field(default_factory=dict, description="BaseLLMSettings fields for every pool; "
                                "override the placement.")
    pools: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Pool name -> BaseLLMSettings "
                                             "fields for that pool only; override 'llm'.")
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings, description="Embeddings deployment.")
    agents: AgentDeploymentSettings = Field(default_factory=AgentDeploymentSettings,
                                            description="Serve options of every agent deployment.")
    ingress: IngressSettings = Field(default_factory=IngressSettings, description="HTTP ingress settings.")
    canary: CanarySettings = Field(default_factory=CanarySettings, description="The in-cluster canary gate.")

    @field_validator("llm")
    @classmethod
    def _no_pool_identity(cls, value: dict[str, Any]) -> dict[str, Any]:
        fixed = sorted({"deployment_name", "base_ref", "store_root", "planned"} & set(value))
        if fixed:
            raise ValueError(f"llm args {fixed} are set by the placement per pool; use pools.<name> for one pool")
        return value


def plan_placement(settings: AppSettings, store: Any, agent_map: Any) -> AppPlacement:
    """The placement this build applies (see the module docstring for where it comes from).

    Raises:
        AppBuildError: a given placement breaks the map, or planning on a named inventory fails.
    """
    import cluster
    from cluster.placement import placement_from_plan, placement_without_plan
    from cluster.pools import assign_pools, needs_from_map, plan_pools

    try:
        bases, needs = needs_from_map(agent_map, store)
    except cluster.PlanningError as exc:
        raise AppBuildError(f"the agent map cannot be placed: {exc}") from None
    if settings.placement is not None:
        try:
            settings.placement.layout().check_against(needs)
        except cluster.PlanningError as exc:
            raise AppBuildError(f"args.placement (planned for {settings.placement.inventory}): {exc}; "
                                "re-run `justnews plan --emit-serve-config`") from None
        return settings.placement
    try:
        policy = cluster.PlacementPolicy.model_validate(settings.policy)
    except ValueError as exc:
        raise AppBuildError(f"policy args are invalid: {exc}") from None
    if settings.inventory != "none":
        try:
            inventory = cluster.discover_from_ray() if settings.inventory == "auto" else \
                cluster.load_inventory(settings.inventory)
            placement = placement_from_plan(*plan_pools(needs, bases, inventory, policy))
            log.info("placement (%s): %s", settings.inventory, {n: (p.variant, p.device, p.agents)
                                                                 for n, p in placement.pools.items()})
            return placement
        except Exception as exc:  # noqa: BLE001 - 'auto' is best effort; a named inventory must plan
            if settings.inventory != "auto":
                raise AppBuildError(f"planning on inventory {settings.inventory!r} failed: {exc}") from exc
            log.warning("inventory 'auto': no placement plan (%s: %s); pools on defaults", type(exc).__name__, exc)
    try:
        return placement_without_plan(assign_pools(needs, bases, policy=policy), num_cpus=policy.num_cpus_per_replica)
    except cluster.PlanningError as exc:
        raise AppBuildError(f"the agent map cannot be placed on {sorted(bases)}: {exc}") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            and key != "ray_actor_options" else value
    return out


def pool_settings(settings: AppSettings, store: Any, placement: AppPlacement, name: str) -> BaseLLMSettings:
    """One pool's BaseLLM settings: defaults, the placement, ``llm`` args, then ``pools.<name>`` args."""
    pool = placement.pools[name]
    opts = pool.serve_options
    planned: dict[str, Any] = {
        "deployment_name": name, "variant": pool.variant, "preload_adapters": list(pool.adapters),
        "planned": {"pool": name, "variant": pool.variant, "device": pool.device,
                    "memory_budget_mb": pool.memory_budget_mb, "inventory": placement.inventory}}
    for key in ("ray_actor_options", "max_ongoing_requests", "autoscaling_config"):
        if opts.get(key):
            planned[key] = opts[key]
    if opts.get("user_config"):
        planned["runtime"] = dict(opts["user_config"])
    engine: dict[str, Any] = {}
    if pool.kv_cache_mb:  # the plan's KV share of the replica budget: the engine's continuous KV cache
        engine["kv_cache_bytes"] = pool.kv_cache_mb * 1024 * 1024
    if pool.prefix_cache_mb is not None:  # the plan's prefix-cache share (policy prefix_tokens_per_model); 0: off
        engine["prefix_cache_bytes"] = pool.prefix_cache_mb * 1024 * 1024
    models = (opts.get("user_config") or {}).get("max_num_models_per_replica")
    if models:  # the plan's adapter slots (adapters_mb): the engine's stacked LoRA buffers hold that many
        engine["max_loaded_adapters"] = int(models)
    if engine:
        planned["engine"] = engine
    overrides = _merge(settings.llm, settings.pools.get(name, {}))
    if "num_replicas" in overrides:
        planned.pop("autoscaling_config", None)
    merged = _merge(planned, overrides)
    merged.update(store_root=str(store.root), base_ref=pool.base_ref)
    try:
        return BaseLLMSettings.model_validate(merged)
    except ValueError as exc:
        raise AppBuildError(f"pool {name} settings (placement {placement.inventory!r} + llm/pools args) are "
                            f"invalid: {exc}") from exc


def _check_store(settings: AppSettings):
    """Open the store and load the map; fail with every problem listed and how to fix the store."""
    from agent_graph import AgentMapError, load_agent_map
    from modelstore import ModelStore

    store = ModelStore(settings.store_root)
    root = Path(store.root)
    hint = f"build the embedded default with `MODEL_STORE_ROOT={root} modelstore seed` (or `bash scripts/run.sh`)"
    if not root.is_dir():
        raise AppBuildError(f"ModelStore root {root} does not exist; {hint}")
    try:
        agent_map = load_agent_map(settings.map_path)
        agent_map.validate_against_store(store, budgets=settings.check_budgets)
    except AgentMapError as exc:
        raise AppBuildError(f"the agent map and the ModelStore at {root} disagree; {hint}, or fix the map:\n{exc}") \
            from None
    from cluster.pools import is_pool_name

    unknown = sorted(n for n in settings.pools if not is_pool_name(n))
    if unknown:
        raise AppBuildError(f"pools args name {unknown}; pool names are 'BaseLLM-<variant>' (the text base) or "
                            "'BaseLLM-<base name>-<variant>' (a named base)")
    return store, agent_map


def _check_pool_bases(placement: AppPlacement, store: Any) -> None:
    """Every pool's base is in the store and offers the pool's variant (a given placement may predate the store)."""
    problems = []
    for name, pool in placement.pools.items():
        try:
            manifest = store.resolve(pool.base_ref).manifest
        except (LookupError, ValueError, OSError) as exc:
            problems.append(f"pool {name}: base {pool.base_ref!r} is not in the store ({exc})")
            continue
        if pool.variant not in manifest.approx_vram_mb:
            problems.append(f"pool {name}: base {pool.base_ref} offers no {pool.variant} weights "
                            f"(offers {sorted(manifest.approx_vram_mb)})")
    if problems:
        raise AppBuildError(f"the placement ({placement.inventory}) does not fit the ModelStore at {store.root}: "
                            + "; ".join(problems) + "; re-run `justnews plan --emit-serve-config`")


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build the application from ``serve_config.yaml`` args (see :class:`AppSettings`).

    Raises:
        AppBuildError: the store lacks a model the map names, or the settings do not fit together.
    """
    settings = AppSettings.model_validate(unflatten_args(dict(args or {})))
    store, agent_map = _check_store(settings)
    placement = plan_placement(settings, store, agent_map)
    _check_pool_bases(placement, store)
    from deployments.base_llm.deployment import build_base_llm

    pools: dict[str, Application] = {}
    for name in placement.pools:
        cfg = pool_settings(settings, store, placement, name)
        over = {a: agent_map.agents[a].max_new_tokens for a in placement.pools[name].agents
                if agent_map.agents[a].max_new_tokens > cfg.engine.max_new_tokens_limit}
        if over:
            raise AppBuildError(f"agents' max_new_tokens {over} exceed {name}'s engine.max_new_tokens_limit "
                                f"({cfg.engine.max_new_tokens_limit}); raise llm.engine.max_new_tokens_limit")
        pools[name] = build_base_llm(cfg)
    served = {n: e for n, e in agent_map.agents.items() if e.served}
    embeddings = build_embeddings(settings.embeddings) if any(e.kind == "embedding" for e in served.values()) else None
    agents = {name: build_agent(name, map_path=settings.map_path, strict=settings.strict,
                                llm={p: pools[p] for p in placement.routes[name]} if name in placement.routes else None,
                                embeddings=embeddings if entry.kind == "embedding" else None,
                                settings=settings.agents, store_root=str(store.root))
              for name, entry in sorted(served.items())}
    log.info("JustNews app: bases %s, pools %s, agents %s, strict=%s",
             sorted({p.base_ref for p in placement.pools.values()}),
             {n: p.agents for n, p in placement.pools.items()}, ", ".join(agents), settings.strict)
    canary = build_canary_controller(str(store.root), settings.canary)
    return build_ingress(settings.ingress, map_path=settings.map_path, store_root=str(store.root), pools=pools,
                         routes={a: list(r) for a, r in placement.routes.items()}, agents=agents,
                         embedding_model=EMBEDDING_MODEL if embeddings is not None else None, canary=canary,
                         embeddings=embeddings)
