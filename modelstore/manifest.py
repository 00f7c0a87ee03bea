"""The manifest written beside every published version (``manifest.json``).

It records where the bytes came from, what they are (every file with size and sha256) and the metadata
placement needs: ``approx_vram_mb`` per variant, ``quantized_variants``, ``peft_support`` and the
``variant_preference`` hint. A vision-language base also records its ``vision`` facts (tower, image
processor, image size, tokens per image). Adapters also record their base ref, rank, alpha, target modules, size on
disk and, when trained here, a ``training_summary``.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .refs import is_base_namespace, validate_version

__all__ = [
    "Variant",
    "VARIANTS",
    "QUANTIZED",
    "VRAM_MB_BOUNDS",
    "FileEntry",
    "Source",
    "TokenizerInfo",
    "VisionInfo",
    "AdapterInfo",
    "Manifest",
    "ModelMetadata",
]

Variant = Literal["fp32", "bf16", "fp16", "bnb-int8", "bnb-4bit"]
VARIANTS: tuple[str, ...] = ("fp32", "bf16", "fp16", "bnb-int8", "bnb-4bit")
QUANTIZED: frozenset[str] = frozenset({"bnb-int8", "bnb-4bit"})
# A single variant needing less than 1 MiB or more than 2 TiB is a typo, not a model.
VRAM_MB_BOUNDS = (1, 2_000_000)

_Strict = ConfigDict(extra="forbid", frozen=True)


class FileEntry(BaseModel):
    """One file of a published version."""

    model_config = _Strict

    path: str = Field(description="POSIX path relative to the version directory.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256 of the content.")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not v or p.is_absolute() or any(part in ("..", ".", "") for part in v.split("/")):
            raise ValueError(f"file path {v!r} must be relative without '.', '..' or empty parts")
        if p.name == "manifest.json" and len(p.parts) == 1:
            raise ValueError("manifest.json does not list itself")
        return v


class Source(BaseModel):
    """Where the published bytes came from."""

    model_config = _Strict

    type: Literal["local", "huggingface", "generated"] = Field(description="Kind of source.")
    repo_id: str | None = Field(default=None, description="Hugging Face repo id, for type=huggingface.")
    revision: str | None = Field(default=None, description="Resolved commit sha of the HF snapshot.")
    path: str | None = Field(default=None, description="Original directory, informational only.")
    generator: str | None = Field(default=None, description="Command that generated the files, for type=generated.")

    @model_validator(mode="after")
    def _consistent(self) -> "Source":
        if self.type == "huggingface" and not (self.repo_id and self.revision):
            raise ValueError("a huggingface source needs repo_id and the resolved revision")
        return self


class TokenizerInfo(BaseModel):
    """The tokenizer shipped with a base."""

    model_config = _Strict

    name: str = Field(description="Tokenizer family, e.g. 'mistral-v3' or 'tiny-bpe'.")
    vocab_size: int = Field(gt=0, description="Number of tokens.")
    chat_template: bool = Field(description="Whether tokenizer_config.json carries a chat template.")


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Bounds that catch typos, not models: a 1 px patch is legal, a 100k px image is not an input we serve.
IMAGE_SIZE_BOUNDS = (8, 8192)
TOKENS_PER_IMAGE_BOUNDS = (1, 65536)
MAX_IMAGES_BOUNDS = (1, 64)


class VisionInfo(BaseModel):
    """What a vision-language base does with images: the facts placement and request admission need."""

    model_config = _Strict

    vision_tower: str = Field(description="Architecture class of the vision encoder, e.g. 'CLIPVisionModel'.")
    image_processor: str = Field(description="Image processor class, e.g. 'LlavaNextImageProcessor'.")
    image_size: int = Field(description="Side of the square input the tower sees, px (a tile, for anyres models).")
    patch_size: int = Field(description="Side of one ViT patch, px; image_size is a multiple of it.")
    tokens_per_image: int = Field(description="Language-model tokens one image costs, at most (anyres: the "
                                  "largest tile grid), so a prompt's length and KV cache can be bounded.")
    image_token: str = Field(description="The placeholder token a prompt marks an image with, e.g. '<image>'.")
    max_images_per_request: int = Field(default=1, description="Image slots the model handles in one prompt.")

    @model_validator(mode="after")
    def _rules(self) -> "VisionInfo":
        for field in ("vision_tower", "image_processor"):
            value = getattr(self, field)
            if not _IDENTIFIER.match(value):
                raise ValueError(f"{field} ({value!r}) must be a class name matching {_IDENTIFIER.pattern}")
        for field, (lo, hi) in (("image_size", IMAGE_SIZE_BOUNDS), ("tokens_per_image", TOKENS_PER_IMAGE_BOUNDS),
                                ("max_images_per_request", MAX_IMAGES_BOUNDS), ("patch_size", (1, self.image_size))):
            value = getattr(self, field)
            if not lo <= value <= hi:
                raise ValueError(f"{field} ({value}) must be within [{lo}, {hi}]")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if not self.image_token or self.image_token != self.image_token.strip() or len(self.image_token) > 64:
            raise ValueError(f"image_token ({self.image_token!r}) must be 1 to 64 characters without surrounding "
                             "whitespace")
        return self


class AdapterInfo(BaseModel):
    """PEFT LoRA facts of an adapter version."""

    model_config = _Strict

    base_ref: str = Field(description="Pinned ref of the base this adapter was validated against.")
    peft_type: Literal["LORA"] = Field(default="LORA", description="PEFT method.")
    rank: int = Field(gt=0, le=4096, description="LoRA rank r.")
    alpha: float = Field(gt=0, description="LoRA alpha.")
    target_modules: list[str] = Field(min_length=1, description="Module names the adapter patches.")
    size_bytes: int = Field(ge=0, description="Size of the adapter weights on disk.")


class ModelMetadata(BaseModel):
    """Operator-supplied metadata merged into a manifest at publish time (the ``--metadata`` JSON)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str | None = Field(default=None, description="Human name, e.g. mistralai/Mistral-7B-Instruct-v0.3.")
    license: str | None = Field(default=None, description="SPDX license id.")
    architecture: str | None = Field(default=None, description="transformers architecture class.")
    approx_vram_mb: dict[Variant, int] = Field(default_factory=dict, description="Approximate VRAM per variant, MiB.")
    quantized_variants: list[Variant] = Field(default_factory=list, description="Variants that are quantized loads.")
    peft_support: bool | None = Field(default=None, description="Whether PEFT adapters may target this base.")
    variant_preference: list[Variant] = Field(default_factory=list, description="Preferred variants, best first.")
    tokenizer: TokenizerInfo | None = Field(default=None, description="Tokenizer facts.")
    vision: VisionInfo | None = Field(default=None, description="Image facts of a vision-language base.")
    vram_notes: str | None = Field(default=None, description="Where the VRAM figures come from.")
    notes: str | None = Field(default=None, description="Free text.")


class Manifest(BaseModel):
    """The ``manifest.json`` of one published version."""

    model_config = _Strict

    schema_version: Literal[1] = Field(default=1, description="Manifest format version.")
    kind: Literal["base", "adapter"] = Field(description="Base model or PEFT adapter.")
    namespace: str = Field(description="'base_models', 'base_models/<name>' or '<agent>/<adapter>'.")
    version: str = Field(description="Version tag.")
    model_id: str = Field(description="Human-readable model name.")
    architecture: str | None = Field(default=None, description="transformers architecture class.")
    source: Source = Field(description="Where the bytes came from.")
    license: str = Field(min_length=1, description="SPDX license id.")
    created_at: datetime = Field(description="UTC publish time.")
    files: list[FileEntry] = Field(min_length=1, description="Every file of the version except manifest.json.")
    approx_vram_mb: dict[Variant, int] = Field(description="Approximate VRAM per loadable variant, MiB.")
    quantized_variants: list[Variant] = Field(default_factory=list, description="Quantized variants offered.")
    peft_support: bool = Field(description="Whether PEFT adapters may target this model.")
    variant_preference: list[Variant] = Field(default_factory=list, description="Preferred variants, best first.")
    tokenizer: TokenizerInfo | None = Field(default=None, description="Tokenizer facts (bases).")
    vision: VisionInfo | None = Field(default=None, description="Image facts (vision-language bases).")
    adapter: AdapterInfo | None = Field(default=None, description="LoRA facts (adapters).")
    training_summary: dict[str, Any] | None = Field(default=None, description="Training run summary, if trained here.")
    vram_notes: str | None = Field(default=None, description="Where the VRAM figures come from.")
    notes: str | None = Field(default=None, description="Free text.")

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return validate_version(v)

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)

    @model_validator(mode="after")
    def _rules(self) -> "Manifest":
        if self.kind == "adapter" and self.adapter is None:
            raise ValueError("an adapter manifest needs the 'adapter' section")
        if self.kind == "base" and self.adapter is not None:
            raise ValueError("a base manifest must not carry an 'adapter' section")
        if self.kind == "adapter" and self.vision is not None:
            raise ValueError("an adapter manifest must not carry a 'vision' section (it belongs to the base)")
        if (self.kind == "base") != is_base_namespace(self.namespace):
            raise ValueError(f"kind {self.kind!r} does not match namespace {self.namespace!r}")
        if not self.approx_vram_mb:
            raise ValueError("approx_vram_mb must name at least one variant")
        lo, hi = VRAM_MB_BOUNDS
        for variant, mb in self.approx_vram_mb.items():
            if not lo <= mb <= hi:
                raise ValueError(f"approx_vram_mb[{variant!r}] ({mb}) must be within [{lo}, {hi}] MiB")
        for field in ("quantized_variants", "variant_preference"):
            for variant in getattr(self, field):
                if variant not in self.approx_vram_mb:
                    raise ValueError(f"{field} names {variant!r} but approx_vram_mb has no figure for it")
        for variant in self.quantized_variants:
            if variant not in QUANTIZED:
                raise ValueError(f"quantized_variants names {variant!r}, which is not a quantized variant")
        paths = [f.path for f in self.files]
        if len(paths) != len(set(paths)):
            raise ValueError("files lists a path twice")
        return self

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)
