"""load_base: variants (including bitsandbytes int8 / nf4 on the CPU), fallbacks, strict and dry-run modes."""

import sys

import pytest

from modelstore import ChecksumError, ModelMetadata, VariantUnavailableError
from modelstore.loading import LoadedBase, LoadPlan, choose_variant, load_base
from tests.unit.modelstore.test_manifest_models import BASE
from modelstore.manifest import Manifest


def _manifest(vram, prefs=()):
    return Manifest.model_validate({**BASE, "approx_vram_mb": vram, "variant_preference": list(prefs),
                                    "quantized_variants": [v for v in vram if v.startswith("bnb")]})


@pytest.mark.parametrize(
    "vram, requested, allow_q, expected, fell_back",
    [
        ({"fp16": 9, "bnb-int8": 5}, "fp16", True, "fp16", False),
        ({"fp16": 9, "bnb-int8": 5}, "bnb-4bit", True, "bnb-int8", True),   # int8 preferred when allowed
        ({"fp16": 9, "bnb-int8": 5}, "bnb-4bit", False, "fp16", True),      # else fp16
        ({"fp16": 9, "bnb-int8": 5}, "bnb-int8", False, "fp16", True),      # quantised but not allowed
        ({"fp16": 9}, "bnb-int8", True, "fp16", True),
        ({"fp32": 9, "bnb-4bit": 3}, "fp16", True, "fp32", True),           # neither: first usable
        ({"fp16": 9, "bnb-int8": 5}, None, True, "fp16", False),            # no request: first offered
    ],
)
def test_choose_variant_follows_the_seed_rules(vram, requested, allow_q, expected, fell_back):
    variant, reason = choose_variant(_manifest(vram), requested, allow_quantized=allow_q)
    assert variant == expected
    assert (reason is not None) == fell_back
    if fell_back:
        assert repr(requested) in reason and repr(expected) in reason


def test_preference_hint_is_honoured():
    assert choose_variant(_manifest({"fp16": 9, "bnb-int8": 5}, ["bnb-int8", "fp16"]), None)[0] == "bnb-int8"
    assert choose_variant(_manifest({"fp16": 9, "bnb-int8": 5}, ["bnb-int8", "fp16"]), None,
                          allow_quantized=False)[0] == "fp16"


def test_strict_mode_refuses_fallback(store, monkeypatch):
    with pytest.raises(VariantUnavailableError, match="STRICT_MODEL_STORE"):
        choose_variant(_manifest({"fp16": 9}), "bnb-int8", strict=True)
    src = store.resolve("base_models@current").path
    import shutil
    plain = shutil.copytree(src, store.root.parent / "plain", ignore=shutil.ignore_patterns("manifest.json"))
    store.publish_base(plain, "fp-only", metadata=ModelMetadata(approx_vram_mb={"fp32": 6}), promote=False)
    monkeypatch.setenv("STRICT_MODEL_STORE", "1")
    with pytest.raises(VariantUnavailableError, match="bnb-int8"):
        load_base(store, "base_models@fp-only", "bnb-int8")
    monkeypatch.delenv("STRICT_MODEL_STORE")
    loaded = load_base(store, "base_models@fp-only", "bnb-int8", allow_quantized=False)
    assert loaded.variant == "fp32" and "fell back" in loaded.fallback_reason


@pytest.mark.parametrize("variant, layer_type", [("fp32", "Linear"), ("bnb-int8", "Linear8bitLt"),
                                                 ("bnb-4bit", "Linear4bit")])
def test_variants_load_and_generate_on_cpu(seeded_store_root, variant, layer_type):
    from modelstore import ModelStore

    loaded = load_base(ModelStore(seeded_store_root), "base_models@current", variant)
    assert isinstance(loaded, LoadedBase) and loaded.variant == variant and loaded.fallback_reason is None
    assert type(loaded.model.model.layers[0].self_attn.q_proj).__name__ == layer_type
    tok = loaded.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Summarise the market report."}], tokenize=False)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = loaded.model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.input_ids.shape[1] + 5


def test_dry_run_touches_no_weight_file(store, monkeypatch):
    weights = store.resolve("base_models@current").path / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(b"\0" * size)  # garbage of the right size: any real read would fail
    opened = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)) and str(args[0]).endswith(".safetensors"):
            opened.append(args[0])

    sys.addaudithook(hook)
    monkeypatch.setenv("MODEL_STORE_DRY_RUN", "1")
    plan = load_base(store, "base_models@current", "bnb-int8")
    assert isinstance(plan, LoadPlan) and plan.variant == "bnb-int8" and plan.path == weights.parent
    assert store.verify("base_models@current").ok  # dry-run verify: existence and sizes only
    monkeypatch.delenv("MODEL_STORE_DRY_RUN")
    assert opened == []
    with pytest.raises(ChecksumError, match="model.safetensors"):
        load_base(store, "base_models@current", "fp32", verify=True)
