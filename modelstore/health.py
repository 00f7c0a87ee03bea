"""``modelstore check``: the store-wide health check CI runs (the seed's Phase 5).

Checks every namespace: ``current`` points at a published version; every manifest validates;
checksums match; VRAM figures are within sane bounds (enforced by the manifest model); the variants a
base offers are consistent with its files; every adapter's base ref resolves and the adapter still fits
that base; no publish was left half-way in ``.staging``.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from . import validate
from .errors import ModelStoreError
from .refs import CURRENT

if TYPE_CHECKING:
    from .store import ModelStore

__all__ = ["check_store"]


def _variant_problems(where: str, manifest, version_dir) -> list[str]:
    problems = []
    files = [f.path for f in manifest.files]
    try:
        validate.check_base_files(files)
    except ModelStoreError as exc:
        return [f"{where}: {exc}"]
    config = json.loads((version_dir / "config.json").read_text())
    prequant = config.get("quantization_config")
    if prequant:
        # A pre-quantised snapshot can only be loaded as the variant it was quantised to.
        method = "bnb-4bit" if prequant.get("load_in_4bit") else "bnb-int8" if prequant.get("load_in_8bit") else None
        extra = sorted(set(manifest.approx_vram_mb) - {method})
        if extra:
            problems.append(f"{where}: pre-quantised ({method}) snapshot cannot offer variants {extra}")
    if manifest.tokenizer and not any(f.startswith("tokenizer") for f in files):
        problems.append(f"{where}: manifest names a tokenizer but no tokenizer file is published")
    return problems


def check_store(store: "ModelStore", *, checksums: bool = True) -> list[str]:
    problems: list[str] = []
    if not store.root.is_dir():
        return [f"store root {store.root} does not exist"]
    staging = store.root / ".staging"
    if staging.is_dir() and any(staging.iterdir()) and not _lock_held(store):
        problems.append(f"{staging} holds leftovers of an interrupted publish (the next publish removes them)")
    namespaces = list(store.namespaces())
    if not namespaces:
        problems.append(f"store {store.root} holds no models")
    for ns in namespaces:
        link = store.namespace_dir(ns) / CURRENT
        if link.is_symlink() and store.current_version(ns) is None:
            problems.append(f"{ns.namespace}: 'current' points at {os.readlink(link)!r}, which does not exist")
        elif not link.is_symlink():
            problems.append(f"{ns.namespace}: no 'current' version")
        for version in store.versions(ns):
            ref = ns.with_version(version)
            try:
                resolved = store.resolve(ref)
            except ModelStoreError as exc:
                problems.append(f"{ref}: {exc}")
                continue
            report = store.verify(ref, dry_run=not checksums)
            problems += [f"{ref}: {path}: {why}" for path, why in sorted(report.bad_files.items())]
            m = resolved.manifest
            if m.kind == "base":
                problems += _variant_problems(str(ref), m, resolved.path)
            else:
                try:
                    base = store.resolve(m.adapter.base_ref)
                    validate.validate_adapter_against_base(resolved.path, base.path)
                except ModelStoreError as exc:
                    problems.append(f"{ref}: base {m.adapter.base_ref}: {exc}")
    return problems


def _lock_held(store: "ModelStore") -> bool:
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(store.root / ".lock"), timeout=0):
            return False
    except Timeout:
        return True
