"""Structural checks on what is being published: a base has a config and safetensors weights; a PEFT
adapter fits its base (every target module exists and is a linear layer, LoRA shapes match); a
vision-language base's ``vision`` facts agree with its config and it ships its image processor.

The base architecture is instantiated on the ``meta`` device, so validating an adapter for Mistral-7B
reads two JSON files and the adapter's safetensors header -- never the 14 GB of base weights.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import AdapterValidationError, ManifestError
from .integrity import safetensors_problem

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "PROCESSOR_CONFIGS", "check_base_files", "check_adapter_files",
           "image_tokens_from_config", "read_adapter_config", "validate_adapter_against_base", "vision_problems"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# transformers 5 saves a processor as processor_config.json; 4.x (and most hub snapshots) as preprocessor_config.json.
PROCESSOR_CONFIGS = ("processor_config.json", "preprocessor_config.json")
# PEFT tensor names: base_model.model.<module path>.lora_A.weight (adapter name stripped on save).
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


def check_base_files(rel_files: list[str]) -> None:
    """A base needs config.json and at least one .safetensors file."""
    if "config.json" not in rel_files:
        raise ManifestError("a base model needs config.json at the top of its directory")
    if not any(f.endswith(".safetensors") for f in rel_files):
        raise ManifestError("a base model needs .safetensors weights")


def image_tokens_from_config(config: dict[str, Any]) -> int | None:
    """The most language-model tokens one image costs, computed from a LLaVA or LLaVA-NeXT config.

    LLaVA: one token per patch, plus the CLS token when ``vision_feature_select_strategy`` is ``full``.
    LLaVA-NeXT (anyres, ``default`` strategy): the base image's tokens plus, for the largest grid of
    ``image_grid_pinpoints``, one token per patch of every tile and one newline token per row of patches.
    None for other architectures and for configs that leave these figures to the class defaults.
    """
    vision = config.get("vision_config") or {}
    model_type = config.get("model_type")
    if model_type not in ("llava", "llava_next") or not vision.get("image_size") or not vision.get("patch_size"):
        return None
    side = vision["image_size"] // vision["patch_size"]
    full = config.get("vision_feature_select_strategy") == "full"
    if model_type == "llava":
        return side * side + full
    if full or not config.get("image_grid_pinpoints"):
        return None  # anyres with the CLS token kept, or grids left to the class default: not counted here
    base = side * side
    tile = vision["image_size"]
    # An image of exactly a grid's shape needs no unpadding, so the largest grid gives the most tokens.
    grids = [(h // tile * side, w // tile * side) for h, w in config["image_grid_pinpoints"]]
    return base + max(rows * cols + rows for rows, cols in grids)


def vision_problems(rel_files: list[str], config: dict[str, Any], vision: Any) -> list[str]:
    """What is wrong between a base's ``vision`` facts (a :class:`~modelstore.manifest.VisionInfo`), its
    config.json and its files; empty when they agree."""
    problems = []
    if not any(f in rel_files for f in PROCESSOR_CONFIGS):
        problems.append(f"no image processor config is published (one of {', '.join(PROCESSOR_CONFIGS)})")
    vcfg = config.get("vision_config")
    if not isinstance(vcfg, dict):
        return problems + ["config.json has no vision_config"]
    for field in ("image_size", "patch_size"):
        if field in vcfg and vcfg[field] != getattr(vision, field):
            problems.append(f"vision.{field} ({getattr(vision, field)}) != config.json "
                            f"vision_config.{field} ({vcfg[field]})")
    expected = image_tokens_from_config(config)
    if expected is not None and vision.tokens_per_image != expected:
        problems.append(f"vision.tokens_per_image ({vision.tokens_per_image}) != {expected}, the most the "
                        f"{config.get('model_type')} config gives one image")
    return problems


def check_adapter_files(rel_files: list[str]) -> None:
    missing = [f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if f not in rel_files]
    if missing:
        raise AdapterValidationError(f"adapter directory lacks {', '.join(missing)} (PEFT save_pretrained output)")


def read_adapter_config(directory: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((directory / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterValidationError(f"cannot read {ADAPTER_CONFIG}: {exc}") from exc
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterValidationError(f"peft_type {cfg.get('peft_type')!r} is not supported; only LORA adapters")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            raise AdapterValidationError(f"{ADAPTER_CONFIG} lacks {key!r}")
    return cfg


def _linear_modules(base_dir: Path) -> dict[str, tuple[int, int]]:
    """Map every nn.Linear module path of the base architecture to (in_features, out_features)."""
    path = Path(base_dir) / "config.json"
    try:
        return dict(_linear_modules_cached(path.read_text()))
    except (OSError, ValueError, KeyError) as exc:  # unreadable, not JSON, or an unknown model_type
        raise AdapterValidationError(f"cannot build the base architecture from {path}: {exc}") from exc


@lru_cache(maxsize=16)
def _linear_modules_cached(config_text: str) -> tuple[tuple[str, tuple[int, int]], ...]:
    # Keyed by the config's text: versions of one architecture share the (meta-device) walk.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config_dict = json.loads(config_text)
    config_dict.pop("quantization_config", None)  # shapes come from the plain architecture
    config = AutoConfig.for_model(**config_dict)
    # A vision-language base (LLaVA) is no causal LM to the auto classes; its language model's linears are
    # what a LoRA adapter targets, under model.language_model.
    auto = AutoModelForImageTextToText if "vision_config" in config_dict else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=False)
    return tuple(
        (name, (mod.in_features, mod.out_features))
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear)
    )


def _targets_match(target: str, module_name: str) -> bool:
    return module_name == target or module_name.endswith("." + target)


def validate_adapter_against_base(adapter_dir: Path, base_dir: Path) -> dict[str, Any]:
    """Check a PEFT LoRA adapter against a base directory.

    Returns:
        The facts for the manifest: rank, alpha, target_modules.

    Raises:
        AdapterValidationError: naming the unknown module or the mismatched tensor and both shapes.
    """
    from safetensors import SafetensorError

    weights = adapter_dir / ADAPTER_WEIGHTS
    header_problem = safetensors_problem(weights)
    if header_problem:
        raise AdapterValidationError(f"{weights}: {header_problem}")
    cfg = read_adapter_config(adapter_dir)
    linears = _linear_modules(base_dir)
    targets = cfg["target_modules"]
    if isinstance(targets, str):
        pattern = re.compile(targets)
        if not any(pattern.fullmatch(n) for n in linears):
            raise AdapterValidationError(f"target_modules regex {targets!r} matches no linear layer of the base")
        target_list = [targets]
    else:
        target_list = sorted(targets)
        unknown = [t for t in target_list if not any(_targets_match(t, n) for n in linears)]
        if unknown:
            raise AdapterValidationError(
                f"target modules {unknown} do not exist in the base architecture "
                f"(its linear layers end in {sorted({n.rsplit('.', 1)[-1] for n in linears})})"
            )
    rank = int(cfg["r"])
    try:
        n_tensors = _check_lora_tensors(weights, linears, rank)
    except SafetensorError as exc:
        raise AdapterValidationError(f"{weights}: {exc}") from exc
    if n_tensors == 0:
        raise AdapterValidationError(f"{ADAPTER_WEIGHTS} holds no LoRA tensors")
    return {"rank": rank, "alpha": float(cfg["lora_alpha"]), "target_modules": target_list}


def _check_lora_tensors(weights: Path, linears: dict[str, tuple[int, int]], rank: int) -> int:
    """Check every LoRA tensor's base-facing dimension; return how many there are."""
    from safetensors import safe_open

    n_tensors = 0
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            m = _LORA_KEY.match(key)
            if not m:
                continue  # modules_to_save and other extras are checked by PEFT at load time
            module = m["module"]
            if module not in linears:
                raise AdapterValidationError(f"adapter tensor {key!r} targets {module!r}, which is not a linear layer of the base")
            in_f, out_f = linears[module]
            shape = tuple(f.get_slice(key).get_shape())
            expected = (rank, in_f) if m["ab"] == "A" else (out_f, rank)
            # rank_pattern can give a module its own rank: only the base-facing dimension must match.
            base_dim_ok = shape[1] == in_f if m["ab"] == "A" else shape[0] == out_f
            if len(shape) != 2 or not base_dim_ok:
                raise AdapterValidationError(
                    f"adapter tensor {key!r} has shape {list(shape)}, expected {list(expected)} for the base's {module!r}"
                )
            n_tensors += 1
    return n_tensors
