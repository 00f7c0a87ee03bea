"""Helpers shared by the engine tests: random LoRA adapters for the tiny base and chat prompts."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["TARGETS", "ADAPTER_NAMES", "make_adapter", "chat"]

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER_NAMES = ["synthesizer/default@1.0", "critic/default@1.0", "analyst/default@1.0"]


def make_adapter(base_dir: Path, out_dir: Path, seed: int, scale: float = 1.0, r: int = 8,
                 targets: list[str] | None = None) -> Path:
    """Write a random (non-zero B) rank-``r`` LoRA adapter for the tiny base, safetensors only."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets or TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(scale)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def chat(tokenizer, text: str) -> str:
    """A prompt as the agents send it: the chat template applied."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
