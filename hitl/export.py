"""Decided review items as training records, in the trainer's JSONL format (``training/data.py``).

Each line is ``{"input": <agent input>, "output": <agent output>, "meta": {...}}``: an approved item's
answer is a positive example as it stands, a corrected item's correction is the target the editor wrote.
Rejected items carry no right answer and are left out (counted). Outputs are re-validated against the
agent's contract, so the file always reads back through ``justnews train --train-files``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from .models import Item, utcnow
from .store import ReviewStore

__all__ = ["ExportResult", "record_of", "export_training", "parse_since"]


@dataclass
class ExportResult:
    """What an export wrote: records per decision, rejected items skipped, invalid ones skipped."""

    path: str
    written: int = 0
    approved: int = 0
    corrected: int = 0
    rejected_skipped: int = 0
    invalid_skipped: list[int] = field(default_factory=list)


def parse_since(value: str | None) -> datetime | None:
    """``2026-11-30T10:00``, ``2026-11-30`` (UTC unless a zone is given) or a span back from now: ``90m``, ``24h``, ``7d``."""
    if not value:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if m:
        n, unit = float(m.group(1)), m.group(2)
        return utcnow() - timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"--since {value!r}: give an ISO time (2026-11-30T10:00) or a span (90m, 24h, 7d)") from None
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def record_of(item: Item) -> dict[str, Any] | None:
    """The training record of a decided item, or None for a rejected (or undecided) one."""
    if item.state == "approved":
        output = item.output
    elif item.state == "corrected":
        output = item.correction
    else:
        return None
    meta = {"hitl_id": item.id, "decision": item.state, "decided_by": item.decided_by,
            "decided_at": item.decided_at.isoformat() + "Z" if item.decided_at else None,
            "answered_by": item.answered_by, "reasons": item.reasons}
    return {"input": item.input, "output": output, "meta": meta}


def export_training(store: ReviewStore, agent: str, out: str | Path | TextIO, since: datetime | None = None) -> ExportResult:
    """Write ``agent``'s decided items (decided at or after ``since``) as training JSONL to ``out``."""
    from agent_graph import get_spec
    from agent_graph.errors import AgentGraphError

    spec = get_spec(agent)
    result = ExportResult(path=str(out) if isinstance(out, (str, Path)) else getattr(out, "name", "<stream>"))
    lines = []
    for item in store.decided(agent, since):
        rec = record_of(item)
        if rec is None:
            result.rejected_skipped += 1
            continue
        try:
            spec.validate_output(rec["output"], spec.load_input(rec["input"]))
        except AgentGraphError:
            result.invalid_skipped.append(item.id)
            continue
        lines.append(json.dumps(rec, separators=(",", ":"), ensure_ascii=False))
        result.written += 1
        setattr(result, item.state, getattr(result, item.state) + 1)
    text = "".join(line + "\n" for line in lines)
    if isinstance(out, (str, Path)):
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    else:
        out.write(text)
    return result
