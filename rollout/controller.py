"""The canary gate and the controller that acts on it. No Ray imports: the Serve deployment
(``deployments/canary/deployment.py``) ticks it in the cluster, ``justnews canary gate`` ticks it by hand.

The gate, as the seed's playbook has it: a stage lasts its observation window; then, if each version has
served at least ``min_requests`` in the stage and the candidate's p95 latency and error rate stay within the
bounds of the baseline's, the candidate's share widens to the next stage (default 5% -> 25%), and passing
the last stage promotes it (``current`` flips to it in the store: 100%). Out of bounds, it is rolled back:
traffic returns to the baseline, which never stopped being ``current``. Every decision is logged with the
figures it saw. All state is on disk (``rollout.state``), so a restarted controller carries on where the
last one stopped, and a manual ``rollback`` and the gate never race (one lock per adapter).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from modelstore.refs import AdapterRef, parse_ref

from .state import CanaryBook, CanaryBounds, CanaryDecision, CanaryError, CanaryState, VersionFigures

__all__ = ["Verdict", "judge", "CanaryController", "DEFAULT_STAGES", "DEFAULT_WINDOW_S"]

log = logging.getLogger(__name__)

DEFAULT_STAGES = (0.05, 0.25)
DEFAULT_WINDOW_S = 1800.0  # the playbook's 30 minutes


@dataclass(frozen=True)
class Verdict:
    """What the gate concludes about a stage: ``wait``, ``widen``, ``promote`` or ``rollback``."""

    action: str
    reason: str


def _fmt(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def judge(state: CanaryState, figs: dict[str, VersionFigures], now: float) -> Verdict:
    """The gate's verdict on ``state``'s current stage, given the stage's merged figures at ``now``."""
    left = state.stage_started_at + state.window_s - now
    if left > 0:
        return Verdict("wait", f"observing stage {state.stage} ({state.fraction:.0%}): {left:.0f} s left")
    base, cand = figs["baseline"], figs["candidate"]
    need = state.bounds.min_requests
    if base.requests < need or cand.requests < need:
        return Verdict("wait", f"waiting for traffic: baseline {base.requests}, candidate {cand.requests} "
                               f"requests of the {need} each version needs")
    b = state.bounds
    problems = []
    p95_limit = base.p95_s * (1 + b.p95_tolerance) + b.p95_slack_s
    if cand.p95_s > p95_limit:
        problems.append(f"p95 {_fmt(cand.p95_s)} > {_fmt(p95_limit)} (baseline {_fmt(base.p95_s)} "
                        f"+{b.p95_tolerance:.0%}{f' +{_fmt(b.p95_slack_s)}' if b.p95_slack_s else ''})")
    err_limit = base.error_rate + b.error_rate_tolerance
    if cand.error_rate > err_limit:
        problems.append(f"error rate {cand.error_rate:.1%} > {err_limit:.1%} (baseline {base.error_rate:.1%} "
                        f"+{b.error_rate_tolerance:.0%}; {cand.schema_failures} schema failures)")
    if problems:
        return Verdict("rollback", "; ".join(problems))
    within = (f"p95 {_fmt(cand.p95_s)} vs {_fmt(base.p95_s)}, error rate {cand.error_rate:.1%} vs "
              f"{base.error_rate:.1%} over {cand.requests}/{base.requests} requests")
    if state.stage + 1 < len(state.stages):
        return Verdict("widen", f"within bounds ({within}); widening to {state.stages[state.stage + 1]:.0%}")
    return Verdict("promote", f"within bounds ({within}); promoting to 100%")


class CanaryController:
    """Starts, judges, advances and ends canaries of a ModelStore's adapters.

    Args:
        store: the :class:`~modelstore.ModelStore`.
        clock: seconds since the epoch (tests pass a fake one).
        on_decision: called with each decision after it is logged (the Serve deployment exports metrics).
    """

    def __init__(self, store: Any, *, clock: Callable[[], float] = time.time,
                 on_decision: Callable[[CanaryDecision], None] | None = None):
        self.store = store
        self.book = CanaryBook(store.root)
        self.clock = clock
        self.on_decision = on_decision

    # -- operator commands --------------------------------------------------------------------------

    def start(self, adapter: str, candidate: str, *, stages: tuple[float, ...] | list[float] = DEFAULT_STAGES,
              window_s: float = DEFAULT_WINDOW_S, mirror: bool = False, bounds: CanaryBounds | None = None,
              by: str = "operator") -> CanaryState:
        """Start a canary of ``candidate`` (a version of the ``agent/name`` adapter) against ``current``.

        Raises:
            CanaryError: a canary of that adapter is running, the candidate is current, or no current.
            NotFoundError: the store has no such adapter or version.
        """
        ref = parse_ref(f"{adapter}@{candidate}")
        if not isinstance(ref, AdapterRef):
            raise CanaryError(f"{adapter!r} is not an adapter namespace (agent/name)")
        self.store.resolve(ref)  # NotFoundError names what is missing
        with self.book.lock(ref.namespace):
            running = self.book.load(ref.namespace)
            if running is not None and running.running:
                raise CanaryError(f"a canary of {ref.namespace} is running ({running.candidate} at "
                                  f"{running.fraction:.0%}, id {running.id}); roll it back first")
            baseline = self.store.current_version(ref)
            if baseline is None:
                raise CanaryError(f"{ref.namespace} has no current version to compare the candidate with; "
                                  f"promote one first")
            now = self.clock()
            try:
                state = CanaryState(agent=ref.agent, adapter=ref.namespace, baseline=baseline, candidate=ref.version,
                                    stages=list(stages), window_s=window_s, mirror=mirror,
                                    bounds=bounds or CanaryBounds(), stage_started_at=now, started_at=now)
            except ValueError as exc:
                raise CanaryError(f"canary of {ref}: {_validation_text(exc)}") from None
            self.book.save(state)
            self._decide(state, "start", by, f"canary of {ref.version} against {baseline}"
                         f"{' (mirroring the rest)' if mirror else ''}", {})
        return state

    def rollback(self, adapter: str, reason: str = "rolled back by hand", by: str = "operator") -> CanaryState:
        """End ``adapter``'s running canary: all traffic back to the baseline (still ``current``).

        Raises:
            CanaryError: no canary of that adapter is running.
        """
        with self.book.lock(adapter):
            state = self._running(adapter)
            figs = self.book.stage_figures(state)
            return self._end(state, "rolled_back", "rollback", by, reason, figs)

    def promote(self, adapter: str, reason: str = "promoted by hand", by: str = "operator") -> CanaryState:
        """Promote ``adapter``'s running canary's candidate now (``current`` flips to it)."""
        with self.book.lock(adapter):
            state = self._running(adapter)
            self.store.promote(state.ref("candidate"))
            return self._end(state, "promoted", "promote", by, reason, self.book.stage_figures(state))

    # -- the gate -----------------------------------------------------------------------------------

    def tick(self) -> list[CanaryDecision]:
        """Judge every running canary once and act; returns the decisions taken (waits are not decisions)."""
        decisions = []
        for found in self.book.running():
            try:
                decision = self._tick_one(found.adapter)
            except Exception:  # noqa: BLE001 - one broken canary must not stop the others' gates
                log.exception("canary gate of %s failed; will retry", found.adapter)
                continue
            if decision is not None:
                decisions.append(decision)
        return decisions

    def _tick_one(self, adapter: str) -> CanaryDecision | None:
        with self.book.lock(adapter):
            state = self.book.load(adapter)
            if state is None or not state.running:  # ended by a command since the scan
                return None
            figs = self.book.stage_figures(state)
            current = self.store.current_version(state.ref("baseline"))
            if current == state.candidate:  # promoted, then the controller died before recording it
                return self._last(self._end(state, "promoted", "promote", "gate",
                                            "current already points at the candidate", figs))
            if current != state.baseline:
                return self._last(self._end(state, "aborted", "abort", "gate",
                                            f"current moved to {current} outside the canary", figs))
            verdict = judge(state, figs, self.clock())
            if verdict.action == "wait":
                return None
            if verdict.action == "widen":
                state.stage += 1
                state.stage_started_at = self.clock()
                self.book.save(state)
                return self._decide(state, "widen", "gate", verdict.reason, figs)
            if verdict.action == "promote":
                self.store.promote(state.ref("candidate"))
                return self._last(self._end(state, "promoted", "promote", "gate", verdict.reason, figs))
            return self._last(self._end(state, "rolled_back", "rollback", "gate", verdict.reason, figs))

    def status(self, adapter: str | None = None) -> list[dict[str, Any]]:
        """Every canary (or ``adapter``'s): its state, the current stage's figures side by side, the gate's
        view, and its decisions."""
        states = [s for s in ([self.book.load(adapter)] if adapter else list(self.book.states())) if s is not None]
        out = []
        for state in states:
            figs = self.book.stage_figures(state)
            gate = judge(state, figs, self.clock()) if state.running else None
            out.append({"state": state.model_dump(mode="json"), "fraction": state.fraction,
                        "figures": {role: f.model_dump() for role, f in figs.items()},
                        "gate": None if gate is None else {"action": gate.action, "reason": gate.reason},
                        "decisions": [d.model_dump(mode="json") for d in self.book.decisions(state.adapter, state.id)]})
        return out

    # -- helpers ------------------------------------------------------------------------------------

    def _running(self, adapter: str) -> CanaryState:
        state = self.book.load(adapter)
        if state is None or not state.running:
            raise CanaryError(f"no canary of {adapter} is running"
                              + ("" if state is None else f" (the last one was {state.status.replace('_', ' ')})"))
        return state

    def _end(self, state: CanaryState, status: str, action: str, by: str, reason: str,
             figs: dict[str, VersionFigures]) -> CanaryState:
        state.status = status  # type: ignore[assignment]
        state.ended_at = self.clock()
        state.reason = reason
        self.book.save(state)
        self._decide(state, action, by, reason, figs)
        return state

    def _last(self, state: CanaryState) -> CanaryDecision:
        return self.book.decisions(state.adapter, state.id)[-1]

    def _decide(self, state: CanaryState, action: str, by: str, reason: str,
                figs: dict[str, VersionFigures]) -> CanaryDecision:
        decision = CanaryDecision(at=self.clock(), canary_id=state.id, adapter=state.adapter, action=action,
                                  by=by, stage=state.stage, fraction=state.fraction, reason=reason,
                                  figures={role: f.model_dump() for role, f in figs.items()})
        self.book.log(decision)
        log.warning("canary %s %s (%s, by %s): %s | %s", state.adapter, action, state.candidate, by, reason,
                    {role: f.model_dump(exclude={"version"}) for role, f in figs.items()})
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision


def _validation_text(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(e.get("msg", "invalid").removeprefix("Value error, ") for e in errors())
    return str(exc)

