"""Fixtures of the review-queue tests: a real SQLite file per test, migrated by the real Alembic env."""

from __future__ import annotations

import pytest

from agent_graph import get_spec


@pytest.fixture
def hitl_store(tmp_path, monkeypatch):
    from hitl import ReviewStore

    monkeypatch.delenv("JUSTNEWS_HITL_DB", raising=False)
    store = ReviewStore(store_root=str(tmp_path / "store"))
    yield store
    store.close()


def example_item(agent: str = "critic", reasons=("blocking_verdict",), **kw):
    """A NewItem of ``agent`` with its contract's example input and a valid answer."""
    from hitl import NewItem

    spec = get_spec(agent)
    answers = {
        "critic": {"verdict": "reject", "issues": [{"kind": "accuracy", "severity": "high", "note": "wrong cost"}]},
        "fact_checker": {"verdicts": [{"verdict": "supported", "evidence": [0], "confidence": 0.9},
                                      {"verdict": "unverified", "evidence": [], "confidence": 0.3}]},
        "chief_editor": {"decision": "revise", "priority": "normal", "notes": ["attribute 'wasteful'"]},
    }
    return NewItem(agent=agent, input=spec.example.model_dump(mode="json"), output=answers[agent],
                   reasons=tuple(reasons), answered_by=f"{agent}/mistral_{agent}_v1@trained-1", step="adapter", **kw)
