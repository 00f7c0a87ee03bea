"""The operator subcommands of ``justnews`` beside ``plan``: ``preflight``, ``kuberay`` and ``launcher``.

Kept apart from :mod:`cluster.cli` so each command's arguments sit next to the code that runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import PlanningError

__all__ = ["add_operator_commands", "cmd_preflight", "cmd_kuberay", "cmd_launcher"]


def _inventory_arg(p: argparse.ArgumentParser, help_extra: str = "") -> None:
    from .inventory import bundled_inventories

    p.add_argument("--inventory", help=f"inventory YAML or bundled name ({', '.join(bundled_inventories())}){help_extra}")


def add_operator_commands(sub: Any, *, policy_from_args: Callable[[Any], Any]) -> None:
    """Add ``preflight``, ``kuberay`` and ``launcher`` to the ``justnews`` subparsers."""
    from . import preflight, rayservice, vm_launcher

    p = sub.add_parser("preflight", help="host readiness checks (CUDA, bitsandbytes, store, Ray, GPU memory)",
                       description=preflight.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--store-root", help="ModelStore root (default $MODEL_STORE_ROOT)")
    p.add_argument("--no-gpu", action="store_true", help="CPU-only deployment: CUDA is not required")
    p.add_argument("--ray-address", help="Ray cluster address (default $RAY_ADDRESS, else auto)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray check (plan on this host's GPUs)")
    p.add_argument("--gpu-memory-mb", type=int, help="MiB per GPU for Ray nodes that declare none")
    p.add_argument("--fast", action="store_true", help="store check without recomputing checksums")
    _inventory_arg(p, "; default: Ray's, else this host's free GPU memory")
    p.add_argument("--demands", help="deployments YAML/JSON (default: the agent map's base pools over the store)")
    p.add_argument("--map", help="AGENT_MODEL_MAP.json whose base pools are planned (default: the packaged one)")
    p.add_argument("--policy", help="placement policy YAML/JSON")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a policy field")
    p.set_defaults(func=lambda args: cmd_preflight(args, policy_from_args(args)))

    k = sub.add_parser("kuberay", help="write a KubeRay RayService manifest embedding serve_config.yaml",
                       description=rayservice.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--serve-config", default="serve_config.yaml", help="the Serve config to embed")
    k.add_argument("--out", help="write the manifest here (default: stdout)")
    _inventory_arg(k, "; default: the one the serve config's header names")
    k.add_argument("--name", default="justnews", help="RayService name")
    k.add_argument("--namespace", help="Kubernetes namespace")
    k.add_argument("--image", default=rayservice.DEFAULT_IMAGE, help="image with this repository installed")
    k.add_argument("--store-pvc", default="justnews-model-store", help="PVC holding the ModelStore")
    k.add_argument("--bnb-cuda-version", help="BNB_CUDA_VERSION for the GPU workers, e.g. 122")
    k.add_argument("--api-token-secret", help="Secret with the ingress' api-token and admin-token keys "
                   "(default <name>-api-tokens)")
    k.set_defaults(func=cmd_kuberay)

    v = sub.add_parser("launcher", help="write a Ray cluster launcher (ray up) config for GPU VMs",
                       description=vm_launcher.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _inventory_arg(v)
    v.add_argument("--head-ip", required=True, help="head host")
    v.add_argument("--worker-ips", nargs="+", required=True, help="one host per GPU node of the inventory")
    v.add_argument("--ssh-user", default="ubuntu")
    v.add_argument("--ssh-private-key", default="~/.ssh/id_rsa")
    v.add_argument("--store-root", default="/opt/justnews/model_store", help="MODEL_STORE_ROOT on the hosts")
    v.add_argument("--bnb-cuda-version", default="122", help="BNB_CUDA_VERSION on the hosts ('' for none)")
    v.add_argument("--ray-token-file", default="~/.ray/auth_token", help="this machine's Ray auth token, copied "
                   "to every host (create it with `python scripts/ray_token.py`)")
    v.add_argument("--out", help="write the config here (default: stdout)")
    v.set_defaults(func=cmd_launcher)


def _write(text: str, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"wrote {out}")
    else:
        print(text, end="")


def cmd_preflight(args: Any, policy: Any) -> int:
    """Run the checks; print one line each (or JSON); 1 when any failed."""
    from modelstore import ModelStore, default_root

    from .demand import load_demands
    from .inventory import load_inventory
    from .preflight import format_report, run_preflight

    root = Path(args.store_root) if args.store_root else default_root()
    demands = None
    if args.demands:
        demands = load_demands(args.demands, ModelStore(root) if root.is_dir() else None)
    report = run_preflight(store_root=root, require_gpu=not args.no_gpu, ray_address=args.ray_address,
                           check_ray_cluster=not args.no_ray,
                           inventory=load_inventory(args.inventory) if args.inventory else None,
                           demands=demands, policy=policy, gpu_memory_mb=args.gpu_memory_mb,
                           checksums=not args.fast, map_path=args.map)
    if args.json:
        print(json.dumps({"ok": report.ok, "checks": [c.model_dump() for c in report.checks]}, indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def cmd_kuberay(args: Any) -> int:
    """Validate the serve config and write the RayService manifest."""
    from .inventory import load_inventory
    from .rayservice import dump_manifest, inventory_from_header, load_serve_config, rayservice_manifest

    text, data = load_serve_config(args.serve_config)
    host = ((data or {}).get("http_options") or {}).get("host")
    if host in ("127.0.0.1", "localhost", "::1"):
        print(f"justnews kuberay: warning: {args.serve_config} binds Serve's HTTP proxy to {host}; KubeRay's serve "
              "Service cannot reach it (set http_options.host: 0.0.0.0; the ingress then requires JUSTNEWS_API_TOKEN and "
              "JUSTNEWS_ADMIN_TOKEN, which the manifest reads from its token Secret)", file=sys.stderr)
    inventory = load_inventory(args.inventory) if args.inventory else inventory_from_header(text)
    if inventory is None:
        raise PlanningError(f"{args.serve_config} does not name a bundled inventory in its header: give --inventory")
    manifest = rayservice_manifest(text, inventory, name=args.name, namespace=args.namespace, image=args.image,
                                   store_pvc=args.store_pvc, bnb_cuda_version=args.bnb_cuda_version,
                                   api_token_secret=args.api_token_secret)
    _write(dump_manifest(manifest, args.serve_config), args.out)
    return 0


def cmd_launcher(args: Any) -> int:
    """Write the ``ray up`` config after Ray's own launcher schema accepts it."""
    from .inventory import load_inventory
    from .vm_launcher import dump_launcher, launcher_config, validate_launcher

    if not args.inventory:
        raise PlanningError("--inventory is required")
    inventory = load_inventory(args.inventory)
    config = launcher_config(inventory, head_ip=args.head_ip, worker_ips=args.worker_ips, ssh_user=args.ssh_user,
                             ssh_private_key=args.ssh_private_key, store_root=args.store_root,
                             bnb_cuda_version=args.bnb_cuda_version or None, ray_token_file=args.ray_token_file)
    validate_launcher(config)
    _write(dump_launcher(config, inventory.name), args.out)
    return 0
