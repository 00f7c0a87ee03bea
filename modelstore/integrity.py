"""File integrity of a published version: presence, size, sha256, and safetensors headers.

Every finding is returned as text, never raised: ``verify`` and ``check`` must report every damaged
file of every version, so one torn file cannot hide the next. The safetensors header is parsed here
(8-byte little-endian length, then JSON) instead of through ``safetensors.safe_open``, which raises an
uncaught ``SafetensorError`` on exactly the files a checker exists to find. Reading a header costs a few
KiB however large the weights are, so even a fast (no-sha256) check parses every header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .fsutil import Progress, iter_files, sha256_file
from .manifest import FileEntry

__all__ = ["MAX_HEADER_BYTES", "safetensors_problem", "file_problems", "source_differences"]

# The safetensors format caps its header at 100 MB; a larger length can only be garbage.
MAX_HEADER_BYTES = 100_000_000


def _read_header(path: Path) -> tuple[bytes | None, int, str | None]:
    """(header bytes, file size, problem): reads the length prefix and the header, nothing more."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return None, size, f"safetensors file of {size} bytes is too short to hold a header"
        n = int.from_bytes(prefix, "little")
        if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
            return None, size, f"safetensors header length {n} is impossible in a {size}-byte file"
        return f.read(n), size, None


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header, or None when it parses and covers the file.

    Checks: the length prefix fits the file, the header is a JSON object, every tensor entry has a
    dtype, a shape and in-order ``data_offsets``, and the tensors end exactly where the file ends (a
    truncated or padded file fails here even when its header is intact).
    """
    try:
        raw, size, problem = _read_header(path)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if problem:
        return problem
    try:
        header = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        return f"safetensors header is not valid JSON ({exc})"
    if not isinstance(header, dict):
        return f"safetensors header is a JSON {type(header).__name__}, not an object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            ok = isinstance(info["dtype"], str) and isinstance(info["shape"], list) and 0 <= int(begin) <= int(stop)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            return f"safetensors header entry {name!r} lacks a valid dtype, shape or data_offsets"
        end = max(end, int(stop))
    data = size - 8 - len(raw)
    if end > data:
        return f"truncated: the tensors need {end} bytes of data, the file holds {data}"
    if end < data:
        return f"the file holds {data - end} bytes after its last tensor (not a safetensors file as written)"
    return None


def _one_file(path: Path, entry: FileEntry, checksums: bool, headers: bool,
              progress: Progress) -> tuple[str | None, int]:
    """(what is wrong or None, bytes hashed) for one manifest entry."""
    if not path.is_file():
        return "missing", 0
    size = path.stat().st_size
    if size != entry.size:
        return f"size {size} != manifest {entry.size}" + (" (truncated)" if size < entry.size else ""), 0
    found = []
    if checksums:
        try:
            digest = sha256_file(path, progress)
        except OSError as exc:
            return f"cannot read: {exc.strerror or exc}", 0
        if digest != entry.sha256:
            found.append(f"sha256 {digest[:12]}... != manifest {entry.sha256[:12]}...")
    if headers and entry.path.endswith(".safetensors"):
        header = safetensors_problem(path)
        if header:
            found.append(header)
    return "; ".join(found) or None, size if checksums else 0


def file_problems(version_dir: Path, entries: Iterable[FileEntry], *, checksums: bool, headers: bool = True,
                  progress: Progress = None, skip: Iterable[str] = ()) -> tuple[dict[str, str], int]:
    """Check a version directory against its manifest's file entries.

    Args:
        version_dir: the published version's directory.
        entries: the manifest's files.
        checksums: recompute sha256 (False: presence and size only).
        headers: parse the header of every ``.safetensors`` file.
        progress: called with byte counts while hashing.
        skip: files on disk that are not listed but belong there (the manifest itself).

    Returns:
        ``({relative path: what is wrong}, bytes hashed)``; an empty dict means the version is intact.
    """
    bad: dict[str, str] = {}
    hashed = 0
    entries = list(entries)
    for entry in entries:
        problem, n = _one_file(version_dir / entry.path, entry, checksums, headers, progress)
        hashed += n
        if problem:
            bad[entry.path] = problem
    listed = {e.path for e in entries} | set(skip)
    for rel in iter_files(version_dir):
        if rel.as_posix() not in listed:
            bad[rel.as_posix()] = "not listed in the manifest"
    return bad, hashed


def source_differences(source_dir: Path, rel_files: Iterable[Path], published: Iterable[FileEntry],
                       progress: Progress = None) -> list[str]:
    """How a publish's source files differ from a published version's manifest entries (empty: same).

    File sets and sizes are compared first, so a different source is told apart without reading it;
    only a source that matches on both is hashed.
    """
    entries = {e.path: e for e in published}
    source = {p.as_posix(): source_dir / p for p in rel_files}
    found = [f"{name} is not in the published version" for name in sorted(set(source) - set(entries))]
    found += [f"{name} is published but not in the source" for name in sorted(set(entries) - set(source))]
    found += [f"{name}: size {source[name].stat().st_size} != published {entries[name].size}"
              for name in sorted(set(source) & set(entries)) if source[name].stat().st_size != entries[name].size]
    if found:
        return found
    return [f"{name}: sha256 differs from the published file" for name in sorted(source)
            if sha256_file(source[name], progress) != entries[name].sha256]
