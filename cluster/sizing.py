"""Size one replica: choose the variant, then split its memory into weights, KV cache, adapters, context.

Variant rule (the seed's Phase 3, made explicit): candidates are tried in this order and the first one
whose replica fits the capacity wins --

1. the caller's ``variant_preference`` (the agent map), in order;
2. ``bnb-int8`` when quantised loads are allowed (by the caller, else the policy) and offered;
3. ``fp16``;
4. the manifest's ``variant_preference``;
5. whatever else is offered, largest first (best quality that still fits).

Quantised variants are dropped everywhere when not allowed. When nothing fits, the error lists every
candidate's need against the capacity.

KV cache: ``max_concurrent_sequences`` sequences of ``max_sequence_tokens`` each; on a vision-language base
each sequence also holds its images' tokens (``tokens_per_image x max_images_per_request`` from the
manifest's vision section), so the same formula sizes a vision pool with the image tokens added.

Adapters: ``max_num_models_per_replica`` is the least of the policy's cap, the number of adapters the
deployment serves, and how many adapter slots (the largest adapter's size each) fit in what is left
after weights + KV cache + context. A deployment without adapters gets 1 slot and reserves nothing.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from .demand import MIB, QUANTIZED, DeploymentDemand
from .errors import NoVariantFitsError
from .policy import PlacementPolicy

__all__ = ["ReplicaMemory", "ReplicaSizing", "candidate_variants", "kv_mb_per_sequence", "prefix_cache_mb",
           "size_replica", "variant_shortfall"]

Device = Literal["cuda", "cpu"]


class ReplicaMemory(BaseModel):
    """Where one replica's memory goes, MiB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights_mb: int = Field(ge=0, description="Base weights of the chosen variant (manifest approx_vram_mb).")
    kv_cache_mb: int = Field(ge=0, description="KV cache: kv_mb_per_sequence x max_concurrent_sequences.")
    kv_mb_per_sequence: float = Field(ge=0, description="KV cache of one sequence at max_sequence_tokens (plus "
                                      "image_tokens on a vision base).")
    image_tokens: int = Field(default=0, ge=0, description="Image tokens each sequence's cache holds beyond "
                              "max_sequence_tokens: the vision base's tokens_per_image x max_images_per_request.")
    kv_source: Literal["policy", "base", "fallback"] = Field(description="Where kv_mb_per_sequence came from.")
    max_concurrent_sequences: int = Field(ge=1, description="Sequences decoded at once (engine batch size).")
    adapters_mb: int = Field(ge=0, description="Resident adapters: adapter_slot_mb x max_num_models_per_replica.")
    adapter_slot_mb: int = Field(ge=0, description="Largest adapter of the deployment, MiB.")
    context_mb: int = Field(ge=0, description="CUDA context (GPU) or process overhead (CPU).")
    prefix_cache_mb: int | None = Field(None, ge=0, description="Prefix cache (shared prompt blocks): the KV of "
                                        "the policy's prefix_tokens_per_model tokens for each resident adapter and "
                                        "the bare base; None: not planned (the engine's own default applies).")

    @model_validator(mode="before")
    @classmethod
    def _accept_dumped_total(cls, data: Any) -> Any:
        # total_mb is derived; a dumped plan carries it, so accept it back only if it still adds up.
        if isinstance(data, dict) and "total_mb" in data:
            data = dict(data)
            total = data.pop("total_mb")
            parts = sum(int(data.get(k) or 0) for k in ("weights_mb", "kv_cache_mb", "adapters_mb", "context_mb",
                                                         "prefix_cache_mb"))
            if total != parts:
                prefix = " + prefix cache" if data.get("prefix_cache_mb") is not None else ""
                raise ValueError(f"total_mb ({total}) must equal weights + kv + adapters + context{prefix} ({parts})")
        return data

    @computed_field(description="Everything one replica needs, MiB; its enforced budget.")
    @property
    def total_mb(self) -> int:
        return self.weights_mb + self.kv_cache_mb + self.adapters_mb + self.context_mb + (self.prefix_cache_mb or 0)


class ReplicaSizing(BaseModel):
    """The variant one deployment loads, why, and its replica's memory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str = Field(description="Chosen base variant.")
    variant_reason: str = Field(description="Why this variant (and why earlier candidates were skipped).")
    memory: ReplicaMemory = Field(description="Replica memory breakdown.")
    max_num_models_per_replica: int = Field(ge=1, description="Adapters one replica keeps resident.")
    models_reason: str = Field(description="Which limit set max_num_models_per_replica.")


def _kv_bytes_per_value(variant: str, device: Device) -> int:
    # Mirrors modelstore.loading._dtype: the cache is kept in the compute dtype, which is fp32 only for
    # fp32 weights and for nf4 on the CPU; every other load computes in 16 bits.
    return 4 if variant == "fp32" or (variant == "bnb-4bit" and device == "cpu") else 2


def kv_mb_per_sequence(demand: DeploymentDemand, policy: PlacementPolicy, variant: str,
                       device: Device) -> tuple[float, Literal["policy", "base", "fallback"]]:
    """KV cache of one sequence, MiB, and where the figure came from.

    A sequence holds ``policy.max_sequence_tokens`` (prompt + reply) plus, on a vision base, the tokens its
    images may add (``base.image_tokens``): the prompt budget grows by them. The policy's per-sequence figures
    are for ``max_sequence_tokens``, so they grow in proportion.
    """
    tokens = policy.max_sequence_tokens + demand.base.image_tokens
    if policy.kv_cache_mb_per_sequence is not None:
        return policy.kv_cache_mb_per_sequence * tokens / policy.max_sequence_tokens, "policy"
    if demand.base.kv_values_per_token:
        per_token = demand.base.kv_values_per_token * _kv_bytes_per_value(variant, device)
        return per_token * tokens / MIB, "base"
    return policy.fallback_kv_cache_mb_per_sequence * tokens / policy.max_sequence_tokens, "fallback"


def prefix_cache_mb(demand: DeploymentDemand, policy: PlacementPolicy, variant: str, device: Device,
                    models: int) -> int:
    """The prefix cache of a replica holding ``models`` adapters, MiB: ``prefix_tokens_per_model`` tokens of KV for
    each adapter and the bare base (the cache keys blocks by adapter), at the KV cache's bytes per token."""
    if not policy.prefix_tokens_per_model:  # None (not planned) or 0 (off)
        return 0
    kv_seq, _ = kv_mb_per_sequence(demand, policy, variant, device)
    per_token = kv_seq / (policy.max_sequence_tokens + demand.base.image_tokens)
    return math.ceil(per_token * policy.prefix_tokens_per_model * (models + 1))


def _models_that_fit(demand: DeploymentDemand, policy: PlacementPolicy, variant: str, device: Device, left_mb: int,
                     slot: int) -> int:
    """Adapters whose slots and prefix-cache shares fit in ``left_mb`` (at least one fits: checked before)."""
    per_model = prefix_cache_mb(demand, policy, variant, device, 1) / 2  # one adapter + the bare base
    if slot + per_model <= 0:
        return policy.max_num_models_per_replica
    fits = lambda m: slot * m + prefix_cache_mb(demand, policy, variant, device, m) <= left_mb  # noqa: E731
    models = max(1, int((left_mb - per_model) // (slot + per_model)))
    while fits(models + 1):  # the closed form's rounding, either way
        models += 1
    while models > 1 and not fits(models):
        models -= 1
    return models


def candidate_variants(demand: DeploymentDemand, policy: PlacementPolicy) -> list[tuple[str, str]]:
    """Allowed variants in the order they are tried, each with the rule that put it there."""
    allowed = policy.allow_quantized if demand.allow_quantized is None else demand.allow_quantized
    who = "policy" if demand.allow_quantized is None else "caller"
    offered = demand.base.approx_vram_mb
    int8_note = (f"quantised loads allowed by the {who} and bnb-int8 offered" if allowed
                 else f"quantised loads not allowed by the {who}")
    ordered: list[tuple[str, str]] = [(v, f"caller's variant_preference[{i}]")
                                      for i, v in enumerate(demand.variant_preference)]
    if allowed:
        ordered.append(("bnb-int8", int8_note))
    ordered.append(("fp16", "unquantised default (" + (int8_note if not allowed else "bnb-int8 not used") + ")"))
    ordered += [(v, f"manifest variant_preference[{i}]") for i, v in enumerate(demand.base.variant_preference)]
    ordered += [(v, "largest remaining offered variant") for v in sorted(offered, key=lambda v: -offered[v])]
    seen: set[str] = set()
    out = []
    for variant, why in ordered:
        if variant in seen or variant not in offered or (variant in QUANTIZED and not allowed):
            continue
        seen.add(variant)
        out.append((variant, why))
    return out


def variant_shortfall(demand: DeploymentDemand, policy: PlacementPolicy, variant: str, device: Device,
                      capacity_mb: int) -> str | None:
    """Why one replica of ``variant`` (weights + KV + one adapter slot + context) does not fit ``capacity_mb``;
    None when it fits."""
    context = policy.cuda_context_mb if device == "cuda" else policy.cpu_process_overhead_mb
    slot = max((a.size_mb for a in demand.adapters), default=0)
    weights = demand.base.approx_vram_mb[variant]
    kv = math.ceil(kv_mb_per_sequence(demand, policy, variant, device)[0] * policy.max_concurrent_sequences)
    prefix = prefix_cache_mb(demand, policy, variant, device, 1)
    need = weights + kv + slot + context + prefix
    if need <= capacity_mb:
        return None
    planned = f" + prefix cache {prefix}" if policy.prefix_tokens_per_model is not None else ""
    return (f"{variant} needs {need} MiB (weights {weights} + KV {kv} + adapter {slot} + context {context}{planned}) "
            f"> {capacity_mb} MiB usable")


def size_replica(demand: DeploymentDemand, policy: PlacementPolicy, *, device: Device, capacity_mb: int,
                 capacity_label: str) -> ReplicaSizing:
    """Choose the variant and size one replica of ``demand`` so it fits in ``capacity_mb``.

    Args:
        demand: the deployment.
        policy: the placement policy.
        device: 'cuda' (GPU mode) or 'cpu'.
        capacity_mb: memory one replica may use at most (one GPU, or one node, less headroom).
        capacity_label: how the capacity is named in messages, e.g. 'the smallest GPU (gpu-a:0)'.

    Raises:
        NoVariantFitsError: no allowed variant fits, with every candidate's numbers.
    """
    candidates = candidate_variants(demand, policy)
    allowed = policy.allow_quantized if demand.allow_quantized is None else demand.allow_quantized
    excluded = sorted(v for v in demand.base.approx_vram_mb if v in QUANTIZED and not allowed)
    excluded_note = f"; quantised {excluded} not allowed" if excluded else ""
    if not candidates:
        raise NoVariantFitsError(f"{demand.name}: {demand.base.ref} offers only {sorted(demand.base.approx_vram_mb)}"
                                 f"{excluded_note} (allow_quantized is false)")
    context = policy.cuda_context_mb if device == "cuda" else policy.cpu_process_overhead_mb
    slot = max((a.size_mb for a in demand.adapters), default=0)
    skipped = []
    for variant, why in candidates:
        weights = demand.base.approx_vram_mb[variant]
        kv_seq, kv_source = kv_mb_per_sequence(demand, policy, variant, device)
        kv = math.ceil(kv_seq * policy.max_concurrent_sequences)
        fixed = weights + kv + context
        if variant_shortfall(demand, policy, variant, device, capacity_mb) is not None:
            skipped.append(variant_shortfall(demand, policy, variant, device, capacity_mb))
            continue
        fit = _models_that_fit(demand, policy, variant, device, capacity_mb - fixed, slot)
        limits = {"policy max_num_models_per_replica": policy.max_num_models_per_replica,
                  "adapters served": max(1, len(demand.adapters)),
                  "memory left after weights + KV + context": fit}
        models = min(limits.values())
        binding = next(k for k, v in limits.items() if v == models)
        memory = ReplicaMemory(weights_mb=weights, kv_cache_mb=kv, kv_mb_per_sequence=round(kv_seq, 2),
                               image_tokens=demand.base.image_tokens, kv_source=kv_source,
                               max_concurrent_sequences=policy.max_concurrent_sequences,
                               adapters_mb=slot * models if demand.adapters else 0, adapter_slot_mb=slot,
                               context_mb=context,
                               prefix_cache_mb=None if policy.prefix_tokens_per_model is None
                               else prefix_cache_mb(demand, policy, variant, device, models))
        reason = why + "".join(f"; skipped {s}" for s in skipped)
        return ReplicaSizing(variant=variant, variant_reason=reason, memory=memory, max_num_models_per_replica=models,
                             models_reason=f"{models} = {binding} (limits: "
                                           + ", ".join(f"{k} {v}" for k, v in limits.items()) + ")")
    raise NoVariantFitsError(f"{demand.name}: no allowed variant of {demand.base.ref} fits one replica on "
                             f"{capacity_label} ({capacity_mb} MiB usable): " + "; ".join(skipped) + excluded_note)
