"""Named bases (``base_models/<name>@<version>``): their own versions, current, history, gc, verify and check,
independent of the text base, published through the same path; the CLI takes them like any ref."""

import json
import os
import shutil
from pathlib import Path

import pytest

from modelstore import ManifestError, ModelMetadata, ModelStore, NotFoundError
from modelstore.cli import main
from modelstore.manifest import VisionInfo
from modelstore.refs import BaseRef
from modelstore.seed import BASE_VERSION, VISION_BASE_NAME, VISION_BASE_REF, VISION_BASE_VERSION

VISION_NS = f"base_models/{VISION_BASE_NAME}"


def _vision_src(store: ModelStore, dst: Path) -> Path:
    return shutil.copytree(store.resolve(VISION_BASE_REF).path, dst, ignore=shutil.ignore_patterns("manifest.json"))


def _vision_meta(store: ModelStore, **vision) -> ModelMetadata:
    m = store.manifest(VISION_BASE_REF)
    return ModelMetadata(license=m.license, approx_vram_mb={"fp32": 7},
                         vision=VisionInfo(**{**m.vision.model_dump(), **vision}))


def _weights(store: ModelStore, ref: str) -> Path:
    return store.resolve(ref).path / "model.safetensors"


def test_seeded_layout_and_namespaces(store):
    ns_dir = store.root / "base_models" / VISION_BASE_NAME
    assert (ns_dir / "versions" / VISION_BASE_VERSION / "manifest.json").is_file()
    assert os.readlink(ns_dir / "current") == f"versions/{VISION_BASE_VERSION}"
    assert os.readlink(store.root / "base_models" / "current") == f"versions/{BASE_VERSION}"
    refs = list(store.namespaces())
    assert refs[:2] == [BaseRef(), BaseRef(name=VISION_BASE_NAME)] and all(r.kind == "adapter" for r in refs[2:])
    rows = store.list()
    assert rows[1] == {"namespace": VISION_NS, "kind": "base", "current": VISION_BASE_VERSION,
                       "versions": [VISION_BASE_VERSION]}
    assert str(store.pin(VISION_NS)) == VISION_BASE_REF
    m = store.manifest(VISION_NS)
    assert m.namespace == VISION_NS and m.kind == "base" and m.architecture == "LlavaForConditionalGeneration"


def test_publish_promote_rollback_gc_leave_the_text_base_alone(store, tmp_path):
    text_history = (store.root / "base_models" / "history.json").read_text()
    src = _vision_src(store, tmp_path / "src")
    meta = _vision_meta(store)
    for version in ("v2", "v3"):
        m = store.publish_base(src, version, name=VISION_BASE_NAME, metadata=meta)
        assert m.namespace == VISION_NS and m.vision == meta.vision
    assert store.current_version(VISION_NS) == "v3" and store.versions(VISION_NS)[-2:] == ["v2", "v3"]
    assert store.current_version("base_models") == BASE_VERSION and store.versions("base_models") == [BASE_VERSION]
    assert str(store.rollback(VISION_NS)) == f"{VISION_NS}@v2"
    assert str(store.promote(f"{VISION_NS}@v3")) == f"{VISION_NS}@v3"
    assert store.gc(VISION_NS, keep=1) == [VISION_BASE_VERSION, "v2"]
    assert store.versions(VISION_NS) == ["v3"]
    events = json.loads((store.root / "base_models" / VISION_BASE_NAME / "history.json").read_text())
    assert [(e["action"], e["version"]) for e in events] == [
        ("publish", VISION_BASE_VERSION), ("publish", "v2"), ("publish", "v3"), ("rollback", "v2"), ("promote", "v3")]
    # the text base: same current, same versions, same history
    assert (store.root / "base_models" / "history.json").read_text() == text_history
    assert store.versions("base_models") == [BASE_VERSION] and store.current_version("base_models") == BASE_VERSION
    with pytest.raises(Exception, match="nothing to roll back"):
        store.rollback("base_models")
    # the seeded newsreader adapter was validated against the collected version, and check says so
    [problem] = store.check()
    assert problem.startswith(f"newsreader/llava_newsreader_v1@seed-1: base {VISION_BASE_REF}")


def test_text_base_operations_leave_the_named_base_alone(store, tmp_path):
    src = shutil.copytree(store.resolve("base_models@current").path, tmp_path / "text",
                          ignore=shutil.ignore_patterns("manifest.json"))
    store.publish_base(src, "v2", metadata=ModelMetadata(license="Apache-2.0", approx_vram_mb={"fp32": 7}))
    assert store.gc("base_models", keep=1) == [BASE_VERSION]
    assert store.current_version(VISION_NS) == VISION_BASE_VERSION and store.versions(VISION_NS) == [VISION_BASE_VERSION]
    assert (store.root / "base_models" / VISION_BASE_NAME / "versions" / VISION_BASE_VERSION).is_dir()


def test_a_damaged_named_base_is_reported_by_its_ref_only(store, capsys):
    weights = _weights(store, VISION_BASE_REF)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    report = store.verify(VISION_NS)
    assert not report.ok and list(report.bad_files) == ["model.safetensors"]
    assert store.verify("base_models").ok
    problems = store.check()
    assert len(problems) == 1 and problems[0].startswith(f"{VISION_BASE_REF}: model.safetensors"), problems
    assert main(["--root", str(store.root), "verify"]) == 1
    out = capsys.readouterr().out
    assert f"BAD {VISION_BASE_REF}" in out and f"OK  base_models@{BASE_VERSION}" in out


@pytest.mark.parametrize("vision, message", [
    ({"tokens_per_image": 65}, "vision.tokens_per_image (65) != 64, the most the llava config gives one image"),
    ({"image_size": 72, "tokens_per_image": 81}, "vision.image_size (72) != config.json vision_config.image_size (64)"),
    ({"patch_size": 16}, "vision.patch_size (16) != config.json vision_config.patch_size (8)"),
])
def test_publish_refuses_vision_facts_that_contradict_the_config(store, tmp_path, vision, message):
    src = _vision_src(store, tmp_path / "src")
    with pytest.raises(ManifestError, match="the vision metadata does not fit the files") as exc:
        store.publish_base(src, "v2", name=VISION_BASE_NAME, metadata=_vision_meta(store, **vision))
    assert message in str(exc.value)
    assert store.versions(VISION_NS) == [VISION_BASE_VERSION]


def test_publish_refuses_a_vision_base_without_its_processor(store, tmp_path):
    src = _vision_src(store, tmp_path / "src")
    (src / "processor_config.json").unlink()
    with pytest.raises(ManifestError, match="no image processor config is published"):
        store.publish_base(src, "v2", name=VISION_BASE_NAME, metadata=_vision_meta(store))


def test_check_finds_a_manifest_whose_vision_facts_drifted(store):
    path = store.resolve(VISION_BASE_REF).path / "manifest.json"
    data = json.loads(path.read_text())
    data["vision"]["tokens_per_image"] = 65
    os.chmod(path, 0o644)
    path.write_text(json.dumps(data))
    assert store.check(checksums=False) == [
        f"{VISION_BASE_REF}: vision.tokens_per_image (65) != 64, the most the llava config gives one image"]


def test_a_named_base_needs_no_text_base(tmp_path, store):
    fresh = ModelStore(tmp_path / "fresh")
    fresh.publish_base(_vision_src(store, tmp_path / "src"), "v1", name="alt", metadata=_vision_meta(store))
    assert [str(r) for r in fresh.namespaces()] == ["base_models/alt@current"]
    with pytest.raises(NotFoundError, match="no current version"):
        fresh.resolve("base_models")
    assert fresh.check() == []


def test_stray_directories_beside_the_bases_are_not_namespaces(store):
    for stray in ("Not-A-Name/versions", "no_versions_dir"):
        (store.root / "base_models" / stray).mkdir(parents=True)
    assert [str(r) for r in store.namespaces() if r.kind == "base"] == ["base_models@current", f"{VISION_NS}@current"]


def test_cli_publish_list_promote_rollback_gc_a_named_base(store, tmp_path, capsys):
    root = ["--root", str(store.root), "--json"]
    src = _vision_src(store, tmp_path / "src")
    meta = tmp_path / "meta.json"
    meta.write_text(_vision_meta(store).model_dump_json())
    assert main(root + ["publish", "base", "--name", VISION_BASE_NAME, "--version", "v2", "--from-dir", str(src),
                        "--metadata", str(meta)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["namespace"] == VISION_NS and out["vision"]["tokens_per_image"] == 64
    assert main(root + ["list"]) == 0
    rows = {r["namespace"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[VISION_NS]["current"] == "v2" and rows["base_models"]["current"] == BASE_VERSION
    assert main(root + ["rollback", VISION_NS]) == 0
    assert json.loads(capsys.readouterr().out) == {"current": VISION_BASE_REF}
    assert main(root + ["promote", f"{VISION_NS}@v2"]) == 0
    capsys.readouterr()
    assert main(root + ["verify", f"{VISION_NS}@v2"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["ok"] is True
    assert main(root + ["gc", VISION_NS, "--keep", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"removed": [VISION_BASE_VERSION]}
    assert main(root + ["check"]) == 1  # the seeded newsreader adapter's base version is gone
    assert "llava_newsreader_v1@seed-1" in capsys.readouterr().out
    assert main(root + ["show", "base_models/versions"]) == 2
    assert "reserved" in json.loads(capsys.readouterr().out)["message"]


def test_adapter_validation_reads_the_language_model_of_a_vision_base(store):
    from modelstore.validate import _linear_modules

    linears = _linear_modules(store.resolve(VISION_BASE_REF).path)
    assert "model.language_model.layers.0.self_attn.q_proj" in linears
    assert linears["model.language_model.layers.0.mlp.down_proj"] == (384, 128)
    assert any(n.startswith("model.vision_tower.") for n in linears)
