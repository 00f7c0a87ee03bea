"""Publishing from a pinned Hugging Face snapshot (offline cache), seeding, and the CLI's JSON output."""

import json
import shutil

import pytest

from modelstore import ModelStore, SourceError, UnsafeWeightsError
from modelstore.cli import main
from modelstore.sources import HuggingFaceSource, make_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hf_cache(cache, repo_id, files_from, extra=()):
    """Lay out files exactly as huggingface_hub's cache does: models--org--name/{refs,snapshots/<sha>}."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / COMMIT
    shutil.copytree(files_from, snap, ignore=shutil.ignore_patterns("manifest.json"))
    for name in extra:
        (snap / name).write_bytes(b"x")
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return snap


def test_publish_from_hf_cache_offline_pins_the_commit(store, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "hf"
    _fake_hf_cache(cache, "mistralai/Tiny-Test", store.resolve("base_models@current").path, extra=["consolidated.safetensors"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"license": "Apache-2.0", "approx_vram_mb": {"fp32": 6}}))
    code = main(["--root", str(store.root), "--json", "publish", "base", "--hf-repo", "mistralai/Tiny-Test",
                 "--revision", "main", "--version", "hf-v1", "--metadata", str(meta)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == {"type": "huggingface", "repo_id": "mistralai/Tiny-Test", "revision": COMMIT,
                             "path": None, "generator": None}
    assert "consolidated.safetensors" not in [f["path"] for f in out["files"]]  # the duplicate is skipped
    assert ModelStore(store.root).verify("base_models@hf-v1").ok


def test_hf_repo_neither_cached_nor_reachable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError, match="neither in the local cache nor downloadable"):
        HuggingFaceSource("mistralai/Not-Cached", "main").materialise()


def test_hf_repo_with_only_pickle_weights_refused(tmp_path, monkeypatch):
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_text("{}")
    _fake_hf_cache(tmp_path / "hf", "org/pickled", src)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnsafeWeightsError, match="no .safetensors"):
        HuggingFaceSource("org/pickled", "main").materialise()


@pytest.mark.parametrize("repo", ["", "../x", "/abs/x", "a/b/c"])
def test_bad_hf_repo_ids_refused(repo):
    with pytest.raises(SourceError):
        HuggingFaceSource(repo)


def test_unknown_source_names_the_choices():
    with pytest.raises(SourceError, match=r"\['huggingface', 'local'\]"):
        make_source("s3", "bucket")


def test_seed_is_deterministic_and_idempotent(seeded_store_root, tmp_path):
    from modelstore.seed import BASE_REF, VISION_BASE_REF, seed_default_store

    existing = ModelStore(seeded_store_root)
    assert seed_default_store(existing) == []  # already complete: nothing published again
    fresh = ModelStore(tmp_path / "fresh")
    assert seed_default_store(fresh, adapters=False) == [BASE_REF, VISION_BASE_REF]
    for ref in (BASE_REF, VISION_BASE_REF):  # two builds, the same bytes
        a = {f.path: f.sha256 for f in existing.manifest(ref).files}
        b = {f.path: f.sha256 for f in fresh.manifest(ref).files}
        assert a == b and "model.safetensors" in a, ref
    assert [r["namespace"] for r in fresh.list()] == ["base_models", "base_models/llava_tiny"]
    assert fresh.check() == [] and seed_default_store(fresh, adapters=False) == []


def test_seed_without_vision_publishes_the_text_base_only(tmp_path):
    from modelstore.seed import BASE_REF, seed_default_store

    fresh = ModelStore(tmp_path / "fresh")
    assert seed_default_store(fresh, adapters=False, vision=False) == [BASE_REF]
    assert [r["namespace"] for r in fresh.list()] == ["base_models"]


def test_cli_errors_are_clear_and_exit_2(store, capsys):
    assert main(["--root", str(store.root), "show", "../../etc/passwd"]) == 2
    assert "invalid model ref" in capsys.readouterr().err
    assert main(["--root", str(store.root), "--json", "show", "critic/nope@v1"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "NotFoundError"


def test_cli_list_resolve_promote_rollback_json(store, capsys):
    root = ["--root", str(store.root), "--json"]
    assert main(root + ["list"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["namespace"] == "base_models" and rows[1]["namespace"] == "base_models/llava_tiny"
    assert len(rows) == 11  # two bases, eight text adapters and the newsreader's
    assert main(root + ["resolve", "base_models", "--variant", "bnb-int8"]) == 0
    assert json.loads(capsys.readouterr().out)["variant"] == "bnb-int8"
    assert main(root + ["check", "--fast"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "problems": []}
