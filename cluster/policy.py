"""The operator's placement policy: how much memory to keep free and how hard each replica may work.

Defaults follow the seed plan and the Mistral-7B metadata: 5% of every GPU (or node) stays free for
allocator fragmentation and activations, a CUDA context costs ~500 MiB per process, a replica runs
8 sequences at once with up to 2,560 tokens each (the engine's 2,048 prompt + 512 new tokens), and
quantised variants are used only when a policy or a caller allows them.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["PlacementPolicy", "load_policy"]


class PlacementPolicy(BaseModel):
    """Rules the planner applies to every deployment (a demand may override a few of them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    headroom_mb: int = Field(
        default=0, ge=0, description="MiB kept free on every GPU (host memory on CPU nodes); the larger of "
        "this and headroom_fraction applies."
    )
    headroom_fraction: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Fraction of every GPU (node) memory kept free."
    )
    cuda_context_mb: int = Field(
        default=500, ge=0, description="Per-process CUDA context and allocator overhead on a GPU, MiB."
    )
    cpu_process_overhead_mb: int = Field(
        default=1024, ge=0, description="Per-replica Python/torch/Ray worker overhead on a CPU node, MiB."
    )
    max_concurrent_sequences: int = Field(
        default=8, ge=1, description="Sequences a replica decodes at once (the engine's max_batch_size); the "
        "KV cache is reserved for this many."
    )
    max_sequence_tokens: int = Field(
        default=2560, ge=1, description="Prompt + generated tokens one sequence may hold (sizes its KV cache)."
    )
    kv_cache_mb_per_sequence: float | None = Field(
        default=None, gt=0, description="KV cache per concurrent sequence, MiB; None derives it from the base "
        "(kv_values_per_token x dtype bytes x max_sequence_tokens) or uses fallback_kv_cache_mb_per_sequence."
    )
    fallback_kv_cache_mb_per_sequence: float = Field(
        default=320.0, gt=0, description="KV cache per sequence when the base does not say (Mistral-7B fp16 at "
        "2,560 tokens: 128 KiB/token)."
    )
    max_num_models_per_replica: int = Field(
        default=8, ge=1, description="Most adapters one replica keeps resident, whatever memory allows."
    )
    prefix_tokens_per_model: int | None = Field(
        default=None, ge=0, description="Prompt tokens of shared prefix (an agent's system prompt) a replica's "
        "prefix cache keeps per resident adapter and for the bare base: the plan then counts prefix_cache_mb in the "
        "replica's budget (at the KV cache's bytes per token) and sets the engine's prefix_cache_bytes to it; 0 "
        "turns prefix sharing off. None: the engine's own prefix_cache_bytes (32 MiB), outside the plan -- too "
        "small for Mistral-7B's 128 KiB per token (256 tokens), so set this for a real base."
    )
    allow_quantized: bool = Field(
        default=False, description="Whether bnb-int8 / bnb-4bit may be chosen for demands that do not say."
    )
    target_ongoing_requests: float | None = Field(
        default=None, gt=0, description="Autoscaling target per replica; None uses max_concurrent_sequences."
    )
    max_ongoing_requests: int | None = Field(
        default=None, ge=1, description="Requests Serve sends one replica; None uses 2 x max_concurrent_sequences "
        "(one batch decoding, one waiting)."
    )
    max_replicas_per_gpu: int | None = Field(
        default=None, ge=1, description="Most replicas (of any deployment) sharing one GPU or CPU node, to bound "
        "time-slicing of its compute; None lets memory decide."
    )
    num_cpus_per_replica: float = Field(default=1.0, ge=0, description="num_cpus of every replica.")
    preferred_min_replicas: int = Field(
        default=1, ge=1, description="Replicas each deployment keeps running when memory (and CPUs) allow, beyond "
        "its hard min_replicas: with two, a request whose replica dies is retried on the other at once instead "
        "of waiting for a replacement to load. Placed after every hard minimum; what fits becomes the "
        "autoscaling min_replicas."
    )
    upscale_delay_s: float | None = Field(default=None, ge=0, description="autoscaling_config.upscale_delay_s.")
    downscale_delay_s: float | None = Field(default=None, ge=0, description="autoscaling_config.downscale_delay_s.")
    look_back_period_s: float | None = Field(default=None, gt=0, description="autoscaling_config.look_back_period_s.")
    memory_autoscaling: bool = Field(
        default=True, description="Cap autoscaling by memory with cluster.autoscaling.MemoryCappedPolicy (Serve's "
        "custom policy API); False keeps Serve's request-based default, bounded by max_replicas only."
    )

    @model_validator(mode="after")
    def _rules(self) -> "PlacementPolicy":
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < self.max_concurrent_sequences:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_concurrent_sequences "
                f"({self.max_concurrent_sequences}), or batches can never fill"
            )
        if self.target_ongoing_requests is not None and self.target_ongoing_requests > self.effective_max_ongoing:
            raise ValueError(
                f"target_ongoing_requests ({self.target_ongoing_requests}) must be <= max_ongoing_requests "
                f"({self.effective_max_ongoing})"
            )
        return self

    @property
    def effective_max_ongoing(self) -> int:
        """max_ongoing_requests with its default applied."""
        return self.max_ongoing_requests or 2 * self.max_concurrent_sequences

    @property
    def effective_target_ongoing(self) -> float:
        """target_ongoing_requests with its default applied."""
        return self.target_ongoing_requests or float(self.max_concurrent_sequences)

    def headroom_for(self, memory_mb: int) -> int:
        """MiB kept free on a device (or node) of ``memory_mb``."""
        return max(self.headroom_mb, math.ceil(memory_mb * self.headroom_fraction))

    def usable_mb(self, memory_mb: int) -> int:
        """MiB replicas may use on a device (or node) of ``memory_mb``."""
        return max(0, memory_mb - self.headroom_for(memory_mb))


def load_policy(path: str | Path | None) -> PlacementPolicy:
    """Read a policy YAML/JSON file (any subset of the fields); None gives the defaults."""
    if path is None:
        return PlacementPolicy()
    return PlacementPolicy.model_validate(yaml.safe_load(Path(path).read_text()) or {})
