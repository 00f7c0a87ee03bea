"""The alert rules and the Grafana dashboard, checked the way promtool would and then some: the rule
file's structure, every PromQL expression parsed, and every series and label they name matched against
the metrics the code actually exports (a renamed metric or label breaks this test, not the pager)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

promql = pytest.importorskip("promql_parser")

MONITORING = Path(__file__).resolve().parents[3] / "cluster" / "monitoring"
RAY_OWN = {"ray_serve_num_multiplexed_models": {"deployment", "replica", "application"}}
SEVERITIES = {"info", "warning", "critical"}
SERVE_TAGS = {"deployment", "replica", "application"}  # added by ray.serve.metrics inside a replica


def _catalogue() -> dict[str, set[str]]:
    """Prometheus series name -> labels, from the metric objects the deployments create."""
    from ray.serve import metrics as serve_metrics
    from ray.util import metrics as ray_metrics

    from deployments.agent.server import AgentMetrics
    from deployments.canary.deployment import _CanaryMetrics
    from deployments.review.metrics import HitlMetrics
    from deployments.base_llm.metrics import LLMMetrics
    from deployments.base_llm.replica_budget import memory_gauges

    objects = [*vars(LLMMetrics()).values(), *vars(AgentMetrics()).values(), *vars(_CanaryMetrics()).values(),
               *vars(HitlMetrics()).values(), *memory_gauges(serve_metrics)]
    out: dict[str, set[str]] = dict(RAY_OWN)
    for m in objects:
        if not isinstance(m, ray_metrics.Metric):
            continue
        name, labels = f"ray_{m._name}", set(m._tag_keys) | SERVE_TAGS
        if isinstance(m, ray_metrics.Counter):
            out[f"{name}_total"] = labels
        elif isinstance(m, ray_metrics.Histogram):
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_count"] = out[f"{name}_sum"] = labels
        else:
            out[name] = labels
    return out


def _selectors(node, found: list) -> None:
    """Collect (metric name, matcher labels) of every vector selector under ``node``."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        found.append((node.name, {m.name for m in node.matchers.matchers}))
    elif kind == "MatrixSelector":
        _selectors(node.vector_selector, found)
    elif kind == "Call":
        for arg in node.args:
            _selectors(arg, found)
    elif kind == "AggregateExpr":
        if node.modifier is not None:
            found.append((None, set(node.modifier.labels)))  # by/without labels must exist on the input
        _selectors(node.expr, found)
    elif kind == "BinaryExpr":
        _selectors(node.lhs, found)
        _selectors(node.rhs, found)
    elif kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
        _selectors(node.expr, found)


def _check_expr(expr: str, catalogue: dict[str, set[str]]) -> list[str]:
    """Problems with ``expr``: unknown series, labels no series of it carries."""
    found: list = []
    _selectors(promql.parse(expr), found)  # raises ValueError naming the syntax error
    series = [(n, labels) for n, labels in found if n is not None]
    problems = [f"unknown series {n}" for n, _ in series if n not in catalogue]
    known = set().union(*(catalogue.get(n, set()) for n, _ in series)) if series else set()
    for name, labels in found:
        extra = labels - (catalogue.get(name, set()) if name else known) - {"__name__"}
        if extra:
            problems.append(f"labels {sorted(extra)} not on {name or 'the aggregated series'}")
    return problems


@pytest.fixture(scope="module")
def catalogue():
    return _catalogue()


def _rules() -> list[dict]:
    data = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    names = [g["name"] for g in data["groups"]]
    assert len(names) == len(set(names)), names
    return [r for g in data["groups"] for r in g["rules"]]


def test_rule_file_has_the_structure_prometheus_loads():
    rules = _rules()
    alerts = [r["alert"] for r in rules]
    assert len(alerts) == len(set(alerts)) and all(re.fullmatch(r"[A-Z][A-Za-z0-9]+", a) for a in alerts)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert "for" not in rule or re.fullmatch(r"\d+[smhdwy]", rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in SEVERITIES
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alerts_cover_what_operators_are_paged_for():
    exprs = " ".join(r["expr"] for r in _rules())
    for series in ("oom_events", "preload_failures", "agent_latency_s_bucket", "hotswap_failures",
                   "pool_free_slots", "pool_rejections", "canary_decisions", "memory_peak_mb",
                   "hitl_oldest_pending_age_s", "hitl_queue_failures"):
        assert series in exprs, series


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_every_alert_expression_parses_and_names_exported_series_and_labels(rule, catalogue):
    assert _check_expr(rule["expr"], catalogue) == []
    templated = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
    found: list = []
    _selectors(promql.parse(rule["expr"]), found)
    grouped = [labels for name, labels in found if name is None]
    available = grouped[0] if grouped else set().union(*(catalogue[n] for n, _ in found if n))
    assert templated <= available, f"annotations use {sorted(templated - available)}, not in the alert's labels"


def test_the_checker_catches_typos(catalogue):
    assert _check_expr("rate(ray_justnews_llm_oom_event_total[5m])", catalogue) == [
        "unknown series ray_justnews_llm_oom_event_total"]
    assert _check_expr("sum by (agnet) (ray_justnews_agent_requests_total)", catalogue)
    with pytest.raises(ValueError):
        promql.parse("sum by (agent (rate(ray_justnews_agent_requests_total[5m]))")


def _panels() -> list[dict]:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"]
    return dash["panels"]


def test_dashboard_panels_query_exported_series(catalogue):
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    queries = [t["expr"] for p in panels if p["type"] != "row" for t in p["targets"]]
    assert queries
    for expr in queries:
        assert _check_expr(expr, catalogue) == [], expr
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("latency", "resident", "evictions", "tokens per second", "canary", "review queue depth",
                  "oldest pending review", "review decisions per minute"):
        assert topic in titles, topic
