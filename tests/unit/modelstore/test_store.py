"""Publish, verify, promote/rollback/gc and refusal paths of the ModelStore, on real files."""

import json
import os
import shutil
from pathlib import Path

import pytest

from modelstore import (AdapterValidationError, ChecksumError, ModelMetadata, ModelStore, ModelStoreError,
                        NotFoundError, UnsafeWeightsError, VersionExistsError)
from modelstore.seed import adapter_ref


def _base_dir(store: ModelStore) -> Path:
    return store.resolve("base_models@current").path


def _copy_plain(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("manifest.json"))
    return dst


def test_seeded_store_layout_and_current_pointers(store):
    assert (store.root / "base_models" / "versions" / "v1-tiny-mistral" / "manifest.json").is_file()
    assert os.readlink(store.root / "base_models" / "current") == "versions/v1-tiny-mistral"
    ref = store.pin(adapter_ref("critic", "current"))
    assert str(ref) == "critic/mistral_critic_v1@seed-1"
    assert store.adapter_path(ref) == store.root / "critic/adapters/mistral_critic_v1/versions/seed-1"
    m = store.manifest("base_models@current")
    assert m.architecture == "MistralForCausalLM" and m.license == "Apache-2.0"
    assert set(m.approx_vram_mb) == {"fp32", "bf16", "fp16", "bnb-int8", "bnb-4bit"}
    # measured, so the quantised and half-precision loads really are smaller than fp32
    assert max(m.approx_vram_mb[v] for v in ("bnb-4bit", "bnb-int8", "fp16")) < m.approx_vram_mb["fp32"]
    am = store.manifest(ref)
    assert am.adapter.base_ref == "base_models@v1-tiny-mistral" and am.adapter.rank == 8
    assert "q_proj" in am.adapter.target_modules and am.adapter.size_bytes > 0


def test_publish_verify_load_round_trip(store, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _copy_plain(_base_dir(store), tmp_path / "src")
    meta = ModelMetadata(license="Apache-2.0", approx_vram_mb={"fp32": 6, "bnb-int8": 3})
    manifest = store.publish_base(src, "v2", metadata=meta)
    assert manifest.license == "Apache-2.0" and manifest.quantized_variants == ["bnb-int8"]
    assert manifest.version == "v2" and store.current_version("base_models") == "v2"
    report = store.verify("base_models@v2")
    assert report.ok and report.checked_bytes == manifest.total_bytes
    for entry in manifest.files:  # what the manifest says is what is on disk
        assert (store.root / "base_models/versions/v2" / entry.path).stat().st_size == entry.size
    path = store.resolve("base_models@v2").path
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(path)
    out = model.generate(**tok("[INST] hi [/INST]", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 3


def test_republish_of_different_content_refused_unless_force(store, tmp_path):
    src = _copy_plain(store.adapter_path(adapter_ref("critic")), tmp_path / "a")
    (src / "NOTES.md").write_text("v1 notes")
    with pytest.raises(VersionExistsError, match="critic/mistral_critic_v1@seed-1 already exists with different "
                                                 "content \\(NOTES.md is not in the published version\\)"):
        store.publish_adapter("critic", "mistral_critic_v1", src, "seed-1")
    m = store.publish_adapter("critic", "mistral_critic_v1", src, "seed-1", force=True)
    assert "NOTES.md" in [f.path for f in m.files]
    assert store.verify(adapter_ref("critic")).ok
    assert not any((store.root / ".staging").iterdir())


def test_flipped_byte_fails_verify_naming_the_file(store, capsys):
    from modelstore.cli import main

    weights = store.adapter_path(adapter_ref("analyst")) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    report = store.verify(adapter_ref("analyst"))
    assert not report.ok and list(report.bad_files) == ["adapter_model.safetensors"]
    assert "sha256" in report.bad_files["adapter_model.safetensors"]
    with pytest.raises(ChecksumError) as exc:
        store.verify_or_raise(adapter_ref("analyst"))
    assert exc.value.bad_files == ["adapter_model.safetensors"]
    assert main(["--root", str(store.root), "verify"]) == 1
    out = capsys.readouterr().out
    assert "BAD analyst/mistral_analyst_v1@seed-1" in out and "adapter_model.safetensors" in out
    assert "OK  base_models@v1-tiny-mistral" in out
    assert main(["--root", str(store.root), "check"]) == 1


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pt", "sub/model.pth", "x.ckpt"])
def test_pickle_weights_refused(store, tmp_path, name):
    src = _copy_plain(_base_dir(store), tmp_path / "src")
    (src / name).parent.mkdir(parents=True, exist_ok=True)
    (src / name).write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeWeightsError, match=name.split("/")[-1]):
        store.publish_base(src, "v9", measure=lambda d: {"fp32": 6})
    assert "v9" not in store.versions("base_models")


def test_base_without_safetensors_refused(store, tmp_path):
    src = _copy_plain(_base_dir(store), tmp_path / "src")
    (src / "model.safetensors").unlink()
    with pytest.raises(ModelStoreError, match="safetensors"):
        store.publish_base(src, "v9", measure=lambda d: {"fp32": 6})


def _make_adapter(base_path: Path, out: Path, targets, rank=4):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path)
    torch.manual_seed(0)
    get_peft_model(model, LoraConfig(r=rank, target_modules=targets, init_lora_weights=False)).save_pretrained(out)
    return out


def test_adapter_with_unknown_target_module_refused(store, tmp_path):
    src = _make_adapter(_base_dir(store), tmp_path / "ad", ["q_proj"])
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "c_attn"]  # a GPT-2 module name: not in Mistral
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterValidationError, match="c_attn"):
        store.publish_adapter("critic", "wrong_arch", src, "v1")
    assert not (store.root / "critic/adapters/wrong_arch/versions/v1").exists()


def test_adapter_with_wrong_shapes_refused(store, tmp_path):
    from safetensors.torch import load_file, save_file

    src = _make_adapter(_base_dir(store), tmp_path / "ad", ["q_proj"])
    tensors = load_file(src / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[key] = tensors[key][:, :-8].contiguous()  # in_features no longer matches the base
    save_file(tensors, src / "adapter_model.safetensors")
    with pytest.raises(AdapterValidationError, match="has shape"):
        store.publish_adapter("critic", "bad_shape", src, "v1")


def test_adapter_base_ref_must_resolve(store, tmp_path):
    src = _make_adapter(_base_dir(store), tmp_path / "ad", ["v_proj"])
    with pytest.raises(NotFoundError, match="nope"):
        store.publish_adapter("critic", "x", src, "v1", base_ref="base_models@nope")
    m = store.publish_adapter("critic", "x", src, "v1")
    assert m.adapter.base_ref == "base_models@v1-tiny-mistral"  # pinned, not 'current'


def test_promote_rollback_gc(store, tmp_path):
    src = _copy_plain(store.adapter_path(adapter_ref("journalist")), tmp_path / "a")
    ns = "journalist/mistral_journalist_v1"
    for v in ("v2", "v3", "v4"):
        store.publish_adapter("journalist", "mistral_journalist_v1", src, v)
    assert store.current_version(ns) == "v4"
    assert str(store.rollback(ns)) == f"{ns}@v3"
    assert str(store.rollback(ns)) == f"{ns}@v2"
    store.promote(f"{ns}@v4")
    assert store.current_version(ns) == "v4"
    assert str(store.rollback(ns)) == f"{ns}@v2"
    # gc keeps the newest 1 plus the current one (v2), never deleting current
    removed = store.gc(ns, keep=1)
    assert removed == ["seed-1", "v3"]
    assert store.versions(ns) == ["v2", "v4"] and store.current_version(ns) == "v2"
    with pytest.raises(ModelStoreError, match="keep"):
        store.gc(ns, keep=0)
    with pytest.raises(NotFoundError):
        store.promote(f"{ns}@v3")
    with pytest.raises(ModelStoreError, match="explicit version"):
        store.promote(ns)
    # v3 and seed-1 are gone: rolling back from v2 can only skip them
    store.promote(f"{ns}@v4")
    assert str(store.rollback(ns)) == f"{ns}@v2"
    with pytest.raises(ModelStoreError, match="nothing to roll back"):
        store.rollback(ns)


def test_publish_without_promote_keeps_current(store, tmp_path):
    src = _copy_plain(store.adapter_path(adapter_ref("critic")), tmp_path / "a")
    store.publish_adapter("critic", "mistral_critic_v1", src, "candidate", promote=False)
    assert store.current_version("critic/mistral_critic_v1") == "seed-1"
    assert "candidate" in store.versions("critic/mistral_critic_v1")


def test_unknown_refs_raise_not_found(store):
    with pytest.raises(NotFoundError, match="no namespace"):
        store.resolve("critic/unknown@v1")
    with pytest.raises(NotFoundError, match="published: seed-1"):
        store.resolve("critic/mistral_critic_v1@v7")


def test_check_reports_dangling_current(store):
    link = store.root / "critic/adapters/mistral_critic_v1/current"
    os.remove(link)
    os.symlink("versions/gone", link)
    problems = store.check(checksums=False)
    assert any("'current' points at 'versions/gone'" in p for p in problems)


def test_healthy_store_checks_clean(store):
    assert store.check() == []
