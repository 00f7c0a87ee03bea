"""Durable filesystem primitives: hashing copies, fsync, atomic replace and symlink flips.

Durability rule used throughout: a file is fsynced before it is renamed into place, and the directory
that holds a rename is fsynced after it, so a crash (power loss, ``kill -9``) leaves either the old
state or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["CHUNK", "Progress", "sha256_file", "copy_with_sha256", "fsync_dir", "atomic_write_text", "exchange_dirs",
           "atomic_write_json", "atomic_symlink", "iter_files"]

CHUNK = 8 * 1024 * 1024

Progress = Callable[[int], None] | None


def sha256_file(path: Path, progress: Progress = None) -> str:
    """Stream ``path`` through SHA-256, calling ``progress(n_bytes)`` per chunk."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def copy_with_sha256(src: Path, dst: Path, progress: Progress = None) -> tuple[int, str]:
    """Copy ``src`` to ``dst`` (following symlinks), fsync it, and return (size, sha256).

    The hash is computed on the bytes as they are written, so what the manifest records is what
    landed on disk in this copy, not a second read of a source that may change underneath.
    """
    h = hashlib.sha256()
    size = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
            h.update(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())
    return size, h.hexdigest()


def fsync_dir(path: Path) -> None:
    """fsync a directory so the renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (relative) atomically: build a new link, then rename over the old."""
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex}.tmp")
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def iter_files(root: Path, skip: Iterable[str] = ()) -> list[Path]:
    """Regular files under ``root`` (symlinks followed), relative, sorted; hidden entries skipped."""
    skipped = set(skip)
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = (Path(dirpath) / name).relative_to(root)
            if rel.as_posix() in skipped:
                continue
            out.append(rel)
    return out


def exchange_dirs(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported.

    Used by ``publish --force`` so a replaced version is never missing, not even for an instant.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0
