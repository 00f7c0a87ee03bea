"""Publishing one version: staging, copy+hash, manifest, rename into ``versions/``, flip ``current``.

Everything runs under the store lock, which is what makes ``.staging`` safe to clear: while a writer
holds the lock, whatever ``.staging`` holds that the writer did not create is a dead publisher's. Crash
points (:mod:`modelstore.crashpoints`) mark the phases the durability tests kill a publisher at.

Re-running a publish is idempotent: if the version already exists with exactly the files of the source
(and, for an adapter, the same pinned base), the publish completes by verifying it and flipping
``current``. That is the state a publisher killed between its rename and its flip leaves behind.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .crashpoints import crash_point
from .errors import ModelStoreError, VersionExistsError
from .fsutil import atomic_write_json, copy_with_sha256, exchange_dirs, fsync_dir, iter_files
from .integrity import source_differences
from .manifest import FileEntry, Manifest
from .refs import ModelRef
from .sources import refuse_pickles

if TYPE_CHECKING:
    from .store import ModelStore

__all__ = ["MANIFEST", "STAGING", "publish_version", "remove_leftovers"]

MANIFEST = "manifest.json"
STAGING = ".staging"


def publish_version(store: "ModelStore", ref: ModelRef, source_dir: Path,
                    build: Callable[[Path, list[FileEntry]], Manifest], *, force: bool, promote: bool,
                    include: list[str] | None = None, base_ref: str | None = None) -> Manifest:
    """Copy+hash ``source_dir`` into staging, ``build`` the manifest from the staged copy, rename it into
    ``versions/`` and (``promote``) flip ``current``, all under the store lock.

    Args:
        store: the store to publish into.
        ref: the version being published.
        source_dir: directory to copy from.
        build: ``(staged_dir, file_entries) -> Manifest``; validates the staged copy.
        force: replace an existing version of the same tag.
        promote: point ``current`` at the version.
        include: relative paths to publish; default every file.
        base_ref: an adapter's pinned base, compared when the version already exists.
    """
    if not source_dir.is_dir():
        raise ModelStoreError(f"source directory {str(source_dir)!r} does not exist")
    wanted = None if include is None else set(include)
    rel_files = [f for f in iter_files(source_dir)
                 if f.as_posix() != MANIFEST and (wanted is None or f.as_posix() in wanted)]
    refuse_pickles(rel_files)
    ns = store.namespace_dir(ref)
    final = ns / "versions" / ref.version
    with store._lock():
        remove_leftovers(store.root / STAGING)
        if final.exists() and not force:
            return _complete_existing(store, ref, source_dir, rel_files, promote, base_ref)
        staged = store.root / STAGING / f"{uuid.uuid4().hex}"
        staged.mkdir(parents=True)
        crash_point("staging")
        files = _copy_tree(store, source_dir, rel_files, staged)
        manifest = build(staged, files)
        atomic_write_json(staged / MANIFEST, json.loads(manifest.model_dump_json()))
        for d in sorted({(staged / f.path).parent for f in files}, key=lambda p: -len(p.parts)):
            fsync_dir(d)
        crash_point("manifest")
        (ns / "versions").mkdir(parents=True, exist_ok=True)
        if final.exists():
            # --force: move the old version aside first; rename cannot replace a non-empty directory.
            if exchange_dirs(staged, final):
                shutil.rmtree(staged, ignore_errors=True)  # now holds the old version
            else:
                trash = store.root / STAGING / f"old-{uuid.uuid4().hex}"
                os.rename(final, trash)
                os.rename(staged, final)
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staged, final)
        fsync_dir(ns / "versions")
        crash_point("rename")
        if promote:
            store._set_current(ref, ref.version, action="publish")
    return manifest


def _complete_existing(store: "ModelStore", ref: ModelRef, source_dir: Path, rel_files: list[Path], promote: bool,
                       base_ref: str | None) -> Manifest:
    """Re-running a publish whose version exists: the same files complete it (a publisher killed after
    its rename left the version whole but not current); different files are refused."""
    refuse = f"{ref} already exists"
    try:
        existing = store.resolve(ref).manifest
    except ModelStoreError as exc:
        raise VersionExistsError(f"{refuse} but is unreadable ({exc}); pass force=True (--force) to replace it") from exc
    bar = store._bar(existing.total_bytes, "compare sha256")
    try:
        differences = source_differences(source_dir, rel_files, existing.files, bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    if base_ref and existing.adapter and existing.adapter.base_ref != base_ref:
        differences.insert(0, f"it was validated against {existing.adapter.base_ref}, not {base_ref}")
    if differences:
        raise VersionExistsError(f"{refuse} with different content ({'; '.join(differences[:3])}); "
                                 "pass force=True (--force) to replace it")
    report = store.verify(ref, dry_run=False, headers=True)
    if not report.ok:
        detail = "; ".join(f"{p}: {why}" for p, why in sorted(report.bad_files.items()))
        raise VersionExistsError(f"{refuse} with these files but fails verification ({detail}); "
                                 "pass force=True (--force) to re-publish it")
    if promote:
        store._set_current(ref, ref.version, action="publish")
    return existing


def _copy_tree(store: "ModelStore", source_dir: Path, rel_files: list[Path], staged: Path) -> list[FileEntry]:
    total = sum((source_dir / f).stat().st_size for f in rel_files)
    bar = store._bar(total, "copy+sha256")
    entries = []
    try:
        for rel in rel_files:
            size, digest = copy_with_sha256(source_dir / rel, staged / rel, bar.update if bar else None)
            entries.append(FileEntry(path=rel.as_posix(), size=size, sha256=digest))
            crash_point("hashing")
    finally:
        if bar:
            bar.close()
    return entries


def remove_leftovers(staging: Path) -> list[str]:
    """Remove every entry of a staging directory; return the names gone. Call only holding the store lock."""
    removed = []
    for path in sorted(staging.iterdir()) if staging.is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            removed.append(path.name)
    return removed
