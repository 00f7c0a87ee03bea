"""Every pydantic model of the store round-trips through JSON and rejects bad values."""

import json
from datetime import datetime, timezone

import pytest
from pydantic import BaseModel, ValidationError

from modelstore.manifest import AdapterInfo, FileEntry, Manifest, ModelMetadata, Source, TokenizerInfo, VisionInfo

SHA = "a" * 64
FILE = {"path": "model.safetensors", "size": 10, "sha256": SHA}
BASE = {
    "kind": "base", "namespace": "base_models", "version": "v1", "model_id": "m", "source": {"type": "local"},
    "license": "Apache-2.0", "created_at": datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat(), "files": [FILE],
    "approx_vram_mb": {"fp16": 100, "bnb-int8": 60}, "quantized_variants": ["bnb-int8"], "peft_support": True,
}
ADAPTER_INFO = {"base_ref": "base_models@v1", "rank": 8, "alpha": 16, "target_modules": ["q_proj"], "size_bytes": 10}
VISION = {"vision_tower": "CLIPVisionModel", "image_processor": "CLIPImageProcessor", "image_size": 336,
          "patch_size": 14, "tokens_per_image": 2928, "image_token": "<image>"}
VISION_BASE = {**BASE, "namespace": "base_models/llava_tiny", "vision": VISION}
ADAPTER = {**BASE, "kind": "adapter", "namespace": "critic/mistral_critic_v1", "quantized_variants": [],
           "approx_vram_mb": {"fp16": 1}, "peft_support": False, "adapter": ADAPTER_INFO}

VALID = [
    (FileEntry, FILE),
    (Source, {"type": "huggingface", "repo_id": "org/m", "revision": "abc"}),
    (TokenizerInfo, {"name": "t", "vocab_size": 10, "chat_template": True}),
    (AdapterInfo, ADAPTER_INFO),
    (ModelMetadata, {"license": "MIT", "approx_vram_mb": {"fp16": 5}}),
    (Manifest, BASE),
    (Manifest, ADAPTER),
    (VisionInfo, VISION),
    (VisionInfo, {**VISION, "max_images_per_request": 4}),
    (ModelMetadata, {"license": "MIT", "approx_vram_mb": {"fp16": 5}, "vision": VISION}),
    (Manifest, VISION_BASE),
    (Manifest, {**BASE, "namespace": "base_models/llava_tiny"}),
]

INVALID = [
    (FileEntry, {**FILE, "path": "../x"}),
    (FileEntry, {**FILE, "path": "/abs"}),
    (FileEntry, {**FILE, "path": "manifest.json"}),
    (FileEntry, {**FILE, "size": -1}),
    (FileEntry, {**FILE, "sha256": "xyz"}),
    (Source, {"type": "huggingface", "repo_id": "org/m"}),
    (Source, {"type": "ftp"}),
    (TokenizerInfo, {"name": "t", "vocab_size": 0, "chat_template": True}),
    (AdapterInfo, {**ADAPTER_INFO, "rank": 0}),
    (AdapterInfo, {**ADAPTER_INFO, "target_modules": []}),
    (ModelMetadata, {"approx_vram_mb": {"fp8": 5}}),
    (ModelMetadata, {"unknown_field": 1}),
    (Manifest, {**BASE, "approx_vram_mb": {"fp16": 0}}),
    (Manifest, {**BASE, "approx_vram_mb": {"fp16": 10_000_000}}),
    (Manifest, {**BASE, "approx_vram_mb": {}}),
    (Manifest, {**BASE, "quantized_variants": ["bnb-4bit"]}),
    (Manifest, {**BASE, "variant_preference": ["fp32"]}),
    (Manifest, {**BASE, "approx_vram_mb": {"fp16": 1}, "quantized_variants": ["fp16"]}),
    (Manifest, {**BASE, "adapter": ADAPTER_INFO}),
    (Manifest, {**ADAPTER, "adapter": None}),
    (Manifest, {**BASE, "namespace": "critic/x"}),
    (Manifest, {**BASE, "files": []}),
    (Manifest, {**BASE, "files": [FILE, FILE]}),
    (Manifest, {**BASE, "version": "../v1"}),
    (Manifest, {**BASE, "schema_version": 2}),
    (Manifest, {**BASE, "namespace": "base_models/versions"}),
    (Manifest, {**BASE, "namespace": "base_models@v1"}),
    (Manifest, {**ADAPTER, "namespace": "base_models/llava_tiny"}),
    (Manifest, {**ADAPTER, "vision": VISION}),
    (Manifest, {**VISION_BASE, "vision": {**VISION, "extra": 1}}),
    (VisionInfo, {**VISION, "unknown_field": 1}),
    (VisionInfo, {k: v for k, v in VISION.items() if k != "tokens_per_image"}),
]

# Each bad value of the vision section, and what the message must say: the value and the limit.
VISION_BAD = [
    ({"image_size": 4}, "image_size (4) must be within [8, 8192]"),
    ({"image_size": 100_000}, "image_size (100000) must be within [8, 8192]"),
    ({"patch_size": 0}, "patch_size (0) must be within [1, 336]"),
    ({"patch_size": 400}, "patch_size (400) must be within [1, 336]"),
    ({"patch_size": 15}, "image_size (336) must be a multiple of patch_size (15)"),
    ({"tokens_per_image": 0}, "tokens_per_image (0) must be within [1, 65536]"),
    ({"max_images_per_request": 0}, "max_images_per_request (0) must be within [1, 64]"),
    ({"max_images_per_request": 65}, "max_images_per_request (65) must be within [1, 64]"),
    ({"image_token": ""}, "image_token ('')"),
    ({"image_token": " <image>"}, "image_token (' <image>') must be 1 to 64 characters"),
    ({"vision_tower": "CLIP Vision"}, "vision_tower ('CLIP Vision') must be a class name"),
    ({"image_processor": "../x"}, "image_processor ('../x') must be a class name"),
    ({"image_size": "big"}, "image_size"),
]


@pytest.mark.parametrize("cls, data", VALID, ids=lambda v: getattr(v, "__name__", None))
def test_round_trip(cls: type[BaseModel], data):
    obj = cls.model_validate(data)
    again = cls.model_validate_json(obj.model_dump_json())
    assert again == obj
    assert cls.model_validate(json.loads(json.dumps(obj.model_dump(mode="json")))) == obj


@pytest.mark.parametrize("cls, data", INVALID, ids=lambda v: getattr(v, "__name__", None))
def test_rejects_bad_values(cls, data):
    with pytest.raises(ValidationError):
        cls.model_validate(data)


def test_error_message_names_value_and_limit():
    with pytest.raises(ValidationError) as exc:
        Manifest.model_validate({**BASE, "approx_vram_mb": {"fp16": 0}})
    assert "approx_vram_mb['fp16'] (0)" in str(exc.value) and "[1, 2000000]" in str(exc.value)


def test_shipped_mistral_metadata_validates():
    from importlib.resources import files

    text = files("modelstore").joinpath("metadata/mistral-7b-instruct-v0.3.json").read_text()
    meta = ModelMetadata.model_validate_json(text)
    assert meta.license == "Apache-2.0"
    assert meta.approx_vram_mb["bnb-4bit"] < meta.approx_vram_mb["bnb-int8"] < meta.approx_vram_mb["fp16"]


@pytest.mark.parametrize("bad, message", VISION_BAD, ids=[m.split(" (")[0] for _, m in VISION_BAD])
def test_vision_section_names_the_value_and_the_limit(bad, message):
    with pytest.raises(ValidationError) as exc:
        VisionInfo.model_validate({**VISION, **bad})
    assert message in str(exc.value)
    with pytest.raises(ValidationError):  # the same checks hold inside a manifest
        Manifest.model_validate({**VISION_BASE, "vision": {**VISION, **bad}})


def test_vision_defaults_to_one_image_per_request():
    assert VisionInfo.model_validate(VISION).max_images_per_request == 1


def test_shipped_llava_next_metadata_validates():
    from importlib.resources import files

    text = files("modelstore").joinpath("metadata/llava-v1.6-mistral-7b-hf.json").read_text()
    meta = ModelMetadata.model_validate_json(text)
    assert meta.license == "Apache-2.0" and meta.architecture == "LlavaNextForConditionalGeneration"
    assert meta.approx_vram_mb["bnb-4bit"] < meta.approx_vram_mb["bnb-int8"] < meta.approx_vram_mb["fp16"]
    assert meta.vision.tokens_per_image == 2928 and meta.vision.image_size == 336 and meta.vision.patch_size == 14
    assert "computed, not measured" in meta.vram_notes
