"""Load a base model from the store with transformers, choosing the variant from its manifest.

Variant rules (the seed's): a requested variant the manifest offers is used as is. A requested variant
it lacks falls back to ``bnb-int8`` when quantised loads are allowed and offered, else ``fp16``, else the
manifest's first preference -- and the fallback is reported on the result and logged, never silent.
``STRICT_MODEL_STORE=1`` (or ``strict=True``) turns any fallback into :class:`VariantUnavailableError`.
``MODEL_STORE_DRY_RUN=1`` (or ``dry_run=True``) resolves the ref, manifest, paths and variant and
returns the plan without opening a weight file.
"""

from __future__ import annotations

import logging

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ChecksumError, VariantUnavailableError
from .manifest import QUANTIZED, Manifest
from .refs import ModelRef
from .store import ModelStore, _env_flag

__all__ = ["LoadPlan", "LoadedBase", "VISION_SKIP_MODULES", "choose_variant", "plan_base", "load_base",
           "quantization_config"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadPlan:
    """What a load will do: the pinned ref, its directory, the variant and why."""

    ref: ModelRef
    path: Path
    manifest: Manifest
    variant: str
    requested_variant: str | None
    fallback_reason: str | None
    device: str


@dataclass
class LoadedBase:
    """A loaded base: transformers model and tokenizer plus the plan that produced them; vision-language
    bases (a ``vision`` section in the manifest) also bring their processor (image processor + tokenizer,
    which expands each ``<image>`` into the image's tokens)."""

    plan: LoadPlan
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    processor: Any = field(default=None, repr=False)

    @property
    def is_vision(self) -> bool:
        return self.plan.manifest.vision is not None

    @property
    def ref(self) -> ModelRef:
        return self.plan.ref

    @property
    def variant(self) -> str:
        return self.plan.variant

    @property
    def manifest(self) -> Manifest:
        return self.plan.manifest

    @property
    def fallback_reason(self) -> str | None:
        return self.plan.fallback_reason


def choose_variant(manifest: Manifest, requested: str | None, *, allow_quantized: bool = True,
                   strict: bool = False) -> tuple[str, str | None]:
    """Return ``(variant, fallback_reason)`` for a manifest and a requested variant."""
    offered = list(manifest.approx_vram_mb)
    usable = [v for v in offered if allow_quantized or v not in QUANTIZED]
    if requested is not None and requested in usable:
        return requested, None
    if requested is None:
        prefs = [v for v in manifest.variant_preference if v in usable] or usable
        if not prefs:
            raise VariantUnavailableError(f"{manifest.namespace}@{manifest.version} offers only quantised variants "
                                          f"{offered} and quantised loads are not allowed")
        return prefs[0], None
    why = (f"variant {requested!r} is not offered by {manifest.namespace}@{manifest.version} (offers {offered})"
           if requested not in offered else f"variant {requested!r} is quantised and allow_quantized is false")
    if strict:
        raise VariantUnavailableError(f"{why}; STRICT_MODEL_STORE forbids a fallback")
    for candidate in (["bnb-int8"] if allow_quantized else []) + ["fp16"] + manifest.variant_preference + usable:
        if candidate in usable:
            reason = f"{why}; fell back to {candidate!r}"
            log.warning(reason)
            return candidate, reason
    raise VariantUnavailableError(f"{why}; no usable fallback")


# A vision-language base quantises its language model only: the vision tower and projector are small and
# sensitive, and naming any skip list replaces transformers' default one, so lm_head is listed again. Plain
# names for transformers versions that match by substring, anchored regexes for those (5.2x) that match
# from the start of the module path ('model.vision_tower...').
VISION_SKIP_MODULES = ["vision_tower", "multi_modal_projector", "lm_head",
                       r".*\.vision_tower", r".*\.multi_modal_projector"]


def quantization_config(variant: str, device: str, *, vision: bool = False):
    """The ``BitsAndBytesConfig`` for a quantised variant, or None (``vision``: keep the tower unquantised)."""
    if variant not in QUANTIZED:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    skip = {"llm_int8_skip_modules": list(VISION_SKIP_MODULES)} if vision else {}
    if variant == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True, **skip)
    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, **skip)


def _dtype(variant: str, device: str):
    import torch

    if variant == "bnb-int8":
        # LLM.int8 computes in fp16; on the CPU bf16 keeps the non-quantised layers fast and stable.
        return torch.float16 if device.startswith("cuda") else torch.bfloat16
    if variant == "bnb-4bit":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[variant]


def plan_base(store: ModelStore, ref: ModelRef | str = "base_models@current", variant: str | None = None, *,
              device: str = "cpu", allow_quantized: bool = True, strict: bool | None = None) -> LoadPlan:
    """Resolve everything a load needs without touching weights."""
    strict = _env_flag("STRICT_MODEL_STORE") if strict is None else strict
    resolved = store.resolve(ref)
    if resolved.manifest.kind != "base":
        raise VariantUnavailableError(f"{resolved.ref} is an adapter, not a base model")
    chosen, reason = choose_variant(resolved.manifest, variant, allow_quantized=allow_quantized, strict=strict)
    return LoadPlan(resolved.ref, resolved.path, resolved.manifest, chosen, variant, reason, device)


def load_base(store: ModelStore, ref: ModelRef | str = "base_models@current", variant: str | None = None, *,
              device: str = "cpu", allow_quantized: bool = True, strict: bool | None = None,
              verify: bool | None = None, dry_run: bool | None = None) -> LoadedBase | LoadPlan:
    """Load a base model and tokenizer from the store.

    Args:
        store: the ModelStore.
        ref: base ref, e.g. ``base_models@current``.
        variant: fp32 | bf16 | fp16 | bnb-int8 | bnb-4bit; None takes the manifest's preference.
        device: ``cpu`` or ``cuda[:n]``.
        allow_quantized: whether bnb variants may be chosen (also as a fallback).
        strict: refuse fallbacks; default from ``STRICT_MODEL_STORE``.
        verify: recompute checksums first (default from ``MODEL_STORE_VERIFY``); sizes are always checked.
        dry_run: return the :class:`LoadPlan` only; default from ``MODEL_STORE_DRY_RUN``.

    Returns:
        A :class:`LoadedBase`, or the :class:`LoadPlan` in dry-run mode.
    """
    plan = plan_base(store, ref, variant, device=device, allow_quantized=allow_quantized, strict=strict)
    if _env_flag("MODEL_STORE_DRY_RUN") if dry_run is None else dry_run:
        return plan
    report = store.verify(plan.ref, dry_run=not (_env_flag("MODEL_STORE_VERIFY") if verify is None else verify))
    if not report.ok:
        raise ChecksumError(f"{plan.ref} failed verification: {report.bad_files}", sorted(report.bad_files))

    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    vision = plan.manifest.vision is not None
    kwargs: dict[str, Any] = dict(dtype=_dtype(plan.variant, device), use_safetensors=True, trust_remote_code=False)
    qconfig = quantization_config(plan.variant, device, vision=vision)
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map={"": device})
    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = auto.from_pretrained(plan.path, **kwargs)
    if qconfig is None:
        model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(plan.path, trust_remote_code=False)
    processor = AutoProcessor.from_pretrained(plan.path, trust_remote_code=False) if vision else None
    log.info("loaded %s as %s on %s%s", plan.ref, plan.variant, device,
             f" ({plan.fallback_reason})" if plan.fallback_reason else "")
    return LoadedBase(plan, model, tokenizer, processor)


