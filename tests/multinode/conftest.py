"""A real multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``) with *logical* GPUs.

Three raylets: a head without GPUs (Serve's controller and the load generator) and two "GPU" nodes
that each advertise ``num_gpus=1`` and the GPU-memory label ``justnews.io/gpu-memory-mb`` the planner
reads. The GPUs are logical -- no CUDA here: replicas get Ray's fractional GPU and its accelerator id,
while their torch work runs on the CPU. This runs in its own pytest process
(``pytest tests/multinode``): ``tests/integration`` keeps a single-node ``ray.init`` open for the
whole session, and one process cannot join two clusters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

GPU_MEMORY_MB = 4096            # per logical GPU: with the policy below, two replicas fit on each
GPU_NODES = ("gpu-a", "gpu-b")
# Short loops so a scale-up/down cycle fits in a minute on two shared cores.
FAST_SERVE_ENV = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}


from tests.waiting import wait_for as _wait_for


def wait_for(predicate: Callable[[], Any], timeout_s: float = 120.0, interval_s: float = 0.5, what: str = "") -> Any:
    """Multi-node scaling is slower: longer default timeout and interval."""
    return _wait_for(predicate, timeout_s, interval_s, what)


@pytest.fixture(scope="module")
def model_store(tmp_path_factory) -> Path:
    """A store with the tiny base and two agents' adapters."""
    from modelstore import ModelStore
    from modelstore.seed import seed_default_store

    root = tmp_path_factory.mktemp("multinode_store")
    seed_default_store(ModelStore(root), agents=("critic", "analyst"))
    return root


@pytest.fixture(scope="module")
def ray_cluster():
    """Head (no GPU) + two nodes with one logical GPU of ``GPU_MEMORY_MB`` each; Serve without HTTP."""
    import ray

    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process (tests/integration's session cluster); "
                    "run the multi-node tests on their own: pytest tests/multinode")
    from ray import serve
    from ray.cluster_utils import Cluster

    from cluster.discover import GPU_MEMORY_LABEL

    saved = {k: os.environ.get(k) for k in FAST_SERVE_ENV}
    os.environ.update(FAST_SERVE_ENV)  # inherited by every raylet and so by every worker
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "resources": {"loadgen": 1}, "include_dashboard": False})
    try:
        for _name in GPU_NODES:
            cluster.add_node(num_cpus=3, num_gpus=1, labels={GPU_MEMORY_LABEL: str(GPU_MEMORY_MB)})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, namespace="justnews-multinode")
        serve.start(proxy_location="Disabled")
        yield cluster
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
