"""ReviewStore: queue, claim and decide review items in one SQL database, with an audit row per change.

Every state change is one conditional ``UPDATE ... WHERE`` (the state and claim it expects), checked by its
row count, so two reviewers -- in two threads, processes or cluster nodes -- can never both claim or both
decide an item: the loser gets :class:`~hitl.errors.ClaimConflict` saying who holds it or who decided it.
A claim expires (default 15 minutes); an expired claim is free for anyone, and a decision needs either no
live claim or the decider's own. Corrections are validated against the agent's output contract
(``agent_graph.get_spec(agent).validate_output``, cross-checked with the input) before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Literal, Sequence

from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from .db import make_engine, migrate, resolve_url
from .errors import ClaimConflict, InvalidDecision, ItemNotFound
from .models import DECIDED, AuditEvent, Hold, Item, input_key, utcnow

__all__ = ["NewItem", "HeldStep", "ReviewStore", "Action", "REASONS", "DEFAULT_CLAIM_S", "HOLD_GRACE_S"]

Action = Literal["approve", "reject", "correct"]
_DECISION_STATE = {"approve": "approved", "reject": "rejected", "correct": "corrected"}
# Why an item is queued: the routing rules' reasons (agent_graph.schema.ReviewRules) and 'manual'.
REASONS = ("blocking_verdict", "unverified", "fallback", "low_confidence", "sampled", "manual")
DEFAULT_CLAIM_S = 900.0
# How long a held step waits for its agent's (asynchronous) queue write before it counts as not queued.
HOLD_GRACE_S = 300.0
_NAME_MAX = 64


@dataclass(frozen=True)
class NewItem:
    """An answer to queue: the agent, its input and JSON answer, who answered, and why it goes to review."""

    agent: str
    input: dict[str, Any]
    output: dict[str, Any]
    reasons: tuple[str, ...]
    answered_by: str | None = None
    step: str | None = None
    pool: str | None = None
    source: str = "rule"
    note: str | None = None
    created_at: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True)
class HeldStep:
    """A pipeline step whose answer the review rules sent to review (see :meth:`ReviewStore.hold`)."""

    step: str
    agent: str
    input: dict[str, Any]
    output: dict[str, Any]
    reasons: tuple[str, ...]


def _name(who: str) -> str:
    who = (who or "").strip()
    if not who or len(who) > _NAME_MAX:
        raise InvalidDecision(f"reviewer name must be 1..{_NAME_MAX} characters, got {who!r}")
    return who


def _fmt(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "?"


class ReviewStore:
    """The review queue over one database.

    Args:
        url: SQLAlchemy URL; None resolves ``$JUSTNEWS_HITL_DB``, then ``<store_root>/.hitl/hitl.db``.
        store_root: the ModelStore root the SQLite default sits beside.
        engine: an engine to use instead (tests, or one shared by several stores).
        claim_s: how long a claim lasts.
        busy_timeout_s: SQLite only: how long a statement waits for the file lock.
        auto_migrate: bring the schema to head on first use (Alembic).
    """

    def __init__(self, url: str | None = None, *, store_root: str | None = None, engine: Engine | None = None,
                 claim_s: float = DEFAULT_CLAIM_S, busy_timeout_s: float = 30.0, auto_migrate: bool = True):
        self.url = str(engine.url) if engine is not None else resolve_url(url, store_root)
        self.engine = engine or make_engine(self.url, busy_timeout_s=busy_timeout_s)
        self.claim_s = claim_s
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._migrated = not auto_migrate

    def migrate(self) -> str | None:
        """Bring the schema to the newest revision; returns it."""
        rev = migrate(self.engine)
        self._migrated = True
        return rev

    def _s(self) -> Session:
        if not self._migrated:
            self.migrate()
        return self._session()

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    # -- writing ----------------------------------------------------------------------------------

    def enqueue(self, item: NewItem, actor: str = "agent") -> int:
        """Queue one item; returns its id."""
        return self.enqueue_many([item], actor)[0]

    def enqueue_many(self, items: Sequence[NewItem], actor: str = "agent") -> list[int]:
        """Queue items in one transaction (all or none); returns their ids in order."""
        for it in items:
            bad = [r for r in it.reasons if r not in REASONS]
            if not it.reasons or bad:
                raise InvalidDecision(f"item of agent {it.agent!r}: reasons {list(it.reasons)} must be a non-empty "
                                      f"subset of {', '.join(REASONS)}")
        now = utcnow()
        rows = [Item(agent=it.agent, input=it.input, output=it.output, answered_by=it.answered_by, step=it.step,
                     pool=it.pool, reasons=list(it.reasons), reason_tags="," + ",".join(it.reasons) + ",",
                     source=it.source, state="pending", note=it.note, created_at=it.created_at or now,
                     updated_at=now, input_key=input_key(it.agent, it.input, it.output)) for it in items]
        with self._s() as s, s.begin():
            s.add_all(rows)
            s.flush()
            s.add_all(AuditEvent(item_id=r.id, at=now, actor=actor, action="queued",
                                 detail={"state": [None, "pending"], "reasons": r.reasons, "source": r.source})
                      for r in rows)
        return [r.id for r in rows]

    def claim(self, item_id: int, reviewer: str, *, claim_s: float | None = None) -> Item:
        """Claim an item for ``reviewer`` (or extend their own claim).

        Raises:
            ItemNotFound: no such item.
            ClaimConflict: another reviewer's claim is live, or the item is decided.
        """
        reviewer = _name(reviewer)
        now = utcnow()
        expires = now + timedelta(seconds=self.claim_s if claim_s is None else claim_s)
        with self._s() as s, s.begin():
            prior = s.execute(select(Item.state, Item.claimed_by, Item.claim_expires_at)
                              .where(Item.id == item_id)).first()  # for the audit row only; the UPDATE decides
            done = s.execute(update(Item).where(Item.id == item_id, self._free_for(reviewer, now))
                             .values(state="claimed", claimed_by=reviewer, claim_expires_at=expires, updated_at=now)
                             .execution_options(synchronize_session=False)).rowcount
            if done != 1:
                raise self._conflict(s, item_id, reviewer, "claim")
            detail = {"state": [prior.state, "claimed"], "claim_expires_at": _fmt(expires)}
            if prior.state == "claimed" and prior.claimed_by != reviewer:
                detail["expired_claim_of"] = prior.claimed_by
            s.add(AuditEvent(item_id=item_id, at=now, actor=reviewer, action="claimed", detail=detail))
        return self.get(item_id)

    def release(self, item_id: int, reviewer: str) -> Item:
        """Give back one's own claim (the item is pending again)."""
        reviewer = _name(reviewer)
        now = utcnow()
        with self._s() as s, s.begin():
            done = s.execute(update(Item).where(Item.id == item_id, Item.state == "claimed",
                                                Item.claimed_by == reviewer)
                             .values(state="pending", claimed_by=None, claim_expires_at=None, updated_at=now)
                             .execution_options(synchronize_session=False)).rowcount
            if done != 1:
                raise self._conflict(s, item_id, reviewer, "release")
            s.add(AuditEvent(item_id=item_id, at=now, actor=reviewer, action="released",
                             detail={"state": ["claimed", "pending"]}))
        return self.get(item_id)

    def decide(self, item_id: int, reviewer: str, action: Action, *, correction: Any = None,
               note: str | None = None) -> Item:
        """Approve, reject or correct an item.

        A correction (a dict or JSON text) must validate against the agent's output contract and fit the
        item's input. The decision needs the item pending, or claimed by ``reviewer``, or its claim expired.

        Raises:
            ItemNotFound: no such item.
            InvalidDecision: unknown action, or a correction the contract refuses (nothing is written).
            ClaimConflict: another reviewer's live claim, or the item is already decided.
        """
        reviewer = _name(reviewer)
        if action not in _DECISION_STATE:
            raise InvalidDecision(f"action {action!r} must be one of {', '.join(_DECISION_STATE)}")
        item = self.get(item_id)
        fixed = None
        if action == "correct":
            fixed = self.validate_correction(item.agent, correction, item.input)
        elif correction is not None:
            raise InvalidDecision(f"{action} takes no correction; use 'correct'")
        now = utcnow()
        state = _DECISION_STATE[action]
        with self._s() as s, s.begin():
            prior = s.execute(select(Item.state, Item.claimed_by).where(Item.id == item_id)).first()
            done = s.execute(update(Item).where(Item.id == item_id, self._free_for(reviewer, now))
                             .values(state=state, decided_by=reviewer, decided_at=now, correction=fixed,
                                     note=note if note is not None else Item.note, claimed_by=None,
                                     claim_expires_at=None, updated_at=now)
                             .execution_options(synchronize_session=False)).rowcount
            if done != 1:
                raise self._conflict(s, item_id, reviewer, action)
            detail: dict[str, Any] = {"state": [prior.state, state]}
            if fixed is not None:
                detail["output"] = [item.output, fixed]
            if note:
                detail["note"] = note
            s.add(AuditEvent(item_id=item_id, at=now, actor=reviewer, action=state, detail=detail))
        return self.get(item_id)

    @staticmethod
    def _free_for(reviewer: str, now: datetime):
        # Pending, or claimed by this reviewer, or claimed by anyone whose claim ran out.
        return or_(Item.state == "pending",
                   and_(Item.state == "claimed", or_(Item.claimed_by == reviewer, Item.claim_expires_at < now)))

    def _conflict(self, s: Session, item_id: int, reviewer: str, what: str) -> Exception:
        row = s.get(Item, item_id)
        if row is None:
            return ItemNotFound(item_id)
        if row.state in DECIDED:
            return ClaimConflict(f"item {item_id} was already {row.state} by {row.decided_by} at "
                                 f"{_fmt(row.decided_at)}; nothing was changed")
        if row.state == "claimed":
            return ClaimConflict(f"item {item_id} is claimed by {row.claimed_by} until {_fmt(row.claim_expires_at)}; "
                                 f"{reviewer} cannot {what} it before the claim is released or expires")
        return ClaimConflict(f"item {item_id} is {row.state}; {reviewer} holds no claim to {what}")

    @staticmethod
    def validate_correction(agent: str, correction: Any, inp: dict[str, Any] | None = None) -> dict[str, Any]:
        """The correction as the contract's JSON, or :class:`InvalidDecision` saying what is wrong with it."""
        import json

        from agent_graph import get_spec
        from agent_graph.errors import AgentGraphError

        if isinstance(correction, (str, bytes)):
            try:
                correction = json.loads(correction)
            except json.JSONDecodeError as exc:
                raise InvalidDecision(f"the correction is not JSON: {exc.msg} at line {exc.lineno} column "
                                      f"{exc.colno}") from None
        if not isinstance(correction, dict):
            raise InvalidDecision(f"the correction must be a JSON object, got {type(correction).__name__}")
        try:
            spec = get_spec(agent)
            parsed_in = spec.load_input(inp) if inp is not None else None
            out = spec.validate_output(correction, parsed_in)
        except AgentGraphError as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            raise InvalidDecision(f"the correction does not fit the {agent} contract: {reason}") from None
        return out.model_dump(mode="json")

    def hold(self, article_id: str, steps: Sequence[HeldStep]) -> None:
        """Hold ``article_id`` until the review items of ``steps`` are decided (the agents queue the items)."""
        now = utcnow()
        with self._s() as s, s.begin():
            s.add_all(Hold(article_id=article_id, step=h.step, agent=h.agent, reasons=list(h.reasons),
                           input_key=input_key(h.agent, h.input, h.output), created_at=now) for h in steps)

    def article(self, article_id: str, *, grace_s: float = HOLD_GRACE_S) -> dict[str, Any]:
        """Whether ``article_id`` is held, and each held step's item and state.

        A step is released when its item is decided; an item not queued ``grace_s`` after the hold (its
        agent's write failed) reads ``not_queued`` and holds nothing.
        """
        now = utcnow()
        with self._s() as s, s.begin():
            holds = list(s.execute(select(Hold).where(Hold.article_id == article_id).order_by(Hold.id)).scalars())
            steps = []
            for h in holds:
                item = s.execute(select(Item).where(Item.input_key == h.input_key, Item.agent == h.agent)
                                 .order_by(Item.id.desc()).limit(1)).scalar_one_or_none()
                state = item.state if item is not None else (
                    "not_queued" if (now - h.created_at).total_seconds() > grace_s else "queueing")
                steps.append({"step": h.step, "agent": h.agent, "reasons": h.reasons, "state": state,
                              "item_id": item.id if item is not None else None,
                              "held": state in ("pending", "claimed", "queueing")})
        return {"article_id": article_id, "held": any(st["held"] for st in steps), "steps": steps}

    # -- reading ----------------------------------------------------------------------------------

    def get(self, item_id: int, *, audit: bool = False) -> Item:
        """One item (with its audit rows loaded when ``audit``)."""
        with self._s() as s, s.begin():
            q = select(Item).where(Item.id == item_id)
            if audit:
                q = q.options(selectinload(Item.audit))
            row = s.execute(q).scalar_one_or_none()
        if row is None:
            raise ItemNotFound(item_id)
        return row

    def list(self, *, agent: str | None = None, reason: str | None = None, states: Iterable[str] | None = None,
             older_than_s: float | None = None, newer_than_s: float | None = None, limit: int = 200,
             offset: int = 0) -> list[Item]:
        """Items, oldest first, filtered by agent, reason, state and age (seconds since queued)."""
        q = select(Item)
        if agent:
            q = q.where(Item.agent == agent)
        if reason:
            q = q.where(Item.reason_tags.like(f"%,{reason},%"))
        if states:
            q = q.where(Item.state.in_(list(states)))
        now = utcnow()
        if older_than_s is not None:
            q = q.where(Item.created_at <= now - timedelta(seconds=older_than_s))
        if newer_than_s is not None:
            q = q.where(Item.created_at >= now - timedelta(seconds=newer_than_s))
        with self._s() as s, s.begin():
            return list(s.execute(q.order_by(Item.created_at, Item.id).limit(limit).offset(offset)).scalars())

    def audit(self, item_id: int | None = None) -> list[AuditEvent]:
        """Audit rows, in order (of one item, or all)."""
        q = select(AuditEvent).order_by(AuditEvent.id)
        if item_id is not None:
            q = q.where(AuditEvent.item_id == item_id)
        with self._s() as s, s.begin():
            return list(s.execute(q).scalars())

    def decided(self, agent: str, since: datetime | None = None) -> list[Item]:
        """The agent's decided items (approved, corrected, rejected), in decision order."""
        q = select(Item).where(Item.agent == agent, Item.state.in_(DECIDED))
        if since is not None:
            q = q.where(Item.decided_at >= since)
        with self._s() as s, s.begin():
            return list(s.execute(q.order_by(Item.decided_at, Item.id)).scalars())

    def queue_stats(self) -> dict[str, dict[str, float]]:
        """Per agent: ``pending`` (pending + claimed items) and ``oldest_age_s`` (of those, the oldest)."""
        now = utcnow()
        q = (select(Item.agent, func.count(), func.min(Item.created_at))
             .where(Item.state.in_(("pending", "claimed"))).group_by(Item.agent))
        with self._s() as s, s.begin():
            rows = s.execute(q).all()
        return {agent: {"pending": int(n), "oldest_age_s": max((now - oldest).total_seconds(), 0.0) if oldest else 0.0}
                for agent, n, oldest in rows}

    def counts(self) -> dict[str, int]:
        """Items per state."""
        with self._s() as s, s.begin():
            return {state: int(n) for state, n in s.execute(select(Item.state, func.count()).group_by(Item.state))}
