"""``justnews hitl export``: decided items as the trainer's JSONL, read back by training.data.read_records."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from agent_graph import get_spec
from hitl import export_training, parse_since, utcnow
from hitl.cli import main as hitl_main
from training.data import read_records

from .conftest import example_item


def _decide_three(store):
    a, b, c = store.enqueue_many([example_item(), example_item(), example_item()])
    store.decide(a, "alice", "approve")
    fixed = {"verdict": "revise", "issues": [{"kind": "sourcing", "severity": "medium", "note": "cite the budget"}]}
    store.decide(b, "bob", "correct", correction=fixed)
    store.decide(c, "alice", "reject")
    store.enqueue(example_item())  # still pending: not exported
    return a, b, fixed


def test_export_writes_approved_answers_and_corrections_in_the_trainer_format(hitl_store, tmp_path):
    a, b, fixed = _decide_three(hitl_store)
    out = tmp_path / "critic.jsonl"
    res = export_training(hitl_store, "critic", out)
    assert (res.written, res.approved, res.corrected, res.rejected_skipped) == (2, 1, 1, 1)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [set(r) for r in lines] == [{"input", "output", "meta"}] * 2
    assert lines[0]["output"] == example_item().output and lines[0]["meta"]["decision"] == "approved"
    assert lines[1]["output"] == fixed and lines[1]["meta"] == {**lines[1]["meta"], "hitl_id": b, "decided_by": "bob"}
    records = read_records(get_spec("critic"), [out])  # the trainer reads it as it is
    assert [r.output.model_dump(mode="json") for r in records] == [example_item().output, fixed]


def test_since_filters_by_decision_time(hitl_store, tmp_path):
    _decide_three(hitl_store)
    assert export_training(hitl_store, "critic", tmp_path / "x.jsonl", utcnow() + timedelta(seconds=5)).written == 0
    assert export_training(hitl_store, "critic", tmp_path / "y.jsonl", parse_since("1h")).written == 2
    assert export_training(hitl_store, "fact_checker", tmp_path / "z.jsonl").written == 0


@pytest.mark.parametrize("text, delta_s", [("90m", 5400), ("24h", 86400), ("7d", 604800), ("30s", 30)])
def test_parse_since_spans(text, delta_s):
    assert abs((utcnow() - parse_since(text)).total_seconds() - delta_s) < 5


def test_parse_since_iso_and_errors():
    assert parse_since("2026-11-30T10:00:00+01:00").isoformat() == "2026-11-30T09:00:00"
    assert parse_since("2026-11-30").isoformat() == "2026-11-30T00:00:00"
    assert parse_since(None) is None
    with pytest.raises(ValueError, match="ISO time"):
        parse_since("yesterday")


def test_cli_migrate_and_export(hitl_store, tmp_path, capsys):
    _decide_three(hitl_store)
    db = ["--db", hitl_store.url]
    assert hitl_main([*db, "migrate"]) == 0
    assert "schema at revision 0002_article_holds" in capsys.readouterr().out
    out = tmp_path / "export.jsonl"
    assert hitl_main([*db, "export", "--agent", "critic", "--since", "1d", "--out", str(out)]) == 0
    assert "wrote 2 records (1 approved, 1 corrected)" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 2
    assert hitl_main([*db, "export", "--agent", "nobody"]) == 2
    assert "unknown agent" in capsys.readouterr().err.lower()
    assert hitl_main([*db, "stats"]) == 0
    assert json.loads(capsys.readouterr().out)["queue"]["critic"]["pending"] == 1


def test_cli_migrate_creates_a_fresh_database(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/fresh/hitl.db"
    assert hitl_main(["--db", url, "migrate"]) == 0
    assert (tmp_path / "fresh" / "hitl.db").is_file()
