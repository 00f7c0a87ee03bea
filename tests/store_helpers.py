"""Store set-ups the serving, rollout and e2e tests share: new versions from existing files, corrupt weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["publish_copy", "corrupt_weights", "truncate_weights"]


def publish_copy(store: Any, source_ref: str, target: str, version: str, scratch: Path, *,
                 promote: bool = True) -> None:
    """Publish ``source_ref``'s adapter files as ``target`` (``agent/name``) at ``version``.

    The files go through ``scratch/<version>`` (the manifest is left behind: publishing writes its own).
    """
    agent, name = target.split("/", 1)
    src = shutil.copytree(store.adapter_path(source_ref), Path(scratch) / f"{agent}-{name}-{version}",
                          ignore=shutil.ignore_patterns("manifest.json"))
    store.publish_adapter(agent, name, src, version, promote=promote)


def corrupt_weights(store: Any, ref: str) -> None:
    """Overwrite a published adapter's weights with zeros of the same size: only the checksum tells."""
    weights = store.adapter_path(ref) / "adapter_model.safetensors"
    os.chmod(weights, 0o644)
    weights.write_bytes(b"\0" * weights.stat().st_size)


def truncate_weights(store: Any, ref: str, keep: float = 0.5) -> int:
    """Cut a published adapter's weights to ``keep`` of their size (a torn copy); return the new size."""
    weights = store.adapter_path(ref) / "adapter_model.safetensors"
    os.chmod(weights, 0o644)
    size = int(weights.stat().st_size * keep)
    os.truncate(weights, size)
    return size
