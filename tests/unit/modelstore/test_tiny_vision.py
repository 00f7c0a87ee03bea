"""The embedded tiny LLaVA base: the real architecture, loaded offline from the store, generating from an image
with as many image tokens as its manifest says; the text base's tokenizer plus '<image>'."""

import pytest

from modelstore import ModelStore
from modelstore.seed import BASE_REF, VISION_BASE_REF
from modelstore.tiny_vision import IMAGE_TOKEN, TOKENS_PER_IMAGE
from modelstore.validate import image_tokens_from_config


@pytest.fixture(scope="module")
def vision_dir(seeded_store_root):
    return ModelStore(seeded_store_root).resolve(VISION_BASE_REF).path


def _image(w=120, h=90):
    from PIL import Image

    return Image.new("RGB", (w, h), (200, 30, 40))


def test_manifest_vision_facts(seeded_store_root):
    m = ModelStore(seeded_store_root).manifest(VISION_BASE_REF)
    assert m.vision.model_dump() == {"vision_tower": "CLIPVisionModel", "image_processor": "CLIPImageProcessor",
                                     "image_size": 64, "patch_size": 8, "tokens_per_image": TOKENS_PER_IMAGE,
                                     "image_token": IMAGE_TOKEN, "max_images_per_request": 1}
    assert TOKENS_PER_IMAGE == 64 and m.license == "Apache-2.0" and m.peft_support
    files = {f.path for f in m.files}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert m.total_bytes < 8 * 1024 * 1024
    # measured: the half-precision loads really are smaller than fp32
    assert max(m.approx_vram_mb[v] for v in ("fp16", "bf16", "bnb-int8")) < m.approx_vram_mb["fp32"]


@pytest.mark.parametrize("size", [(120, 90), (64, 64), (33, 200)])
def test_loads_offline_and_generates_from_one_image(vision_dir, seeded_store_root, size):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(vision_dir)
    model = LlavaForConditionalGeneration.from_pretrained(vision_dir, use_safetensors=True)
    tokens_per_image = ModelStore(seeded_store_root).manifest(VISION_BASE_REF).vision.tokens_per_image
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=_image(*size), text=prompt, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 64, 64)
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == tokens_per_image
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)


def test_the_image_changes_the_answer(vision_dir):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(vision_dir)
    model = LlavaForConditionalGeneration.from_pretrained(vision_dir)
    prompt = f"[INST] {IMAGE_TOKEN}\nWhat is shown? [/INST]"
    logits = []
    for colour in ((255, 0, 0), (0, 0, 255)):
        from PIL import Image

        inputs = processor(images=Image.new("RGB", (64, 64), colour), text=prompt, return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**inputs).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1])  # the vision tower and projector reach the language model


def test_chat_template_puts_the_image_in_the_user_turn_mistral_style(vision_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(vision_dir)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
                {"role": "user", "content": "And now?"}]
    text = processor.apply_chat_template(messages, tokenize=False)
    assert text == ("<s>[INST] <image>\nBe brief.\n\nDescribe it. [/INST]A red square.</s>[INST] And now? [/INST]")


def test_same_tokenizer_as_the_text_base_plus_the_image_token(vision_dir, seeded_store_root):
    from transformers import AutoTokenizer

    text_tok = AutoTokenizer.from_pretrained(ModelStore(seeded_store_root).resolve(BASE_REF).path)
    vision_tok = AutoTokenizer.from_pretrained(vision_dir)
    assert len(vision_tok) == len(text_tok) + 1
    assert vision_tok.convert_tokens_to_ids(IMAGE_TOKEN) == len(text_tok)
    sample = "[INST] The council approved the budget, officials said. [/INST]"
    assert vision_tok(sample)["input_ids"] == text_tok(sample)["input_ids"]
    assert vision_tok(f"a {IMAGE_TOKEN} b")["input_ids"].count(len(text_tok)) == 1  # one token, never split


LLAVA_NEXT = {"model_type": "llava_next", "vision_config": {"image_size": 336, "patch_size": 14},
              "vision_feature_select_strategy": "default",
              "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]}


@pytest.mark.parametrize("config, expected", [
    ({"model_type": "llava", "vision_config": {"image_size": 64, "patch_size": 8},
      "vision_feature_select_strategy": "default"}, 64),
    ({"model_type": "llava", "vision_config": {"image_size": 336, "patch_size": 14},
      "vision_feature_select_strategy": "full"}, 577),
    (LLAVA_NEXT, 2928),  # 576 base + 2x2 tiles of 576 + 48 newlines
    ({**LLAVA_NEXT, "image_grid_pinpoints": [[336, 1008]]}, 576 + 24 * 72 + 24),
    ({**LLAVA_NEXT, "image_grid_pinpoints": None}, None),  # left to the class default: not counted
    ({**LLAVA_NEXT, "vision_feature_select_strategy": "full"}, None),
    ({"model_type": "mistral"}, None),
    ({"model_type": "llava", "vision_config": {}}, None),
])
def test_image_tokens_from_config(config, expected):
    assert image_tokens_from_config(config) == expected


def test_image_tokens_from_config_agrees_with_the_processor(vision_dir):
    import json

    config = json.loads((vision_dir / "config.json").read_text())
    assert image_tokens_from_config(config) == TOKENS_PER_IMAGE == config["image_seq_length"]
