"""The configuration of one adapter training run.

Defaults are the seed plan's for an RTX 3090 (QLoRA nf4 with double quantisation, LoRA r=64, alpha=16);
the CLI and the embedded default override them. Every field round-trips through JSON, and the whole
config is hashed into a checkpoint so a resume with different settings is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["LORA_TARGETS", "TEXT_BASE_REF", "VISION_LORA_TARGETS", "is_vision_agent",
           "default_adapter_name", "default_base_ref", "TrainConfig"]

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT_BASE_REF = "base_models@current"
# The language model's projections only, as a regex PEFT matches against the full module path: the CLIP
# tower has q_proj/k_proj/v_proj too, and the serving engine applies adapters in the language model only.
VISION_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def is_vision_agent(agent: str) -> bool:
    """Whether ``agent`` is multimodal (``agent_graph``): it trains on images (:mod:`training.vision_task` data)
    on a vision-language base. False for an unknown agent (the run refuses it later, naming the known ones)."""
    from agent_graph.contracts import get_spec
    from agent_graph.errors import UnknownAgent

    try:
        return get_spec(agent).kind == "multimodal"
    except UnknownAgent:
        return False


def default_adapter_name(agent: str) -> str:
    """The adapter name an agent's training publishes under: ``llava_<agent>_v1`` or ``mistral_<agent>_v1``."""
    return f"{'llava' if is_vision_agent(agent) else 'mistral'}_{agent}_v1"


def default_base_ref(agent: str) -> str:
    """The base an agent trains on when none is named: the pinned tiny LLaVA for vision agents."""
    if is_vision_agent(agent):
        from modelstore.seed import VISION_BASE_REF

        return VISION_BASE_REF
    return TEXT_BASE_REF


class TrainConfig(BaseModel):
    """One training run: data, base, LoRA shape, optimisation, and what happens to the result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str = Field(description="Agent whose prompt and JSON contract the examples use (agent_graph name).")
    train_files: list[Path] = Field(min_length=1, description="JSONL files of {input, output} records, in order.")
    eval_files: list[Path] = Field(default_factory=list, description="Held-out JSONL files; empty: split off eval_fraction.")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of the training records held out when eval_files is empty.")
    output_dir: Path = Field(description="Where the adapter, training_summary.json and checkpoints are written.")
    adapter_name: str | None = Field(
        None, description="Adapter name in the store; default mistral_<agent>_v1 (llava_<agent>_v1 for vision agents).")
    adapter_version: str | None = Field(None, description="Version tag to publish; default a UTC timestamp.")
    base_ref: str = Field(
        TEXT_BASE_REF,
        description="Base model ref in the ModelStore (pinned at start); when omitted, default_base_ref(agent).")
    store_root: Path | None = Field(None, description="ModelStore root; None uses $MODEL_STORE_ROOT or the default.")

    device: str = Field("auto", description="'auto' (cuda when available, else cpu), 'cpu' or 'cuda[:n]'.")
    quantization: Literal["auto", "none", "nf4"] = Field(
        "auto", description="'nf4' is QLoRA (bitsandbytes 4-bit, double quant); 'auto' picks nf4 on CUDA, none on CPU.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Dtype of the non-quantised base and compute; 'auto' is bf16 on CUDA, fp32 on CPU.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None keeps torch's default.")

    lora_r: int = Field(64, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | str = Field(
        default_factory=lambda: list(LORA_TARGETS),
        description="Linear layers that get LoRA weights: names matched as suffixes, or one regex matched against "
                    "the full module path; when omitted, VISION_LORA_TARGETS for vision agents.")

    epochs: float = Field(3.0, gt=0, description="Passes over the training set (fractions allowed); max_steps wins if set.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run; overrides epochs.")
    batch_size: int = Field(1, ge=1, le=1024, description="Examples per micro-batch.")
    grad_accum: int = Field(8, ge=1, le=1024, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    lora_plus_ratio: float = Field(
        1.0, ge=1.0, le=64.0,
        description="LoRA+: the learning rate of the LoRA B matrices is learning_rate times this (1: plain LoRA).")
    adam_beta2: float = Field(0.999, gt=0.0, lt=1.0, description="AdamW's second-moment decay (lower adapts faster).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps; the rate then decays linearly to 10%.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_seq_len: int = Field(2048, ge=16, description="Longest prompt + answer in tokens; longer records are refused.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (saves VRAM, costs time).")
    share_prefix: bool = Field(
        True, description="Run the prompt prefix every record shares once per batch (exact, several times faster).")
    seed: int = Field(42, description="Seeds LoRA initialisation, data order and dropout: equal seeds, equal runs.")
    max_train_samples: int | None = Field(None, ge=1, description="Use only the first N training records.")
    max_eval_samples: int | None = Field(None, ge=1, description="Use only the first N held-out records.")

    save_every: int = Field(0, ge=0, description="Write a resumable checkpoint every N steps (0: only at the end).")
    resume: bool = Field(False, description="Continue from output_dir/checkpoint when it exists.")
    progress: bool = Field(True, description="Show a progress bar on stderr.")
    dry_run: bool = Field(False, description="Validate data and config, train dry_run_steps steps, publish nothing.")
    dry_run_steps: int = Field(3, ge=1, le=100, description="Steps a dry run trains.")
    publish: bool = Field(False, description="Publish the adapter into the agent's ModelStore namespace when done.")
    promote: bool = Field(True, description="Make the published version current (the agent map serves @current).")
    force: bool = Field(False, description="Replace an already published version of the same tag.")

    @model_validator(mode="before")
    @classmethod
    def _agent_defaults(cls, data: object) -> object:
        # A vision agent's base and LoRA targets differ from a text agent's; omitted fields take the agent's.
        if isinstance(data, dict) and is_vision_agent(str(data.get("agent"))):
            data = dict(data)
            data.setdefault("base_ref", default_base_ref(data["agent"]))
            data.setdefault("target_modules", VISION_LORA_TARGETS)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module (or be one regex)")
        if self.dry_run and self.publish:
            raise ValueError("dry_run and publish are exclusive: a dry run never publishes")
        if self.quantization == "nf4" and self.device == "cpu" and self.gradient_checkpointing:
            raise ValueError("gradient_checkpointing with quantization 'nf4' needs a CUDA device, got device 'cpu'")
        return self

    @property
    def name(self) -> str:
        """The adapter name to publish under."""
        return self.adapter_name or default_adapter_name(self.agent)

    def hyperparameters(self) -> dict:
        """The settings that shape the weights (what a resume must match and the summary records)."""
        keys = ["lora_r", "lora_alpha", "lora_dropout", "target_modules", "epochs", "max_steps", "batch_size",
                "grad_accum", "learning_rate", "lora_plus_ratio", "weight_decay", "adam_beta2", "warmup_steps",
                "max_grad_norm", "max_seq_len",
                "gradient_checkpointing", "share_prefix", "seed", "max_train_samples", "quantization", "precision"]
        return self.model_dump(mode="json", include=set(keys))

    def fingerprint(self) -> str:
        """sha256 of :meth:`hyperparameters`, stored in checkpoints."""
        return hashlib.sha256(json.dumps(self.hyperparameters(), sort_keys=True).encode()).hexdigest()
