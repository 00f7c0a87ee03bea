"""What each deployment needs, as plain facts the planner can size without touching a store.

A :class:`DeploymentDemand` is the planner's input per Serve deployment: the base (VRAM per variant,
quantised variants, KV cache shape), its adapters (sizes), the caller's variant preference and
``allow_quantized``, and the replica counts the operator asks for. The application builder maps
``AGENT_MODEL_MAP.json`` into demands; until then :func:`load_demands` reads a small YAML/JSON file::

    deployments:
      - name: BaseLLM
        base_ref: base_models@current          # resolved in the store ...
        adapters: [synthesizer/mistral_synthesizer_v1@seed-1, critic/mistral_critic_v1]
        variant_preference: [bnb-int8, fp16]
        allow_quantized: true
        min_replicas: 1
      - name: WhatIf7B
        base_metadata: ../../modelstore/metadata/mistral-7b-instruct-v0.3.json   # ... or a what-if
        kv_values_per_token: 65536             # 2 x 32 layers x 8 KV heads x 128 dims
        adapters: [{ref: synthesizer/mistral_synth_v1@v1, size_mb: 160}]

Relative paths are relative to the demands file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import DemandError

__all__ = ["Variant", "QUANTIZED", "BaseFacts", "AdapterFacts", "DeploymentDemand", "kv_values_per_token",
           "base_facts_from_store", "adapter_facts_from_store", "default_demand", "load_demands"]

Variant = Literal["fp32", "bf16", "fp16", "bnb-int8", "bnb-4bit"]
QUANTIZED: frozenset[str] = frozenset({"bnb-int8", "bnb-4bit"})
MIB = 1024 * 1024

_Strict = ConfigDict(extra="forbid", frozen=True)


class BaseFacts(BaseModel):
    """The base model facts placement needs (from its manifest and config.json)."""

    model_config = _Strict

    ref: str = Field(description="Base ref the replicas load, e.g. 'base_models@v20251123-mistral-v0.3'.")
    approx_vram_mb: dict[Variant, int] = Field(min_length=1, description="Weights in memory per variant, MiB.")
    quantized_variants: tuple[Variant, ...] = Field(default=(), description="Quantised variants offered.")
    variant_preference: tuple[Variant, ...] = Field(default=(), description="The manifest's preference hint.")
    kv_values_per_token: int | None = Field(
        default=None, gt=0, description="K and V values cached per token (2 x layers x KV heads x head dim); "
        "None when unknown (the policy's fallback figure applies)."
    )
    tokens_per_image: int = Field(default=0, ge=0, description="Prompt tokens one image costs at most (the "
                                  "manifest's vision section); 0 for a text-only base.")
    max_images_per_request: int = Field(default=0, ge=0, description="Images one prompt may carry (the manifest's "
                                        "vision section); 0 for a text-only base.")

    @property
    def image_tokens(self) -> int:
        """Prompt tokens the images of one request may add to a sequence (its KV cache grows by as many)."""
        return self.tokens_per_image * self.max_images_per_request

    @model_validator(mode="after")
    def _rules(self) -> "BaseFacts":
        for field in ("quantized_variants", "variant_preference"):
            for v in getattr(self, field):
                if v not in self.approx_vram_mb:
                    raise ValueError(f"{field} names {v!r} but approx_vram_mb has no figure for it "
                                     f"(has {sorted(self.approx_vram_mb)})")
        return self

    @classmethod
    def from_manifest(cls, manifest: Any, ref: str | None = None, *,
                      kv_values_per_token: int | None = None) -> "BaseFacts":
        """Facts of a ``modelstore.Manifest`` (or ``ModelMetadata``) of a base, its vision section included."""
        version = getattr(manifest, "version", None)
        namespace = getattr(manifest, "namespace", None) or "base_models"
        vision = getattr(manifest, "vision", None)
        return cls(ref=ref or f"{namespace}@{version or 'current'}",
                   approx_vram_mb=dict(manifest.approx_vram_mb),
                   quantized_variants=tuple(manifest.quantized_variants),
                   variant_preference=tuple(manifest.variant_preference),
                   kv_values_per_token=kv_values_per_token,
                   tokens_per_image=vision.tokens_per_image if vision else 0,
                   max_images_per_request=vision.max_images_per_request if vision else 0)


class AdapterFacts(BaseModel):
    """One LoRA adapter a deployment may serve."""

    model_config = _Strict

    ref: str = Field(min_length=1, description="Adapter ref, e.g. 'synthesizer/mistral_synthesizer_v1@seed-1'.")
    size_bytes: int = Field(ge=0, description="Adapter weights on disk; its resident cost is at most this.")

    @property
    def size_mb(self) -> int:
        """Size in MiB, rounded up (a resident adapter never costs less than a whole MiB here)."""
        return max(1, -(-self.size_bytes // MIB))


class DeploymentDemand(BaseModel):
    """One Serve deployment to place: a base, its adapters, and what the operator asks for."""

    model_config = _Strict

    name: str = Field(min_length=1, description="Serve deployment name.")
    base: BaseFacts = Field(description="The base every replica loads.")
    adapters: tuple[AdapterFacts, ...] = Field(default=(), description="Adapters multiplexed onto the base.")
    variant_preference: tuple[Variant, ...] = Field(
        default=(), description="The caller's preference (agent map), best first; empty uses the planner's rule."
    )
    allow_quantized: bool | None = Field(
        default=None, description="Whether bnb variants may load; None defers to the policy. An explicit false "
        "wins over the policy (the caller needs full precision)."
    )
    min_replicas: int = Field(default=1, ge=0, description="Replicas that must always fit (autoscaling minimum).")
    max_replicas: int | None = Field(
        default=None, ge=1, description="Upper bound the operator allows; None lets the inventory decide."
    )
    target_ongoing_requests: float | None = Field(
        default=None, gt=0, description="Autoscaling target per replica; None uses the policy's."
    )

    @model_validator(mode="after")
    def _rules(self) -> "DeploymentDemand":
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"{self.name}: max_replicas ({self.max_replicas}) must be >= min_replicas "
                             f"({self.min_replicas})")
        refs = [a.ref for a in self.adapters]
        if len(refs) != len(set(refs)):
            raise ValueError(f"{self.name}: an adapter is listed twice in {refs}")
        return self


def kv_shape(config: Any) -> tuple[int, int, int] | None:
    """``(layers, kv_heads, head_dim)`` of the KV cache of a transformers decoder config -- a ``config.json`` dict
    or a loaded config object; a vision-language model's ``text_config``, the language model that holds the
    cache -- or None if it lacks the shape. The one reading of the shape: the planner counts KV memory with it
    and the engine allocates its cache with it."""
    if not isinstance(config, dict):
        config = config.to_dict() if hasattr(config, "to_dict") else vars(config)
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return layers, kv_heads, head_dim


def kv_values_per_token(config: Any) -> int | None:
    """K and V values cached per token (:func:`kv_shape`: 2 x layers x KV heads x head dim); None without a shape."""
    shape = kv_shape(config)
    return None if shape is None else 2 * shape[0] * shape[1] * shape[2]


def base_facts_from_store(store: Any, ref: str) -> BaseFacts:
    """Resolve a base ref in a ``modelstore.ModelStore`` and read its manifest and config.json."""
    resolved = store.resolve(ref)
    if resolved.manifest.kind != "base":
        raise DemandError(f"{ref} is a {resolved.manifest.kind}, not a base model")
    config_path = Path(resolved.path) / "config.json"
    kv = kv_values_per_token(json.loads(config_path.read_text())) if config_path.is_file() else None
    return BaseFacts.from_manifest(resolved.manifest, str(resolved.ref), kv_values_per_token=kv)


def adapter_facts_from_store(store: Any, ref: str) -> AdapterFacts:
    """Resolve an adapter ref and return its pinned ref and size."""
    resolved = store.resolve(ref)
    if resolved.manifest.adapter is None:
        raise DemandError(f"{ref} is not an adapter")
    return AdapterFacts(ref=str(resolved.ref), size_bytes=resolved.manifest.adapter.size_bytes)


def default_demand(store: Any, name: str = "BaseLLM", base_ref: str = "base_models@current") -> DeploymentDemand:
    """One deployment serving the store's base ``base_ref`` with the current version of every adapter on that
    base (an adapter on another base, e.g. the newsreader's on the vision base, cannot load on this one)."""
    from modelstore.refs import parse_ref

    base = base_facts_from_store(store, base_ref)
    namespace = parse_ref(base.ref).namespace
    adapters = []
    for r in store.namespaces():
        if r.kind != "adapter" or not store.current_version(r):
            continue
        resolved = store.resolve(f"{r.namespace}@current")
        info = resolved.manifest.adapter
        if info is not None and parse_ref(info.base_ref).namespace == namespace:
            adapters.append(AdapterFacts(ref=str(resolved.ref), size_bytes=info.size_bytes))
    return DeploymentDemand(name=name, base=base, adapters=tuple(adapters))


def _entry_to_demand(entry: dict[str, Any], store: Any, here: Path) -> DeploymentDemand:
    entry = dict(entry)
    name = entry.get("name", "?")
    if ("base_ref" in entry) == ("base_metadata" in entry):
        raise DemandError(f"deployment {name!r}: give exactly one of base_ref or base_metadata")
    kv = entry.pop("kv_values_per_token", None)
    if "base_metadata" in entry:
        meta = json.loads((here / entry.pop("base_metadata")).read_text())
        vision = meta.get("vision") or {}
        base = BaseFacts(ref=entry.pop("base_ref_name", "base_models@current"), approx_vram_mb=meta["approx_vram_mb"],
                         quantized_variants=meta.get("quantized_variants", ()),
                         variant_preference=meta.get("variant_preference", ()), kv_values_per_token=kv,
                         tokens_per_image=vision.get("tokens_per_image", 0),
                         max_images_per_request=vision.get("max_images_per_request", 1) if vision else 0)
    else:
        if store is None:
            raise DemandError(f"deployment {name!r} names base_ref {entry['base_ref']!r}: --store-root is needed")
        base = base_facts_from_store(store, entry.pop("base_ref"))
        base = base.model_copy(update={"kv_values_per_token": kv}) if kv else base
    adapters = []
    for item in entry.pop("adapters", []) or []:
        if isinstance(item, dict) and "size_mb" in item:
            adapters.append(AdapterFacts(ref=item["ref"], size_bytes=int(float(item["size_mb"]) * MIB)))
        elif store is None:
            raise DemandError(f"deployment {name!r}: adapter {item!r} needs --store-root (or a size_mb)")
        else:
            adapters.append(adapter_facts_from_store(store, item["ref"] if isinstance(item, dict) else item))
    return DeploymentDemand(base=base, adapters=tuple(adapters), **entry)


def load_demands(path: str | Path, store: Any = None) -> list[DeploymentDemand]:
    """Read a demands YAML/JSON file (see the module docstring) into :class:`DeploymentDemand` objects.

    Raises:
        DemandError: the file is malformed, or a ref is unknown to the store.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
        entries = data.get("deployments") if isinstance(data, dict) else None
        if not entries:
            raise DemandError(f"demands file {str(path)!r} has no 'deployments' list")
        return [_entry_to_demand(e, store, path.parent) for e in entries]
    except DemandError:
        raise
    except (OSError, yaml.YAMLError, ValidationError, KeyError, TypeError) as exc:
        raise DemandError(f"demands file {str(path)!r} is invalid: {exc}") from exc
    except (LookupError, ValueError) as exc:  # modelstore's NotFoundError / RefError
        raise DemandError(f"demands file {str(path)!r}: {exc}") from exc
