"""The agent replica's side of a canary: split traffic between baseline and candidate, and record what each
version did. No Ray imports; ``deployments/agent/server.py`` calls it on every adapter step.

The split is deterministic per replica: of every ``1/f`` requests for the adapter, one goes to the candidate
(a running count, so a 5% stage sends exactly one in twenty), and the count restarts with each stage. The
replica re-reads the canary's state file when it changes (checked at most every ``refresh_s``), so a widen,
promote or rollback reaches every replica within about a second without a redeploy. Observations are
flushed to the replica's own stats file at most every ``flush_s`` (a small atomic write) and on shutdown.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modelstore.refs import AdapterRef, parse_ref

from .state import CanaryBook, CanaryState, RoleStats

__all__ = ["Choice", "CanaryRouter", "pin_and_choose"]

log = logging.getLogger(__name__)

_KEEP_STAGES = 16  # stage tallies a replica keeps in memory


@dataclass(frozen=True)
class Choice:
    """Where one adapter step goes.

    Attributes:
        model_id: the pinned ref to call.
        role: ``baseline`` or ``candidate`` when a canary of the adapter runs, else None.
        canary_id, stage: the canary and stage the observation belongs to.
        mirror_model_id: the candidate's ref, when the request goes to the baseline and the canary mirrors.
    """

    model_id: str
    role: str | None = None
    canary_id: str | None = None
    stage: int = 0
    adapter: str | None = None
    mirror_model_id: str | None = None


def pin_and_choose(model_id: str, pin: Callable[[str], str] | None, canary: "CanaryRouter | None") -> Choice:
    """Where one model call goes: ``@current`` pinned to its version now (``pin``), then the canary's split
    (``canary``; None: no canary applies). The one routing step of an agent's adapter step and of a chat
    completion, so both pin and split alike. ``""`` (the bare base) is neither pinned nor split.

    Raises:
        Exception: whatever ``pin`` raises (the ref is malformed or gone from the store).
    """
    if model_id and pin is not None:
        model_id = pin(model_id)
    return canary.choose(model_id) if canary is not None and model_id else Choice(model_id)


@dataclass
class _Cached:
    checked_at: float
    mtime_ns: int | None
    state: CanaryState | None


class CanaryRouter:
    """Per-replica canary routing and recording.

    Args:
        store_root: the ModelStore root (canaries live in its ``.canary`` directory).
        replica_id: names this replica's stats files.
        refresh_s: how often a canary's state file is checked for changes.
        flush_s: how often observations are written out.
    """

    def __init__(self, store_root: str | Path, replica_id: str, *, refresh_s: float = 1.0, flush_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.book = CanaryBook(store_root)
        self.replica_id = replica_id
        self.refresh_s = refresh_s
        self.flush_s = flush_s
        self.clock = clock
        self._cache: dict[str, _Cached] = {}
        self._counts: dict[tuple[str, int], int] = {}
        self._stats: dict[tuple[str, str, int], dict[str, RoleStats]] = {}  # (adapter, id, stage) -> role tallies
        self._dirty: set[tuple[str, str, int]] = set()
        self._flushed_at = clock()

    def state(self, adapter: str) -> CanaryState | None:
        """``adapter``'s canary as this replica sees it (re-read when its file changed)."""
        now = self.clock()
        cached = self._cache.get(adapter)
        if cached is not None and now - cached.checked_at < self.refresh_s:
            return cached.state
        path = self.book.state_path(adapter)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if cached is not None and cached.mtime_ns == mtime:
            cached.checked_at = now
            return cached.state
        state = None
        if mtime is not None:
            try:
                state = self.book.load(adapter)
            except (OSError, ValueError) as exc:  # keep routing as before rather than fail requests
                log.warning("canary state of %s unreadable (%s); keeping the last one", adapter, exc)
                state = cached.state if cached is not None else None
        self._cache[adapter] = _Cached(now, mtime, state)
        return state

    def choose(self, model_id: str) -> Choice:
        """Route one adapter step whose pinned ref is ``model_id``."""
        try:
            ref = parse_ref(model_id)
        except ValueError:
            return Choice(model_id)
        if not isinstance(ref, AdapterRef):
            return Choice(model_id)
        state = self.state(ref.namespace)
        if state is None or not state.running or ref.version != state.baseline:
            return Choice(model_id)
        key = (state.id, state.stage)
        n = self._counts.get(key, 0)
        self._counts[key] = n + 1
        f = state.fraction
        to_candidate = math.floor((n + 1) * f) > math.floor(n * f)
        role = "candidate" if to_candidate else "baseline"
        mirror = str(state.ref("candidate")) if state.mirror and not to_candidate else None
        return Choice(str(state.ref(role)), role, state.id, state.stage, state.adapter, mirror)

    def record(self, choice: Choice, seconds: float, outcome: str, *, role: str | None = None,
               mirrored: bool = False) -> None:
        """Count one step of ``choice`` (``outcome``: ok, error or schema); ``role`` overrides its role
        (a mirrored call records as the candidate)."""
        role = role or choice.role
        if role is None or choice.canary_id is None or choice.adapter is None:
            return
        key = (choice.adapter, choice.canary_id, choice.stage)
        tallies = self._stats.get(key)
        if tallies is None:
            state = self._cache[choice.adapter].state if choice.adapter in self._cache else None
            versions = {"baseline": state.baseline, "candidate": state.candidate} if state is not None else {}
            tallies = self._stats[key] = {r: RoleStats(version=versions.get(r, "?")) for r in ("baseline", "candidate")}
        tallies[role].add(seconds, outcome, mirrored)
        self._dirty.add(key)
        if self.clock() - self._flushed_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write every tally that changed since the last flush (each file holds the replica's whole tally
        of one stage, so a late observation of a finished stage is still counted)."""
        self._flushed_at = self.clock()
        for key in sorted(self._dirty):
            adapter, canary_id, stage = key
            try:
                self.book.write_replica_stats(adapter, canary_id, stage, self.replica_id, self._stats[key])
            except OSError as exc:
                log.warning("cannot write canary stats of %s: %s", adapter, exc)
                continue
            self._dirty.discard(key)
        while len(self._stats) > _KEEP_STAGES:  # oldest first: dicts keep insertion order
            oldest = next((k for k in self._stats if k not in self._dirty), None)
            if oldest is None:
                break
            del self._stats[oldest]
