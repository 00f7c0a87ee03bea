"""Show a :class:`~cluster.planner.Plan` to an operator (tables) and to Serve (serve_config.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .placement import AppPlacement
from .planner import Plan

__all__ = ["format_plan", "format_routes", "serve_config", "write_serve_config", "DEFAULT_IMPORT_PATH"]

# The application builder serve_config.yaml imports (see DESIGN.md: one build_app(args)).
DEFAULT_IMPORT_PATH = "deployments.app:build_app"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def _replicas(names: tuple[str, ...]) -> str:
    """'A#0 A#1 A#2 B#0' -> 'A#0-2 B#0': long lists of one deployment stay one cell wide."""
    groups: list[list] = []
    for name in names:
        dep, _, idx = name.rpartition("#")
        if groups and groups[-1][0] == dep and groups[-1][2] + 1 == int(idx):
            groups[-1][2] = int(idx)
        else:
            groups.append([dep, int(idx), int(idx)])
    return " ".join(f"{d}#{a}" if a == b else f"{d}#{a}-{b}" for d, a, b in groups) or "(empty)"


def format_plan(plan: Plan) -> str:
    """The plan as text: a deployments table, the reasons, and the per-GPU (node) packing at max_replicas."""
    p = plan.policy
    gpu = plan.device == "cuda"
    out = [f"Plan for {plan.inventory}: {plan.inventory_summary}; {plan.device} mode; a replica must fit "
           f"{plan.basis_mb} MiB usable on {plan.basis_label} (headroom max({p.headroom_mb} MiB, "
           f"{p.headroom_fraction:.0%}))", ""]
    rows = []
    for d in plan.deployments:
        m = d.memory
        share = f"{d.num_gpus:.4f}" if gpu else f"{d.memory_bytes // (1024 * 1024)}Mi"
        rows.append([d.name, d.variant, m.weights_mb, m.kv_cache_mb, m.adapters_mb, m.context_mb, m.total_mb,
                     share, d.num_cpus, d.max_num_models_per_replica, d.max_batch_size, d.max_ongoing_requests,
                     d.target_ongoing_requests, d.min_replicas, d.max_replicas])
    out.append(_table(["deployment", "variant", "weights", "kv", "adapters", "context", "replica_MiB",
                       "num_gpus" if gpu else "memory", "cpus", "models", "batch", "max_ongoing", "target",
                       "min", "max"], rows))
    out.append("")
    for d in plan.deployments:
        m = d.memory
        out.append(f"{d.name}: base {d.base_ref}, {len(d.adapters)} adapter(s)")
        out.append(f"  variant {d.variant}: {d.variant_reason}")
        images = f", {plan.policy.max_sequence_tokens} + {m.image_tokens} image tokens each" if m.image_tokens else ""
        out.append(f"  kv cache: {m.max_concurrent_sequences} sequences x {m.kv_mb_per_sequence} MiB ({m.kv_source}"
                   f"{images})")
        out.append(f"  adapters: {d.models_reason}; slot {m.adapter_slot_mb} MiB")
        if m.prefix_cache_mb is not None:
            out.append(f"  prefix cache: {m.prefix_cache_mb} MiB ({plan.policy.prefix_tokens_per_model} tokens for each of "
                       f"{d.max_num_models_per_replica} adapters and the bare base; in replica_MiB)")
    out.append("")
    out.append(f"Packing at max_replicas ({plan.max_replicas_rule}):")
    rows = [[b.node if b.gpu is None else f"{b.node}:gpu{b.gpu}",
             b.memory_mb, b.usable_mb, b.used_mb, b.usable_mb - b.used_mb,
             f"{b.gpu_fraction_used:.4f}" if gpu else "-", _replicas(b.replicas)] for b in plan.bins]
    out.append(_table(["gpu" if gpu else "node", "memory", "usable", "used", "free", "num_gpus", "replicas"], rows))
    return "\n".join(out)


def format_routes(placement: AppPlacement) -> str:
    """Which agents each pool serves first, and every agent's route (own pool first)."""
    out = ["Base pools (an agent moves to a later pool of its route only while its own is unavailable):"]
    for name, pool in placement.pools.items():
        out.append(f"  {name} ({pool.variant} on {pool.device}): {', '.join(pool.agents)}")
    out.append(_table(["agent", "route"], [[a, " -> ".join(r)] for a, r in sorted(placement.routes.items())]))
    return "\n".join(out)


def serve_config(placement: AppPlacement, *, import_path: str = DEFAULT_IMPORT_PATH, app_name: str = "justnews",
                 route_prefix: str = "/", store_root: str | None = None, map_path: str | None = None,
                 host: str = "127.0.0.1", port: int = 8000) -> dict[str, Any]:
    """A complete Serve config (``serve deploy`` / ``serve run`` schema) that applies ``placement``.

    Everything the plan decided travels in the application's ``args.placement``, which ``build_app``
    applies to each pool unchanged (variant, planned device and budget, resources, autoscaling bounds,
    runtime config); the config lists no ``deployments`` overrides, so there is one copy of each figure.
    """
    args: dict[str, Any] = {"store_root": store_root, "map_path": map_path,
                            "placement": placement.model_dump(mode="json")}
    return {"proxy_location": "HeadOnly", "http_options": {"host": host, "port": port},
            "applications": [{"name": app_name, "route_prefix": route_prefix, "import_path": import_path,
                              "args": args}]}


def write_serve_config(placement: AppPlacement, path: str | Path, *, summary: str = "", **kwargs: Any) -> Path:
    """Write :func:`serve_config` as YAML, with a header saying it is generated and for what."""
    path = Path(path)
    header = (f"# Generated by `justnews plan` for inventory {placement.inventory} ({summary or 'see args.placement'}).\n"
              "# Do not size deployments by hand: edit the inventory, the agent map or the policy and re-plan.\n"
              "# Deploy unchanged: `serve deploy` / `serve run` this file (MODEL_STORE_ROOT or store_root below).\n")
    path.write_text(header + yaml.safe_dump(serve_config(placement, **kwargs), sort_keys=False))
    return path
