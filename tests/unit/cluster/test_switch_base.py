"""``justnews switch-base``: the dry run's plans on the real Mistral-7B metadata, and a real switch on a temp store.

The figures an operator gets, derived by hand (policy defaults: 5% headroom, 500 MiB CUDA context, 8
sequences of 2,560 tokens, at most 8 adapters per replica):

* KV cache per sequence: 65,536 values/token (2 x 32 layers x 8 KV heads x 128) x 2 bytes x 2,560 tokens
  = 320 MiB; x 8 sequences = 2,560 MiB.
* Adapter: r=16 on q,k,v,o (4096+4096, 4096+1024 x 2, 4096+4096) and gate,up,down (4096+14336 x 3) =
  16 x 81,920 x 32 layers = 41,943,040 params, fp32 = 160 MiB.
* The map puts synthesizer, journalist, reasoning, chief_editor, critic, fact_checker on bf16 (their first
  variant) and analyst, re_ranker on bnb-int8 (theirs). Replicas:
  BaseLLM-bf16     = 13,825 + 2,560 + 6 x 160 + 500 = 17,845 MiB;
  BaseLLM-bnb-int8 =  7,175 + 2,560 + 2 x 160 + 500 = 10,555 MiB.
* RTX 3090: usable 24,576 - ceil(5% = 1,228.8) = 23,347 MiB < 17,845 + 10,555 = 28,400: the two pools do
  not fit together, so the planner puts all 8 agents on one pool of bf16 (the variant every agent accepts
  that most already had): 13,825 + 2,560 + 8 x 160 + 500 = 18,165 MiB,
  num_gpus ceil4(18,165 / 23,347 = 0.77805) = 0.7781, max 1 replica.
* A100 80GB: usable 81,920 - 4,096 = 77,824. num_gpus 17,845/77,824 = 0.22930 -> 0.2293 and
  10,555/77,824 = 0.13563 -> 0.1357; round-robin bf16, int8, bf16, int8, bf16 = 3 x 17,845 + 2 x 10,555
  = 74,645 MiB, and a third int8 (10,555) does not fit the 3,179 left: max 3 and 2.
* 8 x H200: usable 143,771 - ceil(7,188.55) = 136,582 per GPU. num_gpus 0.13065 -> 0.1307 and
  0.07728 -> 0.0773; max 37 and 38 (37 x 17,845 + 38 x 10,555 = 1,061,355 <= 8 x 136,582 = 1,092,656).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cluster.cli import main
from cluster.demand import MIB
from cluster.switch_base import MISTRAL_7B_SHAPE, SwitchRequest, lora_size_bytes, switch_base

REPO = Path(__file__).resolve().parents[3]
METADATA = REPO / "modelstore" / "metadata" / "mistral-7b-instruct-v0.3.json"
DEMANDS = REPO / "cluster" / "demands" / "mistral-7b-8-agents.yaml"
VERSION = "v20251123-mistral-v0.3"
BF16 = ("chief_editor", "critic", "fact_checker", "journalist", "reasoning", "synthesizer")
INT8 = ("analyst", "re_ranker")


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def _request(tmp_path: Path, store_root: Path, *inventories: str, **kw) -> SwitchRequest:
    fields = dict(version=VERSION, metadata=METADATA, hf_repo="mistralai/Mistral-7B-Instruct-v0.3",
                  revision="0d4b76e1efeb5eb6f6b5e757c79870472e04bd3a", map_out=tmp_path / "out" / "map.json",
                  inventories=list(inventories), store_root=store_root)
    return SwitchRequest(**{**fields, **kw})


def _pools(outcome) -> dict[str, tuple]:
    """pool -> (variant, agents, replica MiB, num_gpus, min, max)."""
    return {d.name: (d.variant, tuple(outcome.placement.pools[d.name].agents), d.memory.total_mb, d.num_gpus,
                     d.min_replicas, d.max_replicas) for d in outcome.plan.deployments}


def test_adapter_estimate_is_the_documented_160_mib():
    documented = {a["size_mb"] for a in yaml.safe_load(DEMANDS.read_text())["deployments"][0]["adapters"]}
    assert lora_size_bytes(MISTRAL_7B_SHAPE, 16) == 41_943_040 * 4 == documented.pop() * MIB


def test_dry_run_plans_the_real_metadata_and_writes_nothing(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_STORE_DRY_RUN", "1")
    before = _tree(tmp_path)
    req = _request(tmp_path, store.root, "rtx3090-1gpu", "a100-80gb-1gpu", "h200-8gpu",
                   emit_serve_config=str(tmp_path / "serve-{inventory}.yaml"))
    report = switch_base(req)
    assert _tree(tmp_path) == before  # the store copy, the map and the serve configs: nothing written
    assert report.dry_run and not report.published and not report.map_written
    assert report.base.kv_values_per_token == 65536 and report.adapter_estimate_bytes == 160 * MIB
    assert dict(report.base.approx_vram_mb) == {"fp16": 13825, "bf16": 13825, "bnb-int8": 7175, "bnb-4bit": 3945}
    assert {e["base"] for e in report.new_map["agents"].values() if e["kind"] == "llm"} == {f"base_models@{VERSION}"}

    rtx, a100, h200 = report.outcomes
    assert rtx.refused is None and "do not fit rtx3090-1gpu together" in rtx.plan.deployments[0].variant_reason
    assert _pools(rtx) == {"BaseLLM-bf16": ("bf16", tuple(sorted(BF16 + INT8)), 18165, 0.7781, 1, 1)}
    assert _pools(a100) == {"BaseLLM-bf16": ("bf16", BF16, 17845, 0.2293, 1, 3),
                            "BaseLLM-bnb-int8": ("bnb-int8", INT8, 10555, 0.1357, 1, 2)}
    assert _pools(h200) == {"BaseLLM-bf16": ("bf16", BF16, 17845, 0.1307, 1, 37),
                            "BaseLLM-bnb-int8": ("bnb-int8", INT8, 10555, 0.0773, 1, 38)}
    assert a100.placement.routes["critic"] == ["BaseLLM-bf16"]  # never-quantised: no int8 pool on its route
    assert a100.placement.routes["analyst"] == ["BaseLLM-bnb-int8", "BaseLLM-bf16"]

    # Step 4: the seeded store's adapters belong to the tiny base; each agent gets its train command.
    assert len(report.old_adapters) == 8 and set(report.old_adapters.values()) == {"base_models@v1-tiny-mistral"}
    cmd = report.train_commands["critic"][0]
    assert f"--base-ref base_models@{VERSION}" in cmd and "--adapter-name mistral_critic_v1" in cmd
    assert "--lora-r 16" in cmd and cmd.endswith("--publish") and len(report.train_commands) == 8
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "cannot be re-published" in out and "would write serve config" in out


def test_cli_dry_run_exit_code_says_an_inventory_was_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_STORE_DRY_RUN", "1")
    argv = ["switch-base", "--hf-repo", "mistralai/Mistral-7B-Instruct-v0.3", "--revision", "abc",
            "--metadata", str(METADATA), "--version", VERSION, "--map-out", str(tmp_path / "m.json"),
            "--store-root", str(tmp_path / "s")]
    small = tmp_path / "t4.yaml"  # 16 GB: bf16 does not fit, and critic & co. never accept int8
    small.write_text("name: t4\nnodes:\n  - name: t4-0\n    gpu_count: 1\n    gpu_memory_mb: 15360\n")
    assert main(argv + ["--inventory", str(small)]) == 1
    assert "allow_quantized is false" in capsys.readouterr().out
    small.unlink()
    assert main(argv + ["--inventory", "rtx3090-1gpu"]) == 0
    assert main(argv + ["--inventory", "a100-80gb-1gpu"]) == 0
    assert main(argv + ["--inventory", "a100-80gb-1gpu", "--inventory", "h200-8gpu",
                        "--emit-serve-config", "one.yaml"]) == 2
    assert "put '{inventory}' in the path" in capsys.readouterr().err
    rest = argv[5:]  # from --metadata on
    assert main(["switch-base", "--from-dir", str(tmp_path / "missing"), *rest, "--inventory", "h200-8gpu"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_real_switch_publishes_the_base_and_writes_the_map(store, tmp_path, monkeypatch):
    from agent_graph import load_agent_map

    monkeypatch.delenv("MODEL_STORE_DRY_RUN", raising=False)
    snapshot = shutil.copytree(store.resolve("base_models@current").path, tmp_path / "snapshot",
                               ignore=shutil.ignore_patterns("manifest.json"))  # a local "HF snapshot"
    req = _request(tmp_path, store.root, "a100-80gb-1gpu", hf_repo=None, revision=None, from_dir=snapshot,
                   version="v2-switched", emit_serve_config=str(tmp_path / "serve.yaml"))
    report = switch_base(req, say=lambda m: None)

    assert report.published and report.map_written
    assert store.current_version("base_models") == "v2-switched"
    manifest = store.manifest("base_models@v2-switched")
    assert manifest.model_id == "mistralai/Mistral-7B-Instruct-v0.3" and manifest.approx_vram_mb["bf16"] == 13825
    new_map = load_agent_map(req.map_out)  # the companion AGENT_MODEL_RECOMMENDED.json was copied beside it
    assert {e.base for e in new_map.agents.values() if e.kind == "llm"} == {"base_models@v2-switched"}
    assert new_map.agents["critic"].adapter == "critic/mistral_critic_v1@current"  # everything else kept
    # The store's config.json (the tiny shape) now sizes the KV cache: 2 x 4 layers x 2 KV heads x 32.
    assert report.base.kv_values_per_token == 512
    # Until re-trained, the @current adapters belong to the old base: the new map is refused against the store.
    assert any("validated against base_models@v1-tiny-mistral" in str(p) for p in new_map.store_problems(store))
    config = yaml.safe_load((tmp_path / "serve.yaml").read_text())
    args = config["applications"][0]["args"]
    assert args["map_path"] == str(req.map_out.resolve()) and set(args["placement"]["pools"]) == {
        "BaseLLM-bf16", "BaseLLM-bnb-int8"}
    assert json.loads(req.map_out.read_text())["agents"]["scout"]["kind"] == "embedding"
