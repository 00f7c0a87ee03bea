"""The planner's options on a real 3-node Ray cluster: placement where the plan says, and autoscaling
under load up to the memory cap -- and not beyond -- then back down to min_replicas.

The real BaseLLM deployment (tiny seeded base) runs with the plan's ``ray_actor_options`` (fractional
logical GPUs, the budget env vars), user_config and autoscaling_config, whose custom policy
(:class:`cluster.autoscaling.MemoryCappedPolicy`) caps scaling by GPU memory and the replicas' reported
use. Serve's own ``max_replicas`` is raised above the plan's here, so the cap the test sees is the
policy's, not Serve's bound. Load comes from an actor on the head node that keeps requests in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest

from .conftest import GPU_MEMORY_MB, GPU_NODES, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "llm"
DEPLOYMENT = "BaseLLM"
CONCURRENCY = 12          # in flight; with target 2 per replica the request policy alone would want 6


def _policy():
    from cluster import PlacementPolicy

    # A 1500 MiB "CUDA context" makes each replica ~1.5 GiB: two fit on a 4 GiB GPU (3891 MiB usable).
    return PlacementPolicy(cuda_context_mb=1500, target_ongoing_requests=2, upscale_delay_s=1,
                           downscale_delay_s=3, look_back_period_s=2)


def _deploy(plan_, store_root) -> int:
    """Deploy BaseLLM with the plan's options the way serve_config.yaml does; returns Serve's max_replicas."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    d = plan_.deployment(DEPLOYMENT)
    opts = d.deployment_options()
    # metrics_interval_s (deprecated) only silences Serve's warning that it exceeds look_back_period_s.
    autoscaling = {**opts["autoscaling_config"], "max_replicas": d.max_replicas + 2, "metrics_interval_s": 0.5}
    config = ServeDeploySchema.model_validate({"applications": [{
        "name": APP, "route_prefix": None, "import_path": "deployments.base_llm.deployment:app_builder",
        "args": {"store_root": str(store_root), "device": "cpu", "deployment_name": DEPLOYMENT,
                 "max_ongoing_requests": opts["max_ongoing_requests"], "runtime": opts["user_config"],
                 "ray_actor_options": opts["ray_actor_options"]},
        "deployments": [{"name": DEPLOYMENT, "autoscaling_config": autoscaling,
                         "max_ongoing_requests": opts["max_ongoing_requests"],
                         "ray_actor_options": opts["ray_actor_options"], "user_config": opts["user_config"]}],
    }]})
    _get_global_client().deploy_apps(config, _blocking=False)
    return autoscaling["max_replicas"]


def _replica_states() -> Counter:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or DEPLOYMENT not in app.deployments:
        return Counter()
    return Counter({str(k): v for k, v in app.deployments[DEPLOYMENT].replica_states.items()})


def _running() -> int:
    return _replica_states().get("RUNNING", 0)


def _replicas_per_node() -> Counter:
    """Alive replica actors of the deployment, per node id."""
    from ray._private import state

    out: Counter = Counter()
    for info in state.actors().values():
        if info.get("State") == "ALIVE" and f"{APP}:{DEPLOYMENT}" in str(info.get("ActorClassName", "")):
            out[info["Address"]["NodeID"]] += 1
    return out


class _Watcher(threading.Thread):
    """Samples the replica count every 0.3 s; remembers the largest total (any state) and running."""

    def __init__(self):
        super().__init__(daemon=True)
        self.max_total = 0
        self.max_running = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                states = _replica_states()
            except Exception:  # the controller busy: sample again
                states = Counter()
            self.max_total = max(self.max_total, sum(states.values()))
            self.max_running = max(self.max_running, states.get("RUNNING", 0))
            self._halt.wait(0.3)

    def stop(self):
        self._halt.set()
        self.join(5)


def _load_generator_class():
    import ray

    @ray.remote(num_cpus=0, resources={"loadgen": 0.01})
    class LoadGenerator:
        """Keeps ``concurrency`` requests in flight through a DeploymentHandle until stopped."""

        def __init__(self, app: str):
            from ray import serve

            self.handle = serve.get_app_handle(app)
            self.running = False
            self.done = 0
            self.errors: list[str] = []

        async def run(self, concurrency: int) -> None:
            self.running = True
            body = {"prompt": "[INST] Summarise the news [/INST]", "max_new_tokens": 8, "ignore_eos": True}

            async def worker() -> None:
                while self.running:
                    try:
                        await self.handle.generate.remote(body)
                        self.done += 1
                    except Exception as exc:  # noqa: BLE001 -- reported to the test, which fails on it
                        self.errors.append(repr(exc))
                        await asyncio.sleep(0.2)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        def stop(self) -> tuple[int, list[str]]:
            self.running = False
            return self.done, self.errors[:5]

        def progress(self) -> int:
            return self.done

    return LoadGenerator


def test_plan_placement_and_memory_capped_autoscaling(ray_cluster, model_store):
    import ray
    from ray import serve

    from cluster import default_demand, discover_from_ray, plan
    from modelstore import ModelStore

    started = time.monotonic()
    inventory = discover_from_ray()
    assert [g.memory_mb for _, g in inventory.gpus] == [GPU_MEMORY_MB] * len(GPU_NODES)
    demand = default_demand(ModelStore(model_store)).model_copy(update={"min_replicas": 1})
    p = plan(inventory, [demand], _policy())
    d = p.deployment(DEPLOYMENT)
    assert (d.max_replicas, d.min_replicas) == (4, 1)
    assert d.autoscaling_config["policy"]["policy_function"] == "cluster.autoscaling:MemoryCappedPolicy"
    planned = Counter(pl.node for pl in p.placements)
    assert sorted(planned.values()) == [2, 2]
    node_ids = {n.name: n for n in inventory.nodes}
    gpu_node_ids = {nid["NodeID"] for nid in ray.nodes() if nid["Resources"].get("GPU")}

    serve_max = _deploy(p, model_store)
    assert serve_max > d.max_replicas
    wait_for(lambda: _running() == 1, timeout_s=180, what="the first replica")
    watcher = _Watcher()
    watcher.start()
    gen = _load_generator_class().remote(APP)
    load = gen.run.remote(CONCURRENCY)
    try:
        wait_for(lambda: ray.get(gen.progress.remote()) > 0, timeout_s=60, what="the first responses")
        wait_for(lambda: _running() == d.max_replicas, timeout_s=240,
                 what=f"{d.max_replicas} running replicas under load")
        time.sleep(8)  # load continues: the policy must keep holding at the cap
        per_node = _replicas_per_node()
        states = _replica_states()
        memory = serve.get_app_handle(APP).stats.remote().result(timeout_s=30)["memory"]
        done, errors = ray.get(gen.stop.remote())
    finally:
        ray.get(gen.stop.remote())
    ray.get(load, timeout=120)
    assert not errors, errors
    assert done > 0
    assert sum(states.values()) == d.max_replicas, states
    # The replica read its budget from the plan's env vars and reports its measured use against it.
    assert memory["budget_mb"] == d.memory_budget_mb and not memory["over_budget"], memory
    assert memory["gpu_total_mb"] == GPU_MEMORY_MB, memory
    # Placement: every replica on a GPU node, as many per node as the plan packs onto each GPU.
    assert set(per_node) <= gpu_node_ids, (per_node, gpu_node_ids)
    assert sorted(per_node.values()) == sorted(planned.values()), (per_node, planned, list(node_ids))

    wait_for(lambda: _replica_states() == Counter({"RUNNING": d.min_replicas}), timeout_s=120,
             what=f"scale down to {d.min_replicas}")
    watcher.stop()
    assert watcher.max_running == d.max_replicas
    assert watcher.max_total <= d.max_replicas, f"{watcher.max_total} replicas > memory cap {d.max_replicas}"
    print(f"\nmulti-node scaling cycle: {time.monotonic() - started:.0f}s, {done} requests")


def test_each_pool_lands_where_the_plan_says_with_its_variant(ray_cluster, model_store):
    """Two base pools planned from the map's preferences (critic never quantised, analyst int8 first) on the
    logical-GPU nodes; each pool's replica reports, from the replica itself, the variant the plan chose,
    the planned device, its fractional GPU and its node. The GPUs are logical, so torch sees no CUDA: the
    replica loads on the CPU and reports that as a mismatch with the plan (the alert an operator would get)."""
    import ray
    from ray import serve

    from agent_graph import load_agent_map
    from cluster import AgentNeed, discover_from_ray, placement_from_plan, plan_pools
    from cluster.demand import adapter_facts_from_store, base_facts_from_store
    from deployments.app import AppSettings, pool_settings
    from deployments.base_llm.deployment import build_base_llm
    from modelstore import ModelStore

    serve.delete(APP)  # the scaling test's deployment: free the logical GPUs the plan below counts on
    store = ModelStore(model_store)
    agent_map = load_agent_map()
    needs = [AgentNeed(agent=a, variant_preference=tuple(agent_map.agents[a].variant_preference),
                       allow_quantized=agent_map.agents[a].allow_quantized,
                       adapters=(adapter_facts_from_store(store, agent_map.agents[a].adapter),))
             for a in ("critic", "analyst")]
    layout, p = plan_pools(needs, base_facts_from_store(store, "base_models@current"), discover_from_ray(),
                           _policy())
    placement = placement_from_plan(layout, p)
    assert {n: pool.variant for n, pool in placement.pools.items()} == \
        {"BaseLLM-bf16": "bf16", "BaseLLM-bnb-int8": "bnb-int8"}
    assert placement.routes == {"critic": ["BaseLLM-bf16"], "analyst": ["BaseLLM-bnb-int8", "BaseLLM-bf16"]}
    settings = AppSettings(store_root=str(model_store), llm={"num_replicas": 1})
    for name in placement.pools:
        serve.run(build_base_llm(pool_settings(settings, store, placement, name)), name=name, route_prefix=None,
                  blocking=False)
    for name in placement.pools:
        wait_for(lambda name=name: serve.status().applications.get(name) is not None and
                 str(serve.status().applications[name].status) in ("RUNNING", "ApplicationStatus.RUNNING"),
                 timeout_s=240, what=f"pool {name} running")
    gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU")}
    for name, pool in placement.pools.items():
        stats = serve.get_app_handle(name).stats.remote().result(timeout_s=60)
        loaded = stats["loaded"]
        assert loaded["pool"] == name and loaded["variant"] == pool.variant, loaded
        assert loaded["planned"]["device"] == "cuda" and loaded["planned"]["memory_budget_mb"] == pool.memory_budget_mb
        assert loaded["device"] == "cpu" and any("device cpu != planned cuda" in m for m in loaded["mismatches"])
        assert stats["memory"]["budget_mb"] == pool.memory_budget_mb
        where = stats["placement"]  # from the replica's own runtime context
        assert where["node_id"] in gpu_nodes and where["gpu_ids"], where  # on a GPU node, holding a GPU id
        assert where["assigned"]["GPU"] == pytest.approx(pool.serve_options["ray_actor_options"]["num_gpus"]), where
    for name in placement.pools:
        serve.delete(name)
