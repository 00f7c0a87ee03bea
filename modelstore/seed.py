"""``modelstore seed``: build the embedded offline default into a store through the normal publish path.

Publishes ``base_models@v1-tiny-mistral`` (see :mod:`modelstore.tiny`) with VRAM figures *measured* by
loading each variant, the tiny vision-language base ``base_models/llava_tiny@v1-tiny-llava`` (see
:mod:`modelstore.tiny_vision`; measured the same way, its ``vision`` facts read from the built config), and,
per text agent, a seeded randomly initialised LoRA adapter
``<agent>/mistral_<agent>_v1@seed-1``. Those adapters are untrained stand-ins that really change the
base's outputs (LoRA B is non-zero), so routing mistakes are visible; trained versions replace them when
the training pipeline publishes. Idempotent: what is already published and verifies is left alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from .errors import NotFoundError
from .manifest import VARIANTS, ModelMetadata, Source, TokenizerInfo, VisionInfo
from .refs import parse_ref
from .store import ModelStore

__all__ = ["BASE_VERSION", "BASE_REF", "VISION_BASE_NAME", "VISION_BASE_VERSION", "VISION_BASE_REF", "ADAPTER_VERSION",
           "TEXT_AGENTS", "VISION_AGENT", "VISION_LORA_TARGETS", "adapter_ref", "measure_variants", "seed_default_store", "write_random_adapter"]

BASE_VERSION = "v1-tiny-mistral"
BASE_REF = f"base_models@{BASE_VERSION}"
VISION_BASE_NAME = "llava_tiny"
VISION_BASE_VERSION = "v1-tiny-llava"
VISION_BASE_REF = f"base_models/{VISION_BASE_NAME}@{VISION_BASE_VERSION}"
ADAPTER_VERSION = "seed-1"
TEXT_AGENTS = ("synthesizer", "journalist", "chief_editor", "reasoning", "critic", "fact_checker", "analyst", "re_ranker")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The language model's linear layers of a LLaVA base (a regex: PEFT matches it against full module names).
VISION_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
VISION_AGENT = "newsreader"
VISION_ADAPTER = "llava_newsreader_v1"


def adapter_ref(agent: str, version: str = ADAPTER_VERSION) -> str:
    if agent == VISION_AGENT:
        return f"{agent}/{VISION_ADAPTER}@{version}"
    return f"{agent}/mistral_{agent}_v1@{version}"


def measure_variants(model_dir: Path, variants=VARIANTS, auto_class: str = "AutoModelForCausalLM") -> dict[str, int]:
    """Load ``model_dir`` once per variant on the CPU and record its memory footprint in MiB (rounded up).

    ``auto_class`` names the transformers auto class that loads it (``AutoModelForImageTextToText`` for LLaVA);
    quantised variants use :func:`modelstore.loading.quantization_config` as a load would.
    """
    import torch
    import transformers

    from .loading import _dtype, quantization_config

    model_class = getattr(transformers, auto_class)

    out = {}
    for variant in variants:
        kwargs = dict(dtype=_dtype(variant, "cpu"), use_safetensors=True)
        q = quantization_config(variant, "cpu", vision=auto_class == "AutoModelForImageTextToText")
        if q is not None:
            kwargs.update(quantization_config=q, device_map={"": "cpu"})
        model = model_class.from_pretrained(model_dir, **kwargs)
        out[variant] = max(1, -(-model.get_memory_footprint() // (1024 * 1024)))
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def _exists(store: ModelStore, ref: str) -> bool:
    try:
        store.resolve(ref)
        return True
    except NotFoundError:
        return False


def write_random_adapter(base_dir: Path, out_dir: Path, seed: int, rank: int = 8, *, vision: bool = False) -> None:
    """Save a seeded, randomly initialised (non-zero B) PEFT LoRA adapter for the base in ``base_dir``; on a
    vision-language base it targets the language model only (CLIP's attention has q/k/v_proj too)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    model = (AutoModelForImageTextToText if vision else AutoModelForCausalLM).from_pretrained(base_dir,
                                                                                           dtype=torch.float32)
    torch.manual_seed(seed)
    targets = VISION_LORA_TARGETS if vision else LORA_TARGETS
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False,
                     lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out_dir, safe_serialization=True)


def _seed_vision_base(store: ModelStore, tmp_path: Path, log: Callable[[str], None]) -> None:
    from .tiny_vision import build_tiny_vision_base, vision_facts

    log(f"building tiny LLaVA vision base -> {VISION_BASE_REF}")
    base_dir = build_tiny_vision_base(tmp_path / "vision-base")
    import json

    vocab = json.loads((base_dir / "config.json").read_text())["text_config"]["vocab_size"]
    meta = ModelMetadata(
        model_id="justnews/tiny-llava-offline", license="Apache-2.0", architecture="LlavaForConditionalGeneration",
        peft_support=True, variant_preference=["fp32", "bf16", "bnb-int8", "bnb-4bit", "fp16"],
        tokenizer=TokenizerInfo(name="tiny-bytelevel-bpe+image", vocab_size=vocab, chat_template=True),
        vision=VisionInfo(**vision_facts(base_dir)),
        vram_notes="Measured at publish: model.get_memory_footprint() of each variant loaded on the CPU "
                   "(bnb variants as modelstore.loading.quantization_config loads them: the language model "
                   "quantised, the vision tower and projector not).",
        notes="Offline stand-in for llava-hf/llava-v1.6-mistral-7b-hf: the LLaVA architecture (CLIP vision tower, "
              "MLP projector, Mistral language model) with tiny configs and random weights; the text base's "
              "tokenizer plus '<image>'.",
    )
    store.publish_base(base_dir, VISION_BASE_VERSION, name=VISION_BASE_NAME, metadata=meta,
                       measure=lambda d: measure_variants(d, auto_class="AutoModelForImageTextToText"),
                       source=Source(type="generated", generator="modelstore seed"))


def seed_default_store(store: ModelStore, *, adapters: bool = True, vision: bool = True, agents=TEXT_AGENTS,
                       log: Callable[[str], None] = lambda _msg: None) -> list[str]:
    """Publish the tiny text base, the tiny vision base and per-agent adapters unless already present.

    Args:
        store: the store to seed.
        adapters: publish the seeded adapter of each agent in ``agents``.
        vision: publish the tiny vision-language base :data:`VISION_BASE_REF`.
        agents: the text agents to publish adapters for.
        log: progress lines.

    Returns:
        The refs published by this call, in order (empty when the store was complete).
    """
    from .tiny import build_tiny_base

    published: list[str] = []
    base_ref = BASE_REF
    with tempfile.TemporaryDirectory(prefix="justnews-seed-") as tmp:
        tmp_path = Path(tmp)
        if not _exists(store, base_ref):
            log(f"building tiny Mistral base -> {base_ref}")
            base_dir = build_tiny_base(tmp_path / "base")
            import json

            vocab = json.loads((base_dir / "config.json").read_text())["vocab_size"]
            meta = ModelMetadata(
                model_id="justnews/tiny-mistral-offline", license="Apache-2.0", architecture="MistralForCausalLM",
                peft_support=True, variant_preference=["fp32", "bf16", "bnb-int8", "bnb-4bit", "fp16"],
                tokenizer=TokenizerInfo(name="tiny-bytelevel-bpe", vocab_size=vocab, chat_template=True),
                vram_notes="Measured at publish: model.get_memory_footprint() of each variant loaded on the CPU.",
                notes="Offline stand-in for Mistral-7B-Instruct-v0.3: same architecture class, tiny config, random weights.",
            )
            store.publish_base(base_dir, BASE_VERSION, metadata=meta, measure=measure_variants,
                               source=Source(type="generated", generator="modelstore seed"))
            published.append(base_ref)
        if vision and not _exists(store, VISION_BASE_REF):
            _seed_vision_base(store, tmp_path, log)
            published.append(VISION_BASE_REF)
        if not adapters:
            return published
        base_path = store.resolve(base_ref).path
        for i, agent in enumerate(agents):
            ref = adapter_ref(agent)
            if _exists(store, ref):
                continue
            log(f"publishing seeded random LoRA adapter {ref}")
            out = tmp_path / f"adapter-{agent}"
            write_random_adapter(base_path, out, seed=1000 + i)
            parsed = parse_ref(ref)
            store.publish_adapter(
                parsed.agent, parsed.name, out, parsed.version, base_ref=base_ref,
                source=Source(type="generated", generator="modelstore seed"),
                notes="Seeded random LoRA (untrained); a trained version supersedes it.",
            )
            published.append(ref)
        ref = adapter_ref(VISION_AGENT)
        if vision and not _exists(store, ref):
            log(f"publishing seeded random LoRA adapter {ref}")
            out = tmp_path / f"adapter-{VISION_AGENT}"
            write_random_adapter(store.resolve(VISION_BASE_REF).path, out, seed=2000, vision=True)
            parsed = parse_ref(ref)
            store.publish_adapter(
                parsed.agent, parsed.name, out, parsed.version, base_ref=VISION_BASE_REF,
                source=Source(type="generated", generator="modelstore seed"),
                notes="Seeded random LoRA on the vision base's language model (untrained); a trained version "
                      "supersedes it.",
            )
            published.append(ref)
    return published
