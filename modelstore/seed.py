"""``modelstore seed``: build the embedded offline default into a store through the normal publish path.

Publishes ``base_models@v1-tiny-mistral`` (see :mod:`modelstore.tiny`) with VRAM figures *measured* by
loading each variant, and, per text agent, a seeded randomly initialised LoRA adapter
``<agent>/mistral_<agent>_v1@seed-1``. Those adapters are untrained stand-ins that really change the
base's outputs (LoRA B is non-zero), so routing mistakes are visible; trained versions replace them when
the training pipeline publishes. Idempotent: what is already published and verifies is left alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from .errors import NotFoundError
from .manifest import VARIANTS, ModelMetadata, Source, TokenizerInfo
from .refs import parse_ref
from .store import ModelStore

__all__ = ["BASE_VERSION", "ADAPTER_VERSION", "TEXT_AGENTS", "adapter_ref", "measure_variants", "seed_default_store",
           "write_random_adapter"]

BASE_VERSION = "v1-tiny-mistral"
ADAPTER_VERSION = "seed-1"
TEXT_AGENTS = ("synthesizer", "journalist", "chief_editor", "reasoning", "critic", "fact_checker", "analyst", "re_ranker")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def adapter_ref(agent: str, version: str = ADAPTER_VERSION) -> str:
    return f"{agent}/mistral_{agent}_v1@{version}"


def measure_variants(model_dir: Path, variants=VARIANTS) -> dict[str, int]:
    """Load ``model_dir`` once per variant on the CPU and record its memory footprint in MiB (rounded up)."""
    import torch
    from transformers import AutoModelForCausalLM

    from .loading import _dtype, quantization_config

    out = {}
    for variant in variants:
        kwargs = dict(dtype=_dtype(variant, "cpu"), use_safetensors=True)
        q = quantization_config(variant, "cpu")
        if q is not None:
            kwargs.update(quantization_config=q, device_map={"": "cpu"})
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
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


def write_random_adapter(base_dir: Path, out_dir: Path, seed: int, rank: int = 8) -> None:
    """Save a seeded, randomly initialised (non-zero B) PEFT LoRA adapter for the base in ``base_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, init_lora_weights=False,
                     lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out_dir, safe_serialization=True)


def seed_default_store(store: ModelStore, *, adapters: bool = True, agents=TEXT_AGENTS,
                       log: Callable[[str], None] = lambda _msg: None) -> list[str]:
    """Publish the tiny base (and per-agent adapters) unless already present; return refs published."""
    from .tiny import build_tiny_base

    published: list[str] = []
    base_ref = f"base_models@{BASE_VERSION}"
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
    return published
