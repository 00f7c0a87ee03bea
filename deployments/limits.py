"""Admission limits: every bound on what a caller controls, in one place, checked before any compute.

A request that breaks a limit is refused at the edge it arrives at (the ingress for ``/v1/chat/completions``,
the BaseLLM replica for handle and agent calls) before it is tokenized, compiled or queued, with a 400 (or a
413 for sizes) whose message names the field, the value and the limit. The protocol models
(``deployments/base_llm/protocol.py``, ``deployments/ingress/openai_protocol.py``, ``engine/params.py``) take their
bounds from :data:`LIMITS`; JSON schemas are checked by :func:`check_json_schema`, images by
``deployments.vision.images.admit_image`` (size, pixels from the header, format). An operator changes a
limit with ``JUSTNEWS_ADMISSION_LIMITS='{"max_schema_depth": 16}'`` in every process's environment.

Why a JSON schema needs limits of its own: xgrammar's compile time grows steeply with nesting (a 10 KB schema
200 objects deep compiles in 0.7 s on the tiny tokenizer, one nested ~700 JSON levels took 32 s on the
cluster), so size, depth, property and enum counts are bounded here. They cannot bound everything: a
22-character ``pattern`` with nested bounded repetition, ``^([a-z]{1,90}){1,101}$``, compiles for 15 s;
``EngineConfig.grammar_compile_timeout_s`` and the compile pool (``engine/constraints.py``) bound
what is left.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from deployments.errors import LimitExceededError, RequestTooLargeError, SchemaTooLargeError

__all__ = ["AdmissionLimits", "LIMITS", "LIMITS_ENV", "SEED_MIN", "SEED_MAX", "load_limits", "bounded_int", "Seed",
           "MaxNewTokens", "ChoiceCount", "TopK", "check_json_schema", "schema_stats", "check_stops", "check_prompt",
           "check_image_count", "PIL_BOMB_PIXELS"]

# JSON object of AdmissionLimits fields overriding the defaults, read once per process at import (set it for
# every process of the cluster alike, e.g. in the runtime_env of serve_config.yaml).
LIMITS_ENV = "JUSTNEWS_ADMISSION_LIMITS"

# What torch.Generator.manual_seed accepts: int64's minimum (negatives are remapped) up to uint64's maximum.
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1

# Pillow's default Image.MAX_IMAGE_PIXELS: above it Image.open warns of a decompression bomb (above twice it,
# raises). max_image_pixels stays at or below it, so an image the header check admits never trips Pillow's.
PIL_BOMB_PIXELS = 89_478_485


class AdmissionLimits(BaseModel):
    """Bounds on every caller-controlled value. Agents' own schemas use a fraction of them (depth <= 6,
    <= 5 properties, enums <= 6 values, <= 1.1 KB)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_schema_bytes: int = Field(32_768, ge=1, description="Largest JSON schema, as compact JSON UTF-8 bytes (413).")
    max_schema_depth: int = Field(
        32, ge=1, description="Deepest nesting of a JSON schema document, counting every object and array (400).")
    max_schema_properties: int = Field(
        256, ge=1, description="Most property names across all 'properties' maps of a JSON schema (400).")
    max_schema_enum_values: int = Field(256, ge=1, description="Most values of any one 'enum' of a JSON schema (400).")
    seed_min: int = Field(SEED_MIN, description="Smallest seed (int64 minimum; negatives are remapped by torch).")
    seed_max: int = Field(SEED_MAX, description="Largest seed (uint64 maximum: what the per-row sampler accepts).")
    max_new_tokens: int = Field(
        32_768, ge=1, description="Largest max_new_tokens / max_tokens accepted at all (400); the replica's "
        "EngineConfig.max_new_tokens_limit refuses smaller excesses with 413.")
    max_top_k: int = Field(1024, ge=1, description="Largest top_k (0 turns top-k filtering off).")
    max_n: int = Field(1, ge=1, description="Choices per chat completion (n).")
    max_stop_strings: int = Field(8, ge=0, description="Most stop strings per request.")
    max_stop_chars: int = Field(256, ge=1, description="Longest stop string, in characters.")
    max_messages: int = Field(256, ge=1, description="Most chat messages per request.")
    max_prompt_chars: int = Field(
        200_000, ge=1, description="Longest prompt text or message content, in characters (413); token limits "
        "(EngineConfig.max_prompt_tokens) apply after this.")
    max_image_bytes: int = Field(
        8 * 1024 * 1024, ge=1, description="Largest encoded image, in bytes (413); a base64 string is measured "
        "before it is decoded.")
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, le=PIL_BOMB_PIXELS, description="Most pixels (width x height) of an image, read from "
        "its header before any pixel is decoded (413).")
    max_image_side: int = Field(8192, ge=1, description="Largest width or height of an image, in pixels (413).")
    min_image_side: int = Field(8, ge=1, description="Smallest width or height of an image, in pixels (400).")
    max_images_per_request: int = Field(4, ge=0, description="Most images in one request (413).")

    @model_validator(mode="after")
    def _ranges(self) -> "AdmissionLimits":
        if not SEED_MIN <= self.seed_min <= self.seed_max <= SEED_MAX:
            raise ValueError(f"seed_min ({self.seed_min}) .. seed_max ({self.seed_max}) must lie within what the "
                             f"sampler accepts, {SEED_MIN} .. {SEED_MAX}")
        if self.min_image_side > self.max_image_side:
            raise ValueError(f"min_image_side ({self.min_image_side}) must be <= max_image_side "
                             f"({self.max_image_side})")
        return self


def load_limits(environ: Mapping[str, str] = os.environ) -> AdmissionLimits:
    """The defaults, overridden by the JSON object in ``$JUSTNEWS_ADMISSION_LIMITS`` when set.

    Raises:
        pydantic.ValidationError: the override names an unknown field or a bad value.
    """
    return AdmissionLimits.model_validate_json(environ.get(LIMITS_ENV) or "{}")


LIMITS = load_limits()


def bounded_int(field: str, lo: int | None, hi: int | None, limit_name: str) -> Any:
    """An ``int`` annotation whose error names the field, the value and the limit (``seed (2**64) must be ...``)."""

    def check(value: int) -> int:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            low = "" if lo is None else f">= {lo}"
            high = "" if hi is None else f"<= {hi}"
            raise ValueError(f"{field} ({value}) must be {' and '.join(p for p in (low, high) if p)} "
                             f"(admission limit {limit_name})")
        return value

    bounds = {k: v for k, v in (("minimum", lo), ("maximum", hi)) if v is not None}
    return Annotated[int, AfterValidator(check), WithJsonSchema({"type": "integer", **bounds})]


# Annotated int types for the protocol models (one per caller-controlled integer).
Seed = bounded_int("seed", LIMITS.seed_min, LIMITS.seed_max, "seed_min/seed_max")
MaxNewTokens = bounded_int("max_new_tokens", 1, LIMITS.max_new_tokens, "max_new_tokens")
ChoiceCount = bounded_int("n", 1, LIMITS.max_n, "max_n")
TopK = bounded_int("top_k", 0, LIMITS.max_top_k, "max_top_k")


def check_stops(stops: list[str], limits: AdmissionLimits = LIMITS) -> list[str]:
    """Validate stop strings against the count and length limits; raises ``ValueError`` (a pydantic 400)."""
    if len(stops) > limits.max_stop_strings:
        raise ValueError(f"stop has {len(stops)} strings, more than max_stop_strings ({limits.max_stop_strings})")
    for s in stops:
        if not s:
            raise ValueError("stop strings must be non-empty")
        if len(s) > limits.max_stop_chars:
            raise ValueError(f"a stop string has {len(s)} characters, more than max_stop_chars "
                             f"({limits.max_stop_chars})")
    return stops


def check_prompt(prompt: str | None = None, contents: list[str] = (), limits: AdmissionLimits = LIMITS) -> None:
    """Check a prompt's and every message content's length in characters.

    Raises:
        RequestTooLargeError: one is longer than ``max_prompt_chars`` (413).
    """
    for what, text in ([("prompt", prompt)] if prompt is not None else []) + \
            [(f"messages[{i}].content", c) for i, c in enumerate(contents)]:
        if len(text) > limits.max_prompt_chars:
            raise RequestTooLargeError(f"{what} has {len(text)} characters, more than max_prompt_chars "
                                       f"({limits.max_prompt_chars})")


def check_image_count(n: int, limits: AdmissionLimits = LIMITS) -> None:
    """Check how many images one request carries.

    Raises:
        RequestTooLargeError: more than ``max_images_per_request`` (413).
    """
    if n > limits.max_images_per_request:
        raise RequestTooLargeError(f"the request has {n} images, more than max_images_per_request "
                                   f"({limits.max_images_per_request})")


def schema_stats(schema: Any, stop_depth: int | None = None, max_nodes: int | None = None) -> dict[str, int]:
    """Depth, property count, largest enum and node count of a JSON document, walked iteratively (no
    recursion limit).

    Args:
        schema: the parsed schema.
        stop_depth: stop walking below this depth (its own depth is then reported as ``stop_depth + 1``),
            so a hostile document costs no more than the limit it breaks.
        max_nodes: stop after this many values (``nodes`` is then ``max_nodes + 1``).
    """
    depth = properties = enum = nodes = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, level = stack.pop()
        nodes += 1
        if max_nodes is not None and nodes > max_nodes:
            break
        if not isinstance(node, (dict, list)):
            continue
        depth = max(depth, level)
        if stop_depth is not None and level > stop_depth:
            continue
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                properties += len(props)
            values = node.get("enum")
            if isinstance(values, list):
                enum = max(enum, len(values))
            stack.extend((v, level + 1) for v in node.values())
        else:
            stack.extend((v, level + 1) for v in node)
    return {"depth": depth, "properties": properties, "enum_values": enum, "nodes": nodes}


def check_json_schema(schema: Any, limits: AdmissionLimits = LIMITS, *, field: str = "json_schema") -> str:
    """Check a caller's JSON schema against the limits and return its compact JSON text.

    Raises:
        LimitExceededError: not an object, too deep, too many properties or enum values (400).
        SchemaTooLargeError: larger than ``max_schema_bytes`` (413).
    """
    if not isinstance(schema, dict):
        raise LimitExceededError(f"{field} must be a JSON object, got {type(schema).__name__}")
    # Walked first and bounded, in depth and in values: serialising a document thousands of levels deep would
    # itself recurse too far, and every JSON value takes at least one byte, so more values than
    # max_schema_bytes means too large without serialising anything.
    stats = schema_stats(schema, stop_depth=limits.max_schema_depth, max_nodes=limits.max_schema_bytes)
    if stats["nodes"] > limits.max_schema_bytes:
        raise SchemaTooLargeError(f"{field} holds more than {limits.max_schema_bytes} JSON values, so more than "
                                  f"max_schema_bytes ({limits.max_schema_bytes})")
    if stats["depth"] > limits.max_schema_depth:
        raise LimitExceededError(f"{field} is nested deeper than max_schema_depth ({limits.max_schema_depth}) levels")
    try:
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LimitExceededError(f"{field} is not serialisable as JSON: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > limits.max_schema_bytes:
        raise SchemaTooLargeError(f"{field} is {size} bytes as compact JSON, more than max_schema_bytes "
                                  f"({limits.max_schema_bytes})")
    if stats["properties"] > limits.max_schema_properties:
        raise LimitExceededError(f"{field} has {stats['properties']} properties, more than max_schema_properties "
                                 f"({limits.max_schema_properties})")
    if stats["enum_values"] > limits.max_schema_enum_values:
        raise LimitExceededError(f"{field} has an enum of {stats['enum_values']} values, more than "
                                 f"max_schema_enum_values ({limits.max_schema_enum_values})")
    return text
