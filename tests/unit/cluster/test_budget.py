"""Replica-side budget enforcement, with a stand-in torch.cuda, and the no-Ray guarantee of the package."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from cluster import BUDGET_ENV, apply_replica_budget, budget_from_env, measured_usage
from cluster import budget as budget_mod

MIB = 1024 * 1024


@pytest.mark.parametrize("raw, expected", [(None, 7), ("", 7), ("11515", 11515)])
def test_budget_from_env(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv(BUDGET_ENV, raising=False)
    else:
        monkeypatch.setenv(BUDGET_ENV, raw)
    assert budget_from_env(default=7) == expected


@pytest.mark.parametrize("raw, message", [("12.5", "whole number of MiB"), ("0", "(0) must be > 0")])
def test_budget_from_env_refuses_garbage(monkeypatch, raw, message):
    monkeypatch.setenv(BUDGET_ENV, raw)
    with pytest.raises(ValueError) as err:
        budget_from_env()
    assert message in str(err.value)


def test_cpu_budget_is_reported_not_enforced():
    status = apply_replica_budget(1024, "cpu")
    assert not status.enforced and status.fraction is None and "RSS" in status.note
    usage = measured_usage("cpu")
    assert usage.source == "process RSS" and usage.peak_mb > 10 and usage.current_mb > 10
    assert usage.over(1) and not usage.over(10**7)
    for budget, context in ((0, 0), (500, 500), (500, -1)):
        with pytest.raises(ValueError, match=rf"budget_mb \({budget}\) must be > 0 and > context_mb"):
            apply_replica_budget(budget, "cpu", context_mb=context)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as seen on a 24 GiB GPU, recording set_per_process_memory_fraction calls."""
    calls = []
    cuda = types.SimpleNamespace(
        is_available=lambda: True, current_device=lambda: 0,
        get_device_properties=lambda i: types.SimpleNamespace(total_memory=24576 * MIB),
        set_per_process_memory_fraction=lambda f, i: calls.append((round(f, 6), i)),
        max_memory_allocated=lambda i: 3000 * MIB, memory_allocated=lambda i: 1000 * MIB,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    return calls


def test_cuda_budget_sets_the_per_process_fraction(fake_cuda):
    status = apply_replica_budget(12288, "cuda:1")
    assert status.enforced and status.device == "cuda:1" and status.device_total_mb == 24576
    apply_replica_budget(12788, "cuda:0", context_mb=500)  # the allocator never sees the CUDA context
    assert fake_cuda == [(0.5, 1), (0.5, 0)]
    usage = measured_usage("cuda")
    assert (usage.device, usage.peak_mb, usage.current_mb) == ("cuda:0", 3000.0, 1000.0)
    with pytest.raises(ValueError, match=r"budget_mb \(30000\) exceeds the device's 24576 MiB on cuda:0"):
        apply_replica_budget(30000, "cuda")


def test_the_planner_never_imports_ray():
    code = ("import sys, cluster, cluster.cli; from cluster import plan, load_inventory, PlacementPolicy; "
            "assert 'ray' not in sys.modules, 'ray imported'; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert budget_mod.BUDGET_ENV == "JUSTNEWS_REPLICA_BUDGET_MB"
