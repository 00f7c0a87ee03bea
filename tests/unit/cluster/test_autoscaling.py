"""The memory-capped autoscaling policy: the cap from the plan's reservations and the replicas' reports,
and the policy object as Ray Serve calls it (a real ``AutoscalingContext``; no cluster)."""

from __future__ import annotations

import pytest

from cluster import PlacementPolicy, plan
from cluster.autoscaling import (METRIC_BUDGET_MB, METRIC_GPU_FREE_MB, METRIC_GPU_KEY, METRIC_GPU_TOTAL_MB,
                                 METRIC_PEAK_MB, MemoryCappedPolicy, ReplicaReport, memory_cap)

from .conftest import demand, gpu_inventory

BUDGET = 1000
RESERVED = [2000, 2000]  # two GPUs, two replicas each


def _on(gpu: float, *, peak: float | None = 600, free: float | None = None, total: float = 4096) -> ReplicaReport:
    return ReplicaReport(peak_mb=peak, budget_mb=BUDGET, gpu_key=gpu, gpu_total_mb=total, gpu_free_mb=free)


@pytest.mark.parametrize("reports, cap, replica_mb, why", [
    ([], 4, 1000, "nothing reported: the plan's max_replicas"),
    ([ReplicaReport(peak_mb=600)], 4, 1000, "under budget: the budget sizes a replica"),
    ([ReplicaReport(peak_mb=1500)], 2, 1500, "one replica grew past its budget: one fits per 2000 MiB share"),
    ([ReplicaReport(peak_mb=2100)], 0, 2100, "bigger than a GPU share: memory allows none"),
    ([_on(1.0)], 4, 1000, "logical GPU: 3891 - 1000 leaves room for 2 more; the other GPU's share counts 2"),
    ([_on(1.0, free=1100)], 3, 1000, "CUDA reports 1100 MiB free (205 headroom): no more on this GPU"),
    ([_on(1.0, free=1100), _on(2.0, free=3000)], 4, 1000, "GPU 1 takes none, GPU 2 two more: 2 running + 2"),
])
def test_memory_cap(reports, cap, replica_mb, why):
    got = memory_cap(reports, budget_mb=BUDGET, reserved_mb=RESERVED)
    assert (got.replicas, got.replica_mb) == (cap, replica_mb), f"{why}: {got.reason}"


def test_logical_gpu_counts_our_replicas_use_against_its_memory():
    # Two replicas on one logical 2500 MiB GPU (2375 usable): 375 left, so no third there.
    reports = [_on(7.0, total=2500), _on(7.0, total=2500)]
    got = memory_cap(reports, budget_mb=BUDGET, reserved_mb=[2000])
    assert got.replicas == 2 and got.free_cap == 2 and "2 running + 0 more" in got.reason


def test_cuda_free_memory_can_lower_the_cap_below_the_plan():
    # Something else on the device leaves 800 MiB free on both GPUs: only the running replicas fit.
    reports = [_on(1.0, free=800), _on(2.0, free=800)]
    got = memory_cap(reports, budget_mb=BUDGET, reserved_mb=RESERVED)
    assert (got.plan_cap, got.free_cap, got.replicas) == (4, 2, 2)


def _context(running: int, requests: float, metrics: dict):
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    dep = DeploymentID(name="BaseLLM", app_name="app")
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=dep) for i in range(running)]
    metrics = {name: {replicas[i]: v for i, v in per.items()} for name, per in metrics.items()}
    config = AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=2)
    return AutoscalingContext(
        deployment_id=dep, deployment_name="BaseLLM", app_name="app", current_num_replicas=running,
        target_num_replicas=running, running_replicas=replicas, total_num_requests=requests,
        total_queued_requests=0, aggregated_metrics=metrics, raw_metrics={}, capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=8, policy_state={}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=0.0, config=config)


def test_policy_caps_the_request_based_decision():
    policy = MemoryCappedPolicy(budget_mb=BUDGET, reserved_mb=RESERVED)
    # 24 ongoing requests at target 2 per replica: Serve's default wants 12.
    desired, state = policy(_context(2, 24, {METRIC_PEAK_MB: {0: 500, 1: 500}, METRIC_BUDGET_MB: {0: BUDGET, 1: BUDGET}}))
    assert desired == 4 and state["justnews_memory_cap"] == 4
    # A replica reports 1500 MiB: only one per 2000 MiB share fits any more.
    desired, _ = policy(_context(2, 24, {METRIC_PEAK_MB: {0: 1500, 1: 500}}))
    assert desired == 2
    # Below the cap the default decision stands.
    desired, _ = policy(_context(2, 6, {}))
    assert desired == pytest.approx(3)


def test_policy_reads_gpu_metrics_by_replica():
    policy = MemoryCappedPolicy(budget_mb=BUDGET, reserved_mb=RESERVED)
    metrics = {METRIC_PEAK_MB: {0: 500}, METRIC_GPU_KEY: {0: 9.0}, METRIC_GPU_TOTAL_MB: {0: 4096},
               METRIC_GPU_FREE_MB: {0: 1100}}
    assert policy.cap(_context(1, 24, metrics)).replicas == 3


def test_policy_refuses_budget_larger_than_a_reservation():
    with pytest.raises(ValueError, match=r"budget_mb \(3000\) must be > 0 and <= every reserved_mb \(\[2000\]\)"):
        MemoryCappedPolicy(budget_mb=3000, reserved_mb=[2000])


def test_planned_autoscaling_config_is_accepted_by_serve_and_builds_the_policy():
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.config import AutoscalingConfig

    d = plan(gpu_inventory((24576,), (24576,)), [demand(min_replicas=1)]).deployments[0]
    config = AutoscalingConfig(**d.autoscaling_config)
    assert config.policy.policy_function == "cluster.autoscaling:MemoryCappedPolicy"
    policy = _resolve_policy_callable(config.policy)  # what the controller does: unpickle, instantiate
    assert policy.budget_mb == d.memory_budget_mb
    assert sum(mb // d.memory_budget_mb for mb in policy.reserved_mb) == d.max_replicas


def test_memory_autoscaling_can_be_turned_off():
    d = plan(gpu_inventory((24576,)), [demand()], PlacementPolicy(memory_autoscaling=False)).deployments[0]
    assert "policy" not in d.autoscaling_config
