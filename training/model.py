"""Load the base from the ModelStore for training and wrap it with a fresh LoRA adapter.

QLoRA on CUDA: the store's ``bnb-4bit`` variant (nf4, double quantisation, bf16 compute) prepared with
``prepare_model_for_kbit_training``. Plain LoRA elsewhere: the base in fp32 (CPU) or bf16. The base is
loaded through ``modelstore.loading.load_base``, the same code path serving uses; a vision-language base
(LLaVA) comes with its processor, and vision agents must train on one, text agents on a text base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import TrainConfig

__all__ = ["Plan", "TrainModel", "resolve_plan", "load_for_training"]


@dataclass(frozen=True)
class Plan:
    """What a run will load: device, store variant, and whether it is QLoRA."""

    device: str
    variant: str
    qlora: bool


def resolve_plan(cfg: TrainConfig, cuda_available: bool | None = None) -> Plan:
    """Decide device, base variant and QLoRA from the config's 'auto' choices."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    device = ("cuda" if cuda_available else "cpu") if cfg.device == "auto" else cfg.device
    on_cuda = device.startswith("cuda")
    qlora = cfg.quantization == "nf4" or (cfg.quantization == "auto" and on_cuda)
    if qlora:
        return Plan(device, "bnb-4bit", True)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if on_cuda else "fp32")
    return Plan(device, precision, False)


@dataclass
class TrainModel:
    """The base wrapped with a fresh LoRA adapter, its tokenizer, its processor (vision bases) and pinned ref."""

    model: Any
    tokenizer: Any
    processor: Any
    base_ref: Any


def load_for_training(store: Any, cfg: TrainConfig, plan: Plan) -> TrainModel:
    """Load the pinned base and add a freshly initialised LoRA adapter.

    The LoRA initialisation draws from torch's global generator, so the caller seeds it first.

    Raises:
        TrainingError: a vision agent on a text base, or a text agent on a vision-language base.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from modelstore.loading import load_base

    from .config import is_vision_agent
    from .errors import TrainingError

    loaded = load_base(store, cfg.base_ref, plan.variant, device=plan.device, strict=True)
    if loaded.is_vision != is_vision_agent(cfg.agent):
        need = "a vision-language" if is_vision_agent(cfg.agent) else "a text-only"
        raise TrainingError(f"agent {cfg.agent!r} trains on {need} base and {loaded.ref} is not one (name another "
                            "with --base)")
    model = loaded.model
    if plan.qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)  # str: a regex
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    return TrainModel(peft_model, loaded.tokenizer, loaded.processor, loaded.ref)
