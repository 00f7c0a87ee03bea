"""``modelstore check``: the store-wide health check CI runs (the seed's Phase 5).

Checks every namespace (the text base, the named bases, the adapters): ``current`` points at a published
version; every manifest validates; checksums match; VRAM figures are within sane bounds (enforced by the
manifest model); the variants a base offers are consistent with its files, and a vision-language base's
image facts with its config; every adapter's base ref resolves and the adapter still fits
that base; no publish was left half-way in ``.staging``.

A check never stops at the first problem: each version is checked on its own and whatever goes wrong
with one (a torn file, a corrupt header, an unreadable manifest) becomes a line of the report, so one
run names every problem of the store.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from . import validate
from .errors import ModelStoreError
from .refs import CURRENT, ModelRef

if TYPE_CHECKING:
    from .store import ModelStore

__all__ = ["GC_STAGING_HINT", "check_store", "staging_problems", "version_names"]

GC_STAGING_HINT = "run `modelstore gc --staging` to remove them (the next publish also does)"


def _variant_problems(where: str, manifest, version_dir) -> list[str]:
    problems = []
    files = [f.path for f in manifest.files]
    try:
        validate.check_base_files(files)
    except ModelStoreError as exc:
        return [f"{where}: {exc}"]
    try:
        config = json.loads((version_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"{where}: config.json: cannot be read as JSON ({exc})"]
    prequant = config.get("quantization_config")
    if prequant:
        # A pre-quantised snapshot can only be loaded as the variant it was quantised to.
        method = "bnb-4bit" if prequant.get("load_in_4bit") else "bnb-int8" if prequant.get("load_in_8bit") else None
        extra = sorted(set(manifest.approx_vram_mb) - {method})
        if extra:
            problems.append(f"{where}: pre-quantised ({method}) snapshot cannot offer variants {extra}")
    if manifest.tokenizer and not any(f.startswith("tokenizer") for f in files):
        problems.append(f"{where}: manifest names a tokenizer but no tokenizer file is published")
    if manifest.vision is not None:
        problems += [f"{where}: {p}" for p in validate.vision_problems(files, config, manifest.vision)]
    return problems


def version_names(store: "ModelStore", ns: ModelRef) -> list[str]:
    """Every version directory of a namespace, with or without a readable manifest (sorted)."""
    vdir = store.namespace_dir(ns) / "versions"
    if not vdir.is_dir():
        return []
    return sorted(d.name for d in vdir.iterdir() if d.is_dir() and not d.name.startswith("."))


def staging_problems(store: "ModelStore") -> list[str]:
    """Leftovers in ``.staging``, listed holding the store lock: a live publish's staging is not one."""
    from filelock import FileLock, Timeout

    staging = store.root / ".staging"
    try:
        with FileLock(str(store.root / ".lock"), timeout=0):
            leftovers = sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []
    except Timeout:
        return []  # a writer is running; whatever .staging holds may be its own
    if not leftovers:
        return []
    shown = ", ".join(leftovers[:3]) + (f" and {len(leftovers) - 3} more" if len(leftovers) > 3 else "")
    return [f"{staging} holds {len(leftovers)} leftover(s) of an interrupted publish or gc ({shown}); "
            + GC_STAGING_HINT]


def _version_problems(store: "ModelStore", ref: ModelRef, checksums: bool) -> list[str]:
    try:
        resolved = store.resolve(ref)
    except ModelStoreError as exc:
        return [f"{ref}: {exc}"]
    report = store.verify(ref, dry_run=not checksums, headers=True)
    if report.bad_files:
        # The fit checks below read these same files and would only repeat the finding.
        return [f"{ref}: {path}: {why}" for path, why in sorted(report.bad_files.items())]
    m = resolved.manifest
    if m.kind == "base":
        return _variant_problems(str(ref), m, resolved.path)
    try:
        base = store.resolve(m.adapter.base_ref)
        validate.validate_adapter_against_base(resolved.path, base.path)
    except ModelStoreError as exc:
        return [f"{ref}: base {m.adapter.base_ref}: {exc}"]
    return []


def check_store(store: "ModelStore", *, checksums: bool = True) -> list[str]:
    """Every problem of the store, one line each naming the ref and file (empty: healthy).

    Args:
        store: the store to check.
        checksums: recompute sha256; False checks presence, sizes and safetensors headers only.
    """
    if not store.root.is_dir():
        return [f"store root {store.root} does not exist"]
    problems = staging_problems(store)
    namespaces = list(store.namespaces())
    if not namespaces:
        problems.append(f"store {store.root} holds no models")
    for ns in namespaces:
        link = store.namespace_dir(ns) / CURRENT
        if link.is_symlink() and store.current_version(ns) is None:
            problems.append(f"{ns.namespace}: 'current' points at {os.readlink(link)!r}, which does not exist")
        elif not link.is_symlink():
            problems.append(f"{ns.namespace}: no 'current' version")
        for version in version_names(store, ns):
            ref = ns.with_version(version)
            try:
                problems += _version_problems(store, ref, checksums)
            except Exception as exc:  # noqa: BLE001 -- a checker reports what it cannot check and goes on
                problems.append(f"{ref}: could not be checked: {type(exc).__name__}: {exc}")
    return problems

