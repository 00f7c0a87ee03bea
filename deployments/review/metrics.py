"""``justnews_hitl_*`` metrics and the agents' review hook. Ray Serve's metrics API, imported lazily.

Agent replicas write ``queued`` / ``queue_failures`` (their QueueWriter's outcomes); the ingress replica that
serves ``/hitl`` writes ``decisions`` and polls the database for ``pending`` and ``oldest_pending_age_s`` per
agent (one replica's view of one shared database: aggregate with ``max``, not ``sum``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from hitl import NewItem, QueueWriter, ReviewRouter, ReviewStore

__all__ = ["HitlMetrics", "ReviewHook", "review_hook", "GaugePoller"]

log = logging.getLogger(__name__)


class HitlMetrics:
    """The review queue's series (tags: ``agent``, plus ``reason`` or ``decision``)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.queued = metrics.Counter(
            "justnews_hitl_queued", description="Answers written to the review queue, by the first reason.",
            tag_keys=("agent", "reason"))
        self.queue_failures = metrics.Counter(
            "justnews_hitl_queue_failures",
            description="Answers the rules sent to review that were not queued (database unavailable or locked, "
                        "writer overflow); the answer itself was served.", tag_keys=("agent", "reason"))
        self.decisions = metrics.Counter(
            "justnews_hitl_decisions", description="Reviewers' decisions (approved, corrected, rejected).",
            tag_keys=("agent", "decision"))
        self.pending = metrics.Gauge(
            "justnews_hitl_pending", description="Items pending or claimed, per agent.", tag_keys=("agent",))
        self.oldest_pending_age = metrics.Gauge(
            "justnews_hitl_oldest_pending_age_s", description="Seconds the oldest undecided item has waited, per agent.",
            tag_keys=("agent",))

    def on_queued(self, item: NewItem) -> None:
        self.queued.inc(tags={"agent": item.agent, "reason": item.reasons[0]})

    def on_failure(self, agent: str, reason: str, n: int) -> None:
        self.queue_failures.inc(n, tags={"agent": agent, "reason": reason})

    def decided(self, agent: str, decision: str) -> None:
        self.decisions.inc(tags={"agent": agent, "decision": decision})


class ReviewHook:
    """An agent replica's rules + background writer: ``offer(input, response)`` never blocks nor raises."""

    def __init__(self, router: ReviewRouter):
        self.router = router

    def offer(self, inp: dict[str, Any], response: dict[str, Any]) -> list[str]:
        return self.router.offer(inp, response)

    def stats(self) -> dict[str, Any]:
        w = self.router.writer
        return {"offered": self.router.offered, "routed": self.router.routed, "written": w.written,
                "dropped": dict(w.dropped)}

    def close(self) -> None:
        self.router.writer.close(timeout=5)


def review_hook(agent: str, entry: Any, *, store_root: str | None, url: str | None = None,
                metrics: HitlMetrics | None = None, busy_timeout_s: float = 5.0) -> ReviewHook | None:
    """The hook of ``agent`` (None when its map entry has no review rules). The database is opened lazily on
    the writer thread, so a replica starts and answers while it is down."""
    rules = getattr(entry, "review", None)
    if rules is None:
        return None
    writer = QueueWriter(lambda: ReviewStore(url, store_root=store_root, busy_timeout_s=busy_timeout_s),
                         on_queued=metrics.on_queued if metrics else None,
                         on_failure=metrics.on_failure if metrics else None)
    return ReviewHook(ReviewRouter(agent, rules, writer))


class GaugePoller:
    """Every ``interval_s``, read queue depth and oldest age per agent into the gauges (a daemon thread)."""

    def __init__(self, store: Callable[[], ReviewStore], metrics: HitlMetrics, agents: list[str],
                 interval_s: float = 15.0):
        self._store, self._metrics, self._agents, self._interval = store, metrics, agents, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hitl-gauges", daemon=True)
        self._thread.start()

    def poll(self) -> None:
        stats = self._store().queue_stats()
        for agent in sorted(set(self._agents) | set(stats)):
            s = stats.get(agent, {"pending": 0, "oldest_age_s": 0.0})
            self._metrics.pending.set(s["pending"], tags={"agent": agent})
            self._metrics.oldest_pending_age.set(s["oldest_age_s"], tags={"agent": agent})

    def _run(self) -> None:
        while True:
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the next poll tries again
                log.warning("hitl: could not read the queue depth: %s", str(exc).splitlines()[0][:200])
            if self._stop.wait(self._interval):
                return

    def stop(self) -> None:
        self._stop.set()


def ingress_service(store_root: str | None, agents: list[str], *, url: str | None = None,
                    poll_s: float = 15.0):
    """The ingress replica's :class:`~deployments.review.routes.HitlService`: decisions counted, queue gauges polled.

    Raises:
        ReviewerConfigError: ``$JUSTNEWS_HITL_REVIEWERS`` is malformed (the ingress refuses to start).
    """
    from deployments.review.routes import HitlService

    metrics = HitlMetrics()
    svc = HitlService(lambda: ReviewStore(url, store_root=store_root), on_decision=metrics.decided)
    svc.poller = GaugePoller(lambda: svc.store, metrics, agents, poll_s)  # type: ignore[attr-defined]
    return svc
