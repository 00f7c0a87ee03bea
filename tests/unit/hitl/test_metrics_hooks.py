"""The deployments' side of the metrics: the gauge poller reads depth and oldest age per agent from the real
queue, and the agents' hook builds nothing for an agent without review rules."""

from __future__ import annotations

from datetime import timedelta

from agent_graph import load_agent_map
from deployments.review.metrics import GaugePoller, review_hook
from hitl import utcnow

from .conftest import example_item


class _Gauge:
    """Records what the poller sets (Ray's gauges cannot be read back outside a cluster)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.values[tags["agent"]] = value


class _Sink:
    def __init__(self) -> None:
        self.pending, self.oldest_pending_age = _Gauge(), _Gauge()


def test_gauge_poller_reports_depth_and_oldest_age_and_zero_for_idle_agents(hitl_store):
    hitl_store.enqueue_many([example_item(created_at=utcnow() - timedelta(minutes=10)), example_item(),
                             example_item("fact_checker", ("unverified",))])
    done = hitl_store.enqueue(example_item("chief_editor", ("sampled",)))
    hitl_store.decide(done, "alice", "approve")
    sink = _Sink()
    poller = GaugePoller(lambda: hitl_store, sink, ["critic", "fact_checker", "chief_editor", "analyst"],
                         interval_s=3600)
    poller.poll()
    poller.stop()
    assert sink.pending.values == {"critic": 2, "fact_checker": 1, "chief_editor": 0, "analyst": 0}
    assert 590 <= sink.oldest_pending_age.values["critic"] < 700
    assert sink.oldest_pending_age.values["analyst"] == 0.0


def test_agents_without_rules_get_no_hook():
    agent_map = load_agent_map()
    assert review_hook("scout", agent_map.entry("scout"), store_root=None, url="sqlite://") is None
