"""A Ray cluster launcher config (``ray up``) for GPU VMs / on-prem hosts, from the GPU inventory.

Uses the ``local`` node provider (fixed hosts by IP: the seed plan's RTX 3090 workstations, or VMs you
already run). Every worker starts with its GPUs and their memory declared the way :mod:`cluster.discover`
reads them (``--resources '{"gpu_memory_mb": N}'`` and the ``justnews.io/gpu-memory-mb`` label), with
``MODEL_STORE_ROOT`` and ``BNB_CUDA_VERSION`` exported, and serve_config.yaml copied to the head.

Security: every node runs with ``RAY_AUTH_MODE=token`` and the operator's own ``~/.ray/auth_token`` (copied
by ``file_mounts`` and made 0600 on the host; create it first with ``python scripts/ray_token.py``); the
dashboard listens on 127.0.0.1 only -- reach it with ``ray dashboard <this file>`` (an ssh tunnel). The env
file holding the exports (``~/.justnews.env``, sourced before ``ray start`` and ``serve``) is written 0600 too::

    justnews launcher --inventory rtx3090-2node --head-ip 10.0.0.10 --worker-ips 10.0.0.11 10.0.0.12 \\
        --out cluster/launcher/justnews-vms.yaml
    ray up cluster/launcher/justnews-vms.yaml
    ray exec cluster/launcher/justnews-vms.yaml \
        "source ~/.justnews.env && cd ~/justnews-serve && justnews preflight && serve deploy serve_config.yaml"
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import yaml

from .discover import GPU_MEMORY_LABEL, GPU_MEMORY_RESOURCE
from .errors import InventoryError
from .inventory import Inventory
from .rayservice import worker_shape

__all__ = ["launcher_config", "dump_launcher", "validate_launcher", "RAY_TOKEN_FILE", "DASHBOARD_HOST"]

RAY_TOKEN_FILE = "~/.ray/auth_token"  # Ray's default token path, on the operator's machine and on the hosts
DASHBOARD_HOST = "127.0.0.1"          # the dashboard runs code for whoever reaches it: loopback, tunnel to it


def launcher_config(inventory: Inventory, *, head_ip: str, worker_ips: list[str], cluster_name: str = "justnews",
                    ssh_user: str = "ubuntu", ssh_private_key: str = "~/.ssh/id_rsa",
                    store_root: str = "/opt/justnews/model_store", bnb_cuda_version: str | None = "122",
                    repo_dir: str = "~/justnews-serve", local_repo: str = ".",
                    ray_token_file: str = RAY_TOKEN_FILE) -> dict[str, Any]:
    """The ``ray up`` config for the inventory's GPU nodes on the given hosts.

    ``ray_token_file`` is the Ray auth token on the machine running ``ray up``; it becomes
    ``~/.ray/auth_token`` on every host.

    Raises:
        InventoryError: the number of worker IPs is not the number of GPU nodes, or the nodes differ.
    """
    shape = worker_shape(inventory)
    if len(worker_ips) != shape.count:
        raise InventoryError(f"{len(worker_ips)} worker IP(s) given but inventory {inventory.name} has "
                             f"{shape.count} GPU node(s)")
    exports = [f"export MODEL_STORE_ROOT={shlex.quote(store_root)}", "export RAY_AUTH_MODE=token"]
    if bnb_cuda_version:
        exports.append(f"export BNB_CUDA_VERSION={shlex.quote(bnb_cuda_version)}")
    env_file = "~/.justnews.env"
    resources = json.dumps({GPU_MEMORY_RESOURCE: shape.gpus * shape.gpu_memory_mb})
    labels = f"{GPU_MEMORY_LABEL}={shape.gpu_memory_mb}"  # ray start --labels takes key=value pairs
    source = f"source {env_file}"
    return {
        "cluster_name": cluster_name,
        "provider": {"type": "local", "head_ip": head_ip, "worker_ips": list(worker_ips)},
        "auth": {"ssh_user": ssh_user, "ssh_private_key": ssh_private_key},
        "max_workers": shape.count,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        # The repository (with its serve_config.yaml) goes to every node; `ray up` runs from its root.
        "file_mounts": {repo_dir: local_repo, RAY_TOKEN_FILE: ray_token_file},
        "rsync_exclude": [".git", ".venv", "**/__pycache__"],
        "initialization_commands": [],
        "setup_commands": [
            f"umask 077 && printf '%s\\n' {' '.join(shlex.quote(e) for e in exports)} > {env_file} && "
            f"chmod 600 {env_file} {RAY_TOKEN_FILE}",
            f"{source} && test -d \"$MODEL_STORE_ROOT\" || echo \"MODEL_STORE_ROOT $MODEL_STORE_ROOT missing\" >&2",
            f"cd {repo_dir} && pip install -q -e .",
        ],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            f"{source} && ray start --head --port=6379 --dashboard-host={DASHBOARD_HOST} --num-gpus=0 "
            "--autoscaling-config=~/ray_bootstrap_config.yaml",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            f"{source} && ray start --address=$RAY_HEAD_IP:6379 --num-gpus={shape.gpus} "
            f"--resources={shlex.quote(resources)} --labels={shlex.quote(labels)}",
        ],
    }


def validate_launcher(config: dict[str, Any]) -> None:
    """Validate against the JSON schema Ray's launcher itself uses (``ray/autoscaler/ray-schema.json``).

    Raises:
        jsonschema.ValidationError: the config does not match the schema.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))  # what `ray up` does: fill the provider's defaults, then check


def dump_launcher(config: dict[str, Any], inventory_name: str) -> str:
    """The launcher YAML with a header naming its inventory."""
    header = (f"# Generated by `justnews launcher` for inventory {inventory_name}; regenerate, do not edit.\n"
              "# First, once: python scripts/ray_token.py (this machine's ~/.ray/auth_token, 0600, copied to every "
              "host).\n"
              "# From the repo root: ray up <this file>; then: ray exec <this file> \"source ~/.justnews.env && "
              "cd ~/justnews-serve && justnews preflight && serve deploy serve_config.yaml\"\n"
              "# Dashboard (127.0.0.1 on the head): ray dashboard <this file>, then http://localhost:8265\n")
    return header + yaml.safe_dump(config, sort_keys=False, width=120)
