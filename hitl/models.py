"""The review queue's tables: one row per item, one audit row per thing that happened to it.

Times are stored as naive UTC (SQLite keeps no zone); :func:`utcnow` is the one clock the store uses.
``reason_tags`` holds the reasons as ``,a,b,`` so a filter is a portable ``LIKE '%,a,%'``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Base", "Item", "AuditEvent", "Hold", "State", "STATES", "DECIDED", "utcnow", "input_key"]

State = Literal["pending", "claimed", "approved", "corrected", "rejected"]
STATES: tuple[str, ...] = ("pending", "claimed", "approved", "corrected", "rejected")
DECIDED: tuple[str, ...] = ("approved", "corrected", "rejected")


def utcnow() -> datetime:
    """Now, as naive UTC (what the columns hold)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def input_key(agent: str, inp: Any, output: Any) -> str:
    """sha256 of the agent, its input and its answer as canonical JSON: how a pipeline step finds its item."""
    text = json.dumps({"agent": agent, "input": inp, "output": output}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class Base(DeclarativeBase):
    pass


class Item(Base):
    """One answer (or hand-queued input/answer pair) waiting for, or past, an editor's decision."""

    __tablename__ = "hitl_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent: Mapped[str] = mapped_column(String(64), index=True)
    input: Mapped[Any] = mapped_column(JSON)
    output: Mapped[Any] = mapped_column(JSON)
    answered_by: Mapped[str | None] = mapped_column(String(300))
    step: Mapped[str | None] = mapped_column(String(16))
    pool: Mapped[str | None] = mapped_column(String(128))
    reasons: Mapped[Any] = mapped_column(JSON)
    reason_tags: Mapped[str] = mapped_column(String(300))
    source: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claim_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    correction: Mapped[Any | None] = mapped_column(JSON)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    input_key: Mapped[str | None] = mapped_column(String(64), index=True)

    audit: Mapped[list["AuditEvent"]] = relationship(back_populates="item", order_by="AuditEvent.id")

    __table_args__ = (Index("ix_hitl_items_agent_state_created", "agent", "state", "created_at"),)


class AuditEvent(Base):
    """Who did what to an item, when, and what changed (``detail``: ``{"field": [old, new]}``)."""

    __tablename__ = "hitl_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("hitl_items.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    detail: Mapped[Any] = mapped_column(JSON)

    item: Mapped[Item] = relationship(back_populates="audit")


class Hold(Base):
    """A pipeline step of an article that went to review; the article is held until its item is decided."""

    __tablename__ = "hitl_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    article_id: Mapped[str] = mapped_column(String(64), index=True)
    step: Mapped[str] = mapped_column(String(64))
    agent: Mapped[str] = mapped_column(String(64))
    input_key: Mapped[str] = mapped_column(String(64))
    reasons: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
