"""``build_app(args)``: the whole JustNews application, as ``serve_config.yaml`` imports it.

Reads the agent map and the ModelStore, checks that the store holds every model the map names (failing
fast with one message listing each problem), plans the BaseLLM deployment's resources from the store's
VRAM metadata and the cluster's inventory, and binds:

    Ingress (FastAPI) -> Agent-<name> (one per served agent) -> BaseLLM (llm agents) | Embeddings (scout, memory)
                      -> CanaryController (the canary gate; ``GET /canary``)

BaseLLM options, in order of precedence (later wins):

1. :class:`~deployments.settings.BaseLLMSettings` defaults;
2. the placement plan (``inventory``): autoscaling_config, max_ongoing_requests, ray_actor_options and
   the runtime config (max_batch_size, max_num_models_per_replica);
3. explicit ``llm`` args. ``llm.num_replicas`` given explicitly turns the plan's autoscaling off.

``inventory: auto`` discovers the running Ray cluster; if that fails, or planning does, the builder logs
why and keeps the defaults. ``inventory: none`` skips planning; any other value is an inventory file or a
bundled name (``cpu-only``), and its errors stop the build.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from deployments.agent import AgentDeploymentSettings, build_agent
from deployments.canary_controller import CanarySettings, build_canary_controller
from deployments.embeddings import EmbeddingSettings, build_embeddings
from deployments.ingress import build_ingress
from deployments.ingress_server import IngressSettings
from deployments.settings import BaseLLMSettings, unflatten_args

__all__ = ["AppSettings", "AppBuildError", "build_app", "plan_llm_options", "llm_settings"]

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
    inventory: str = Field("auto", min_length=1, description="'auto' (discover the Ray cluster), 'none' (no "
                           "planning), or an inventory file / bundled name used to plan the BaseLLM deployment.")
    llm: dict[str, Any] = Field(default_factory=dict, description="BaseLLMSettings fields; override the plan.")
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings, description="Embeddings deployment.")
    agents: AgentDeploymentSettings = Field(default_factory=AgentDeploymentSettings,
                                            description="Serve options of every agent deployment.")
    ingress: IngressSettings = Field(default_factory=IngressSettings, description="HTTP ingress settings.")
    canary: CanarySettings = Field(default_factory=CanarySettings, description="The in-cluster canary gate.")


def plan_llm_options(store: Any, base_ref: str, inventory: str) -> dict[str, Any]:
    """BaseLLMSettings fields from the placement plan (empty when ``inventory`` is ``none``)."""
    if inventory == "none":
        return {}
    import cluster

    if inventory == "auto":
        try:
            inv = cluster.discover_from_ray()
            options = cluster.plan(inv, [cluster.default_demand(store, base_ref=base_ref)]).deployment(
                "BaseLLM").deployment_options()
        except Exception as exc:  # noqa: BLE001 - auto means best effort: say why and keep the defaults
            log.warning("inventory 'auto': no placement plan (%s: %s); using BaseLLM defaults", type(exc).__name__, exc)
            return {}
    else:
        inv = cluster.load_inventory(inventory)
        options = cluster.plan(inv, [cluster.default_demand(store, base_ref=base_ref)]).deployment(
            "BaseLLM").deployment_options()
    runtime = dict(options.get("user_config") or {})
    runtime.setdefault("max_num_models_per_replica", options.get("max_num_models_per_replica"))
    out = {"ray_actor_options": options["ray_actor_options"], "max_ongoing_requests": options["max_ongoing_requests"],
           "runtime": {k: v for k, v in runtime.items() if v is not None}}
    if options.get("autoscaling_config"):
        out["autoscaling_config"] = options["autoscaling_config"]
    log.info("placement plan (%s) for BaseLLM: %s", inventory, out)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            and key != "ray_actor_options" else value
    return out


def llm_settings(settings: AppSettings, store: Any, base_ref: str,
                 preload: list[str] | None = None) -> BaseLLMSettings:
    """The BaseLLM settings: defaults, then the plan, then explicit ``llm`` args (see the module docstring).

    ``preload`` (the map's adapters) becomes ``preload_adapters`` unless the ``llm`` args set it.
    """
    planned = plan_llm_options(store, base_ref, settings.inventory)
    if preload:
        planned["preload_adapters"] = list(preload)
    if "num_replicas" in settings.llm:
        planned.pop("autoscaling_config", None)
    merged = _merge(planned, settings.llm)
    merged.update(store_root=str(store.root), base_ref=base_ref)
    try:
        return BaseLLMSettings.model_validate(merged)
    except ValueError as exc:
        raise AppBuildError(f"BaseLLM settings (plan {settings.inventory!r} + llm args) are invalid: {exc}") from exc


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
        agent_map.validate_against_store(store)
    except AgentMapError as exc:
        raise AppBuildError(f"the agent map and the ModelStore at {root} disagree; {hint}, or fix the map:\n{exc}") \
            from None
    bases = {str(store.resolve(e.base).ref) for e in agent_map.agents.values() if e.kind == "llm" and e.served}
    if len(bases) != 1:
        raise AppBuildError(f"one BaseLLM deployment serves one base, but the llm agents name {sorted(bases)}")
    return store, agent_map, bases.pop()


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build the application from ``serve_config.yaml`` args (see :class:`AppSettings`).

    Raises:
        AppBuildError: the store lacks a model the map names, or the settings do not fit together.
    """
    settings = AppSettings.model_validate(unflatten_args(dict(args or {})))
    store, agent_map, base_ref = _check_store(settings)
    adapters = sorted({ref for e in agent_map.agents.values() if e.kind == "llm" and e.served
                       for ref in [e.adapter, *(e.task_adapters or {}).values()] if ref})
    llm_cfg = llm_settings(settings, store, base_ref, preload=adapters)
    over = {n: e.max_new_tokens for n, e in agent_map.agents.items()
            if e.kind == "llm" and e.max_new_tokens > llm_cfg.engine.max_new_tokens_limit}
    if over:
        raise AppBuildError(f"agents' max_new_tokens {over} exceed engine.max_new_tokens_limit "
                            f"({llm_cfg.engine.max_new_tokens_limit}); raise llm.engine.max_new_tokens_limit")
    from deployments.base_llm import build_base_llm

    llm = build_base_llm(llm_cfg)
    served = {n: e for n, e in agent_map.agents.items() if e.served}
    embeddings = build_embeddings(settings.embeddings) if any(e.kind == "embedding" for e in served.values()) else None
    agents = {name: build_agent(name, map_path=settings.map_path, strict=settings.strict,
                                llm=llm if entry.kind == "llm" else None,
                                embeddings=embeddings if entry.kind == "embedding" else None,
                                settings=settings.agents, store_root=str(store.root))
              for name, entry in sorted(served.items())}
    log.info("JustNews app: base %s, agents %s, strict=%s", base_ref, ", ".join(agents), settings.strict)
    canary = build_canary_controller(str(store.root), settings.canary)
    return build_ingress(settings.ingress, map_path=settings.map_path, store_root=str(store.root), llm=llm,
                         agents=agents, embedding_model=EMBEDDING_MODEL if embeddings is not None else None,
                         canary=canary)
