"""``justnews``: the operator's commands.

* ``justnews plan``      -- print the placement plan for an inventory, and emit it as serve_config.yaml;
* ``justnews preflight`` -- host readiness checks, one PASS/FAIL line each (:mod:`cluster.preflight`);
* ``justnews kuberay``   -- a KubeRay RayService manifest embedding serve_config.yaml (:mod:`cluster.rayservice`);
* ``justnews launcher``  -- a ``ray up`` config for GPU VMs / hosts (:mod:`cluster.vm_launcher`);
* ``justnews train|eval-adapter|defaults|synth`` -- adapter training (:mod:`training.cli`);
* ``justnews canary``    -- canary rollouts of adapter versions (:mod:`rollout.cli`).

Examples::

    justnews plan --inventory rtx3090-2node --demands cluster/demands/mistral-7b-8-agents.yaml
    justnews plan --inventory inv.yaml --store-root /opt/justnews/model_store --set allow_quantized=true \\
        --emit-serve-config serve_config.yaml
    justnews plan --from-ray auto --gpu-memory-mb 24576 --json

    justnews preflight --json
    justnews kuberay --serve-config serve_config.yaml --out cluster/kuberay/rayservice.yaml

Without ``--demands`` the plan places the agent map's base pools (``BaseLLM-<variant>`` on the text base,
``BaseLLM-<name>-<variant>`` on a named base such as the newsreader's vision base; see :mod:`cluster.pools`)
over the store's bases and adapters, and ``--emit-serve-config`` writes them as
a Serve config that deploys unchanged. Exit codes: 0 done, 1 preflight found a failure, 2 refused (nothing
fits, bad input).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import yaml

from .demand import load_demands
from .errors import PlanningError
from .inventory import bundled_inventories, load_inventory
from .planner import plan
from .policy import PlacementPolicy, load_policy
from .render import DEFAULT_IMPORT_PATH, format_plan, format_routes, serve_config, write_serve_config
from .subcommands import add_operator_commands
from .switch_base import add_switch_base_command

__all__ = ["main", "build_parser", "TRAINING_COMMANDS", "DISPATCHED_COMMANDS"]

TRAINING_COMMANDS = ("train", "eval-adapter", "defaults", "synth")
# Commands with parsers of their own (training.cli imports torch, rollout.cli the store), imported only when
# asked for so the operator commands stay light; their one-line help is repeated here for `justnews --help`
# (tests/unit/ops/test_cli_help.py checks it against those parsers).
DISPATCHED_COMMANDS = {
    "train": "train one LoRA adapter from JSONL {input, output} records (justnews train --help)",
    "eval-adapter": "held-out score of an adapter against the bare base",
    "defaults": "train + publish the embedded default's missing trained adapters (what scripts/run.sh does)",
    "synth": "write a synthetic train / held-out dataset for an agent",
    "canary": "canary rollouts of an adapter version: start, status, rollback, promote, gate",
    "hitl": "human review queue: migrate, export decided items as training JSONL, list, stats",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``justnews`` parser with its ``plan`` subcommand."""
    parser = argparse.ArgumentParser(prog="justnews", description="JustNews Serve operator commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="plan variants, replica sizes and autoscaling bounds from VRAM metadata",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--inventory", help=f"inventory YAML, or a bundled one: {', '.join(bundled_inventories())}")
    src.add_argument("--from-ray", metavar="ADDRESS", help="discover the inventory from a running Ray cluster")
    p.add_argument("--gpu-memory-mb", type=int, help="with --from-ray: MiB per GPU for nodes that declare none")
    p.add_argument("--store-root", help="ModelStore root (default $MODEL_STORE_ROOT)")
    p.add_argument("--demands", help="what-if deployments YAML/JSON (default: the agent map's base pools over the "
                   "store's current refs)")
    p.add_argument("--map", help="AGENT_MODEL_MAP.json whose pools are planned (default: the packaged one)")
    p.add_argument("--policy", help="placement policy YAML/JSON (any subset of PlacementPolicy's fields)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one policy field, e.g. --set allow_quantized=true (repeatable)")
    p.add_argument("--emit-serve-config", metavar="PATH", help="write the pools' placement as a Serve config that "
                   "`serve run` / `serve deploy` use unchanged")
    p.add_argument("--import-path", default=DEFAULT_IMPORT_PATH, help="application import path in that config")
    p.add_argument("--app-name", default="justnews", help="application name in that config")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)
    add_operator_commands(sub, policy_from_args=_policy)
    add_switch_base_command(sub)
    for name, text in DISPATCHED_COMMANDS.items():  # listed for --help; main() hands them on before parsing
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _policy(args) -> PlacementPolicy:
    base = load_policy(args.policy).model_dump(exclude_unset=True) if args.policy else {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise PlanningError(f"--set {item!r} must look like FIELD=VALUE")
        base[key.strip()] = yaml.safe_load(value)  # YAML scalars: true, 0.1, null ...
    try:
        return PlacementPolicy.model_validate(base)
    except ValueError as exc:
        raise PlanningError(f"invalid policy: {exc}") from exc


def _store(args):
    from modelstore import ModelStore, default_root

    root = args.store_root or default_root()
    return ModelStore(root) if args.store_root or root.exists() else None


def _map_pools(args, inventory, policy):
    """Plan the agent map's base pools on ``inventory``: (store, (layout, plan))."""
    from agent_graph import load_agent_map

    from .pools import needs_from_map, plan_pools

    store = _store(args)
    if store is None:
        raise PlanningError("no --demands and no store (give --store-root or set MODEL_STORE_ROOT)")
    bases, needs = needs_from_map(load_agent_map(args.map), store)
    return store, plan_pools(needs, bases, inventory, policy)


def cmd_plan(args) -> int:
    if args.inventory:
        inventory = load_inventory(args.inventory)
    else:
        from .discover import discover_from_ray

        inventory = discover_from_ray(None if args.from_ray == "auto" else args.from_ray,
                                      gpu_memory_mb=args.gpu_memory_mb)
    policy = _policy(args)
    placement = store = None
    if args.demands:
        if args.emit_serve_config:
            raise PlanningError("--emit-serve-config places the agent map's base pools; it cannot be combined "
                                "with --demands (a what-if plan of arbitrary deployments)")
        result = plan(inventory, load_demands(args.demands, _store(args)), policy)
    else:
        from .placement import placement_from_plan

        store, (layout, result) = _map_pools(args, inventory, policy)
        placement = placement_from_plan(layout, result)
    config_kwargs = dict(import_path=args.import_path, app_name=args.app_name,
                         store_root=str(store.root) if store is not None else None, map_path=args.map)
    if args.emit_serve_config:
        write_serve_config(placement, args.emit_serve_config, summary=inventory.summary(), **config_kwargs)
    if args.json:
        data: dict[str, Any] = {"plan": result.model_dump(mode="json"), "options": result.options()}
        if placement is not None:
            data["placement"] = placement.model_dump(mode="json")
            data["serve_config"] = serve_config(placement, **config_kwargs)
        print(json.dumps(data, indent=2))
    else:
        print(format_plan(result))
        if placement is not None:
            print("\n" + format_routes(placement))
        if args.emit_serve_config:
            print(f"\nwrote {args.emit_serve_config}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``justnews`` console script; returns the exit code.

    ``justnews train|eval-adapter|defaults|synth ...`` are the training commands (``training.cli``),
    imported only when asked for so the operator commands stay free of torch; ``justnews canary ...`` are
    the rollout commands (``rollout.cli``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "hitl":
        from hitl.cli import main as hitl_main

        return hitl_main(argv[1:])
    if argv and argv[0] == "canary":
        from rollout.cli import main as canary_main

        return canary_main(argv[1:])
    if argv and argv[0] in TRAINING_COMMANDS:
        from training.cli import main as training_main

        return training_main(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PlanningError, LookupError, OSError) as exc:
        print(f"justnews {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
