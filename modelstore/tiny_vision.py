"""The embedded offline vision-language default: a tiny model of the real LLaVA architecture.

The newsreader's real base (LLaVA-NeXT on Mistral-7B, 15 GB) cannot be downloaded here, so the default
store also holds a ``LlavaForConditionalGeneration`` built from small configs: a 2-layer CLIP vision
tower, the 2-layer MLP projector, and the tiny Mistral of :mod:`modelstore.tiny` as its language model,
with *the same* tokenizer as the text base plus one ``<image>`` token. It ships a real
``CLIPImageProcessor`` and a ``LlavaProcessor`` whose chat template puts the image in the user turn
Mistral-style (``[INST] <image>\\n text [/INST]``), all saved with ``save_pretrained`` (safetensors), so
``LlavaForConditionalGeneration`` / ``AutoProcessor`` load it offline exactly as they load a LLaVA snapshot,
without ``trust_remote_code``. Seeded: two builds produce identical bytes.

Image tokens: a 64 px image in 8 px patches is 8 x 8 = 64 patches; the ``default`` feature strategy drops
the CLS token, so one image costs 64 language-model tokens (:data:`TOKENS_PER_IMAGE`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .tiny import TINY_CONFIG, build_tokenizer

__all__ = ["IMAGE_TOKEN", "TINY_VISION_CONFIG", "TOKENS_PER_IMAGE", "VISION_CHAT_TEMPLATE", "FEATURE_STRATEGY",
           "build_tiny_vision_base", "vision_facts"]

IMAGE_TOKEN = "<image>"
FEATURE_STRATEGY = "default"  # drop the CLS token, as LLaVA does
# CLIP ViT shape, shrunk: 2 layers so vision_feature_layer -2 reads a real layer's output (as the real
# model reads the 23rd of 24), 4 heads of 16.
TINY_VISION_CONFIG = dict(
    image_size=64,
    patch_size=8,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_channels=3,
)
TOKENS_PER_IMAGE = (TINY_VISION_CONFIG["image_size"] // TINY_VISION_CONFIG["patch_size"]) ** 2

# The text base's template (modelstore.tiny.CHAT_TEMPLATE) with image parts: a message's content is a string
# or a list of {"type": "image"} / {"type": "text", "text": ...} parts; images come first in the turn, each
# as "<image>\n", as llava-v1.6-mistral's prompts do.
VISION_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}{% set images = '' %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('\\n') %}"
    "{% set images = '" + IMAGE_TOKEN + "\\n' * (message['content'] | selectattr('type', 'equalto', 'image')"
    " | list | length) %}{% endif %}"
    "{% if message['role'] == 'system' %}{% set ns.system = text + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + images + ns.system + text + ' [/INST]' }}"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ text + eos_token }}"
    "{% endif %}{% endfor %}"
)


def vision_facts(model_dir: Path) -> dict[str, Any]:
    """The manifest's ``vision`` section, read back from a saved LLaVA directory's config and processor."""
    import json

    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    config = json.loads((Path(model_dir) / "config.json").read_text())
    processor = json.loads((Path(model_dir) / "processor_config.json").read_text())
    vcfg = config["vision_config"]
    side = vcfg["image_size"] // vcfg["patch_size"]
    return dict(
        vision_tower=MODEL_MAPPING_NAMES[vcfg["model_type"]],  # clip_vision_model -> CLIPVisionModel
        image_processor=processor["image_processor"]["image_processor_type"],
        image_size=vcfg["image_size"],
        patch_size=vcfg["patch_size"],
        tokens_per_image=side * side + (config["vision_feature_select_strategy"] == "full"),
        image_token=processor["image_token"],
        max_images_per_request=1,
    )


def build_tiny_vision_base(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny LLaVA base (config, safetensors weights, tokenizer, processor) into ``out_dir``.

    Args:
        out_dir: an empty or missing directory.
        seed: seeds the tokenizer corpus (as the text base's) and the weight initialisation.

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, GenerationConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, MistralConfig)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed=seed)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)  # one id past the text vocabulary
    tokenizer.chat_template = VISION_CHAT_TEMPLATE
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION_CONFIG),
        text_config=MistralConfig(**{**TINY_CONFIG, "vocab_size": len(tokenizer)}, **ids),
        image_token_index=image_token_id,
        image_seq_length=TOKENS_PER_IMAGE,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**ids)
    side = TINY_VISION_CONFIG["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=TINY_VISION_CONFIG["patch_size"],
                               vision_feature_select_strategy=FEATURE_STRATEGY, image_token=IMAGE_TOKEN,
                               num_additional_image_tokens=1,  # the CLS token, which the strategy drops
                               chat_template=VISION_CHAT_TEMPLATE)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)  # processor_config.json, tokenizer files, chat_template.jinja
    return out_dir
