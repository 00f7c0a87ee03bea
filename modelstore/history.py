"""The log of which version was current when: ``<namespace>/history.json``.

Every flip of ``current`` appends one event ``{action, version, previous, at}``. Replaying publish and
promote events as pushes and rollbacks as pops gives the stack of versions that have been current, the
stack ``rollback`` walks. ``current`` is flipped before its event is written, so after a crash between
the two the pointer is the truth and the next flip of the same version writes the missing event once.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .fsutil import atomic_write_json

__all__ = ["HISTORY", "read_events", "replay", "append_event"]

HISTORY = "history.json"


def read_events(ns: Path) -> list[dict[str, Any]]:
    """A namespace's events, oldest first; an absent or unreadable log is an empty one."""
    try:
        events = json.loads((ns / HISTORY).read_text())
    except (OSError, ValueError):
        return []
    return events if isinstance(events, list) else []


def replay(events: list[dict[str, Any]]) -> list[str]:
    """The stack of versions that have been current, the present one last."""
    stack: list[str] = []
    for ev in events:
        if ev.get("action") == "rollback":
            if stack:
                stack.pop()
        elif isinstance(ev.get("version"), str):
            stack.append(ev["version"])
    return stack


def append_event(ns: Path, events: list[dict[str, Any]], action: str, version: str, previous: str | None) -> None:
    """Write ``events`` plus one new event, atomically and durably."""
    events = [*events, {"action": action, "version": version, "previous": previous,
                        "at": datetime.now(timezone.utc).isoformat()}]
    atomic_write_json(ns / HISTORY, events)
