"""``justnews preflight``: each check's pass/fail line, the exit code and the JSON output.

This host has no CUDA, so the GPU paths are exercised with torch/bitsandbytes facts patched in; Ray is
never contacted (the check's discovery function is replaced), so no test joins another cluster.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cluster import Inventory, preflight
from cluster.cli import main
from cluster.preflight import check_bitsandbytes, check_cuda, check_ray, check_store, check_store_root


@pytest.fixture(scope="module")
def seeded_root(tmp_path_factory, seeded_store_root) -> Path:
    """A private copy of the seeded store (every agent's adapter, the text and the vision base)."""
    import shutil

    root = tmp_path_factory.mktemp("preflight") / "store"
    shutil.copytree(seeded_store_root, root, symlinks=True)
    return root


def test_cuda_fails_without_a_device_and_skips_when_not_required():
    assert check_cuda(require_gpu=True).status == "fail"
    assert "no CUDA device visible" in check_cuda(require_gpu=True).detail
    assert check_cuda(require_gpu=False).status == "skip"


def test_bitsandbytes_on_cpu(monkeypatch):
    assert check_bitsandbytes(require_gpu=False).status == "pass"
    assert check_bitsandbytes(require_gpu=True).status == "fail"


class _Dll:
    def __init__(self, name):
        self._name = f"/site-packages/bitsandbytes/{name}"


class _Lib:
    def __init__(self, name):
        self._lib = _Dll(name)


@pytest.mark.parametrize("override, loaded, status, words", [
    (None, "libbitsandbytes_cuda124.so", "pass", "libbitsandbytes_cuda124.so"),
    ("124", "libbitsandbytes_cuda124.so", "pass", "libbitsandbytes_cuda124.so"),
    ("122", "libbitsandbytes_cuda122.so", "warn", "BNB_CUDA_VERSION=122) with torch CUDA 12.4"),
    ("122", "libbitsandbytes_cuda124.so", "fail", "BNB_CUDA_VERSION=122 names libbitsandbytes_cuda122* but"),
])
def test_bitsandbytes_honours_bnb_cuda_version(monkeypatch, override, loaded, status, words):
    import torch
    from bitsandbytes import cextension

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(cextension, "lib", _Lib(loaded))
    monkeypatch.setattr(cextension, "BNB_BACKEND", "CUDA")
    if override:
        monkeypatch.setenv("BNB_CUDA_VERSION", override)
    else:
        monkeypatch.delenv("BNB_CUDA_VERSION", raising=False)
    result = check_bitsandbytes()
    assert result.status == status and words in result.detail, result.detail


def test_store_root_missing_and_read_only(tmp_path):
    assert "does not exist" in check_store_root(tmp_path / "nope").detail
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        result = check_store_root(ro)
        assert result.status == ("pass" if os.geteuid() == 0 else "fail")  # root writes anywhere
    finally:
        os.chmod(ro, 0o755)


def test_store_check_reports_the_first_problem(tmp_path, seeded_root):
    assert check_store(seeded_root).status == "pass"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = check_store(empty)
    assert result.status == "fail" and "holds no models" in result.detail


def test_ray_unreachable_is_a_failure_line(monkeypatch):
    def refuse(address, gpu_memory_mb=None):
        raise ConnectionError("could not connect to 10.0.0.1:6379")

    monkeypatch.setattr("cluster.discover.discover_from_ray", refuse)
    result = check_ray("10.0.0.1:6379")
    assert result.status == "fail" and result.detail == (
        "Ray at 10.0.0.1:6379: ConnectionError: could not connect to 10.0.0.1:6379")


def _fake_ray(monkeypatch, gpus_mb: list[int]):
    inv = Inventory.model_validate({"name": "ray-cluster", "nodes": [
        {"name": "head", "memory_mb": 8192}, {"name": "w0", "gpus": [{"memory_mb": mb} for mb in gpus_mb]}]})
    monkeypatch.setattr("cluster.discover.discover_from_ray", lambda address, gpu_memory_mb=None: inv)


def test_preflight_plans_on_the_ray_inventory_and_exits_by_verdict(monkeypatch, capsys, seeded_root):
    _fake_ray(monkeypatch, [4096])
    rc = main(["preflight", "--store-root", str(seeded_root), "--fast", "--no-gpu"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0, out
    assert [line.split()[:2] for line in out[:-1]] == [
        ["SKIP", "cuda"], ["PASS", "bitsandbytes"], ["PASS", "store_root"], ["PASS", "store"], ["PASS", "ray"],
        ["PASS", "plan"]]
    # The agent map's pools, as build_app places them (the newsreader served: its vision pool last)
    assert "Ray inventory: BaseLLM-bf16 bf16" in out[5] and "; BaseLLM-bnb-int8 bnb-int8" in out[5], out[5]
    assert "; BaseLLM-llava_tiny-bf16 bf16 " in out[5] and out[-1].startswith("preflight: ready")


def test_preflight_fails_when_the_plan_does_not_fit(monkeypatch, capsys, seeded_root):
    _fake_ray(monkeypatch, [512])  # less than one replica of even the tiny base
    rc = main(["preflight", "--store-root", str(seeded_root), "--fast", "--no-gpu", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 1 and data["ok"] is False
    (plan_check,) = [c for c in data["checks"] if c["name"] == "plan"]
    assert plan_check["status"] == "fail" and "MiB" in plan_check["detail"]


def test_preflight_without_gpu_on_a_gpu_deployment_fails(capsys, seeded_root):
    rc = main(["preflight", "--store-root", str(seeded_root), "--fast", "--no-ray"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL  cuda" in out and "preflight: NOT ready" in out


def test_report_lines_and_order():
    report = preflight.PreflightReport(checks=[preflight.CheckResult(name="cuda", status="pass", detail="1 GPU")])
    assert preflight.format_report(report) == "PASS  cuda          1 GPU\npreflight: ready (1 pass)"


def test_preflight_plans_a_vision_pool_only_when_served_and_names_a_missing_vision_base(monkeypatch, capsys,
                                                                                       seeded_root, tmp_path):
    from . import newsreader

    _fake_ray(monkeypatch, [4096])
    argv = ["preflight", "--fast", "--no-gpu", "--map", str(newsreader.served_map(tmp_path / "map")), "--json"]
    assert main([*argv, "--store-root", str(seeded_root)]) == 0
    (plan_check,) = [c for c in json.loads(capsys.readouterr().out)["checks"] if c["name"] == "plan"]
    assert "; BaseLLM-llava_tiny-bf16 bf16 " in plan_check["detail"]
    assert set(plan_check["data"]["options"]) == {"BaseLLM-bf16", "BaseLLM-bnb-int8", "BaseLLM-llava_tiny-bf16"}
    # Not served: the text base's two pools only.
    argv[argv.index("--map") + 1] = str(newsreader.unserved_map(tmp_path / "unserved"))
    assert main([*argv, "--store-root", str(seeded_root)]) == 0
    (plan_check,) = [c for c in json.loads(capsys.readouterr().out)["checks"] if c["name"] == "plan"]
    assert "llava" not in plan_check["detail"]
    assert set(plan_check["data"]["options"]) == {"BaseLLM-bf16", "BaseLLM-bnb-int8"}
    # The real base before it is published: the store passes its own check, the plan names what is missing.
    real = newsreader.served_map(tmp_path / "real", base="base_models/llava_next@current")
    argv[argv.index("--map") + 1] = str(real)
    assert main([*argv, "--store-root", str(seeded_root)]) == 1
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["store"]["status"] == "pass" and checks["plan"]["status"] == "fail"
    assert "agent 'newsreader': its base 'base_models/llava_next@current' is not in the ModelStore" in \
        checks["plan"]["detail"]
