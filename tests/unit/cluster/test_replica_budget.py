"""The replica side of the budget (deployments/base_llm/replica_budget.py) outside Ray: env parsing, what is
reported to the autoscaling policy, and the stats summary."""

from __future__ import annotations

import pytest

from cluster.autoscaling import METRIC_BUDGET_MB, METRIC_GPU_KEY, METRIC_PEAK_MB
from cluster.budget import BUDGET_ENV, CONTEXT_ENV, context_from_env
from deployments.base_llm.replica_budget import ReplicaBudget


def test_budget_from_the_planners_env_is_reported_not_enforced_on_cpu(monkeypatch):
    import ray

    ray_was_up = ray.is_initialized()  # the integration tests may share this process's cluster
    monkeypatch.setenv(BUDGET_ENV, "4096")
    monkeypatch.setenv(CONTEXT_ENV, "500")
    budget = ReplicaBudget("cpu")
    assert budget.budget_mb == 4096 and budget.context_mb == 500
    assert budget.status is not None and not budget.status.enforced
    sample = budget.sample()
    assert sample["budget_mb"] == 4096 and sample["source"] == "process RSS" and sample["peak_mb"] > 0
    assert sample["over_budget"] == (sample["peak_mb"] > 4096)
    stats = budget.autoscaling_stats()
    assert stats[METRIC_BUDGET_MB] == 4096.0 and stats[METRIC_PEAK_MB] >= sample["peak_mb"]
    assert METRIC_GPU_KEY not in stats  # outside Ray no GPU was assigned
    assert all(isinstance(v, float) for v in stats.values())  # Serve refuses anything but numbers
    assert ray.is_initialized() == ray_was_up  # measuring outside Ray never starts a local instance


def test_without_a_budget_only_the_measurement_is_reported(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    budget = ReplicaBudget("cpu")
    assert budget.status is None
    assert set(budget.autoscaling_stats()) == {METRIC_PEAK_MB}


@pytest.mark.parametrize("raw, message", [("x", r"JUSTNEWS_REPLICA_CONTEXT_MB \('x'\) must be a whole number"),
                                          ("-1", r"JUSTNEWS_REPLICA_CONTEXT_MB \(-1\) must be >= 0")])
def test_context_env_is_checked(monkeypatch, raw, message):
    monkeypatch.setenv(CONTEXT_ENV, raw)
    with pytest.raises(ValueError, match=message):
        context_from_env()
