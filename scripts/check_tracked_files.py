#!/usr/bin/env python3
"""Refuse a checkout that tracks model weights or large files; run by scripts/test.sh before pytest.

Weights belong in the ModelStore, never in git: a tracked ``*.safetensors`` / ``*.bin`` / pickle bloats every
clone for good (history keeps it) and a pickle in the tree is code someone may one day load. Every tracked
file (``git ls-files``) is checked; each offender is listed with its size and why, and the exit code is 1.
Outside a git checkout (an unpacked sdist, say) it says so and exits 0.

    python scripts/check_tracked_files.py [--root DIR] [--max-bytes N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["WEIGHT_SUFFIXES", "MAX_BYTES", "tracked_files", "offenders", "main"]

# Weights, checkpoints and serialised objects of the usual frameworks.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml", ".pkl", ".pickle", ".joblib",
                   ".onnx", ".h5", ".hdf5", ".keras", ".tflite", ".pb", ".npy", ".npz", ".msgpack", ".mlmodel",
                   ".engine")
MAX_BYTES = 2 * 1024 * 1024  # 2 MiB


def tracked_files(root: Path) -> list[str] | None:
    """Paths ``git ls-files`` lists under ``root``; None when ``root`` is not in a git work tree."""
    try:
        proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):  # no git binary, or a hung filesystem
        return None
    if proc.returncode != 0:
        return None
    return [p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


def offenders(root: Path, paths: list[str], max_bytes: int = MAX_BYTES) -> list[str]:
    """One line per tracked path that is a weight file or larger than ``max_bytes``."""
    found = []
    for rel in paths:
        path = root / rel
        try:
            size = path.lstat().st_size  # a symlink counts as itself, not its target
        except FileNotFoundError:  # deleted in the work tree, not yet in the index: nothing to clone
            continue
        reasons = []
        if rel.lower().endswith(WEIGHT_SUFFIXES):
            reasons.append(f"weight file ({os.path.splitext(rel)[1]}): publish it to the ModelStore instead")
        if size > max_bytes:
            reasons.append(f"{size:,} bytes is over the {max_bytes:,}-byte limit")
        if reasons:
            found.append(f"{rel} ({size:,} bytes): {'; '.join(reasons)}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="repository root")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help=f"size limit (default {MAX_BYTES})")
    args = parser.parse_args(argv)
    root = Path(args.root)
    paths = tracked_files(root)
    if paths is None:
        print(f"check_tracked_files: {root} is not a git checkout (or git is missing); skipped", file=sys.stderr)
        return 0
    bad = offenders(root, paths, args.max_bytes)
    if bad:
        print(f"check_tracked_files: {len(bad)} tracked file(s) must not be in git "
              "(git rm --cached <path>, and add a .gitignore rule):", file=sys.stderr)
        for line in bad:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"check_tracked_files: {len(paths)} tracked files, no weights, none over {args.max_bytes:,} bytes",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
