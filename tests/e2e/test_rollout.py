"""Rollouts on the running cluster: the canary gate in both directions under load, with the in-cluster
controller deciding, and a multi-adapter agent swapping one task adapter without disturbing the other."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent_graph import get_spec
from tests.store_helpers import corrupt_weights, publish_copy

pytestmark = [pytest.mark.ray, pytest.mark.slow]

AGENT = "chief_editor"
NS = "chief_editor/mistral_chief_editor_v1"


class Load:
    """Callers posting the agent's example in a loop until stopped; every reply is kept."""

    def __init__(self, cluster, agent: str, body: dict, callers: int = 3):
        self.cluster, self.agent, self.body = cluster, agent, body
        self.replies: list[tuple[float, int, dict]] = []  # (monotonic time, status, body)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(callers)]

    def _run(self) -> None:
        with self.cluster.client() as client:
            while not self._stop.is_set():
                reply = client.post(f"/agents/{self.agent}", json=self.body)
                self.replies.append((time.monotonic(), reply.status_code, reply.json()))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)


def _justnews(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("justnews")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _wait_for_end(cluster, candidate: str, timeout_s: float = 180) -> dict:
    """Poll ``GET /canary`` (the controller's own view) until the canary of ``candidate`` has ended."""
    deadline = time.monotonic() + timeout_s
    entry: dict = {}
    with cluster.client(timeout=30) as client:
        while time.monotonic() < deadline:
            reply = client.get("/canary")
            assert reply.status_code == 200, reply.text
            found = [c for c in reply.json()["canaries"] if c["state"]["adapter"] == NS]
            entry = found[0] if found else {}
            if entry and entry["state"]["candidate"] == candidate and entry["state"]["status"] != "running":
                return entry
            time.sleep(0.5)
    pytest.fail(f"canary of {candidate} did not end in {timeout_s}s: {entry}")


def test_the_canary_gate_promotes_a_good_candidate_and_rolls_back_a_failing_one(cluster, tmp_path):
    from modelstore import ModelStore

    store = ModelStore(cluster.store_root)
    baseline = store.current_version(NS + "@current")
    publish_copy(store, f"{NS}@{baseline}", NS, "canary-good", tmp_path, promote=False)  # same weights and latency
    publish_copy(store, f"{NS}@{baseline}", NS, "canary-bad", tmp_path, promote=False)
    corrupt_weights(store, f"{NS}@canary-bad")  # corrupt on disk: every load of it fails
    body = get_spec(AGENT).example.model_dump(mode="json")
    # Short windows and few requests keep the test quick; the p95 bound is doubled because the two versions
    # share two busy CI cores with the load generator (the unit tests hold the default bounds to account).
    gate = ["--stages", "0.2,0.5", "--window", "3", "--min-requests", "5", "--p95-tolerance", "1.0",
            "--store-root", str(cluster.store_root)]

    with Load(cluster, AGENT, body) as load:
        started = _justnews("canary", "start", "--agent", AGENT, "--version", "canary-good", *gate)
        assert started.returncode == 0, started.stderr
        good = _wait_for_end(cluster, "canary-good")
        promoted_at = time.monotonic()
        time.sleep(1.5)  # agents re-read the state; then the failing candidate
        started = _justnews("canary", "start", "--agent", AGENT, "--version", "canary-bad", *gate)
        assert started.returncode == 0, started.stderr
        bad = _wait_for_end(cluster, "canary-bad")
        rolled_back_at = time.monotonic()
        time.sleep(4)

    assert good["state"]["status"] == "promoted", good
    assert [(d["action"], d["by"]) for d in good["decisions"]] == [("start", "operator"), ("widen", "gate"),
                                                                     ("promote", "gate")]
    assert all(d["figures"]["candidate"]["requests"] >= 5 for d in good["decisions"][1:])

    assert bad["state"]["status"] == "rolled_back", bad
    [*_, last] = bad["decisions"]
    assert (last["action"], last["by"]) == ("rollback", "gate") and "error rate" in last["reason"]
    assert last["figures"]["candidate"]["error_rate"] == 1.0 and last["figures"]["baseline"]["error_rate"] == 0.0
    assert store.current_version(NS + "@current") == "canary-good"  # the failing one never became current

    statuses = {status for _, status, _ in load.replies}
    assert statuses == {200}, statuses  # callers never saw the failing candidate: it fell back to the base
    before = [r["answered_by"] for t, _, r in load.replies if t < promoted_at]
    assert any(b.endswith("@canary-good") for b in before) and any(b.endswith(f"@{baseline}") for b in before)
    # once agents re-read the state (about a second, plus a request in flight): the baseline only
    after = [r for t, _, r in load.replies if t > rolled_back_at + 2.5]
    assert after and all(r["answered_by"].endswith("@canary-good") and not r["fallback"] for r in after)
    fell_back = [r for _, _, r in load.replies if r["fallback"]]
    assert fell_back and all("canary-bad" in r["failures"][0]["route"] or "canary-bad" in r["failures"][0]["reason"]
                             for r in fell_back)


def _scrape(url: str) -> list:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return []
    return [s for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("ray_justnews_")]


def test_prometheus_shows_every_rollout_and_pool_metric_with_its_labels(cluster, tmp_path):
    """Drive each event on the running cluster (or rely on the ones its set-up causes), then find every
    metric the alert rules and the dashboard use in the node's Prometheus endpoint, with its labels."""
    from modelstore import ModelStore

    from .conftest import BROKEN_ADAPTER

    store = ModelStore(cluster.store_root)
    ns = "journalist/mistral_journalist_v1"
    journalist = get_spec("journalist").example.model_dump(mode="json")
    with cluster.client() as client:
        assert client.post("/agents/journalist", json=journalist).json()["step"] == "adapter"
        publish_copy(store, f"{ns}@seed-1", ns, "swap-2", tmp_path)  # hot swap
        assert client.post("/agents/journalist", json=journalist).json()["answered_by"] == f"{ns}@swap-2"
        publish_copy(store, f"{ns}@seed-1", ns, "swap-3", tmp_path)
        corrupt_weights(store, f"{ns}@swap-3")  # a hot swap that fails
        failed = client.post("/agents/journalist", json=journalist).json()
        assert failed["fallback"] and "swap-3" in failed["failures"][0]["reason"]
        store.rollback(ns)  # back to swap-2 for whoever comes next
        summary = {"task": "summary", "articles": [{"title": "Bridge", "text": "The council approved a bridge."}]}
        assert client.post("/agents/synthesizer", json=summary).json()["fallback"]  # the broken adapter
        reasoning = client.post("/agents/reasoning", json=get_spec("reasoning").example.model_dump(mode="json"))
        assert reasoning.json()["step"] == "legacy"  # both model steps truncated: schema failures

    reasoning_version = store.current_version("reasoning/mistral_reasoning_v1@current")
    expected = [
        ("ray_justnews_llm_preload_failures_total", {"adapter": BROKEN_ADAPTER, "reason": "load_error"}),
        ("ray_justnews_llm_adapter_evictions_total", {}),
        ("ray_justnews_llm_adapter_swaps_total", {"adapter": ns, "version": "swap-2"}),
        ("ray_justnews_llm_hotswap_failures_total", {"adapter": ns, "version": "swap-3", "reason": "load_error"}),
        ("ray_justnews_llm_oom_events_total", {"where": "generate"}),
        ("ray_justnews_llm_pool_free_slots", {}),
        ("ray_justnews_llm_pool_rejections_total", {"reason": "oom"}),
        ("ray_justnews_llm_resident_adapters", {}),
        ("ray_justnews_llm_generated_tokens_total", {"adapter": f"{ns}@swap-2"}),
        ("ray_justnews_agent_fallbacks_total", {"agent": "synthesizer", "failed": "adapter"}),
        ("ray_justnews_agent_schema_failures_total", {"agent": "reasoning", "adapter": "reasoning/mistral_reasoning_v1",
                                                      "version": reasoning_version}),
        ("ray_justnews_agent_model_latency_s_bucket", {"agent": "journalist", "adapter": ns, "version": "swap-2",
                                                       "role": "none", "outcome": "ok"}),
        ("ray_justnews_agent_model_latency_s_count", {"agent": AGENT, "version": "canary-good", "role": "candidate"}),
        ("ray_justnews_canary_decisions_total", {"agent": AGENT, "adapter": NS, "action": "rollback", "by": "gate"}),
        ("ray_justnews_canary_decisions_total", {"agent": AGENT, "adapter": NS, "action": "promote", "by": "gate"}),
        ("ray_justnews_canary_fraction", {"adapter": NS, "candidate": "canary-bad"}),
    ]
    present: list = []

    def missing() -> list[str]:
        present[:] = _scrape(cluster.metrics_url)
        return [f"{name}{labels}" for name, labels in expected
                if not any(s.name == name and all(s.labels.get(k) == v for k, v in labels.items()) for s in present)]

    deadline = time.monotonic() + 90
    while missing() and time.monotonic() < deadline:
        time.sleep(2)
    assert missing() == [], f"missing from {cluster.metrics_url}; present: {sorted({s.name for s in present})}"
    # every series names the Serve deployment and replica it came from (Ray adds them)
    ours = [s for s in present if s.name.startswith(("ray_justnews_llm_", "ray_justnews_agent_"))]
    assert all(s.labels.get("deployment") and s.labels.get("replica") for s in ours)
    zero = [s for s in present if s.name == "ray_justnews_llm_oom_events_total"]
    assert zero and all(s.value == 0 for s in zero)  # declared at start, no OOM on this host
