"""ReviewStore on a real SQLite file: states, claims and their expiry, audit rows, contract-checked corrections."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import inspect

from hitl import ClaimConflict, InvalidDecision, ItemNotFound, ReviewStore
from hitl.db import current_revision, head_revision, make_engine, resolve_url

from .conftest import example_item


def test_default_database_is_a_sqlite_file_beside_the_store_and_migrated_by_alembic(hitl_store, tmp_path):
    hitl_store.enqueue(example_item())
    path = tmp_path / "store" / ".hitl" / "hitl.db"
    assert hitl_store.url == f"sqlite:///{path}" and path.is_file()
    assert current_revision(hitl_store.engine) == head_revision() == "0002_article_holds"
    tables = set(inspect(hitl_store.engine).get_table_names())
    assert {"hitl_items", "hitl_audit", "alembic_version"} <= tables
    assert hitl_store.migrate() == head_revision()  # idempotent


def test_url_comes_from_the_environment_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("JUSTNEWS_HITL_DB", f"sqlite:///{tmp_path}/elsewhere.db")
    assert resolve_url(None, "/nowhere") == f"sqlite:///{tmp_path}/elsewhere.db"
    assert resolve_url("sqlite:///x.db", "/nowhere") == "sqlite:///x.db"


def test_state_machine_and_audit_trail(hitl_store):
    a, b, c = hitl_store.enqueue_many([example_item(), example_item(), example_item("fact_checker", ("unverified",))])
    assert [i.state for i in hitl_store.list()] == ["pending"] * 3
    hitl_store.claim(a, "alice")
    assert hitl_store.decide(a, "alice", "approve").state == "approved"
    assert hitl_store.decide(b, "bob", "reject", note="off topic").state == "rejected"  # no claim needed when free
    fixed = {"verdicts": [{"verdict": "supported", "evidence": [0], "confidence": 0.9},
                          {"verdict": "refuted", "evidence": [1], "confidence": 0.8}]}
    item = hitl_store.decide(c, "alice", "correct", correction=json.dumps(fixed))
    assert (item.state, item.correction, item.decided_by) == ("corrected", fixed, "alice")
    assert hitl_store.counts() == {"approved": 1, "rejected": 1, "corrected": 1}
    trail = [(e.item_id, e.actor, e.action) for e in hitl_store.audit()]
    assert trail == [(a, "agent", "queued"), (b, "agent", "queued"), (c, "agent", "queued"),
                     (a, "alice", "claimed"), (a, "alice", "approved"), (b, "bob", "rejected"), (c, "alice", "corrected")]
    corrected = hitl_store.audit(c)[-1]
    assert corrected.detail["state"] == ["pending", "corrected"]
    assert corrected.detail["output"] == [example_item("fact_checker").output, fixed]
    assert hitl_store.audit(b)[-1].detail["note"] == "off topic"
    assert [e.action for e in hitl_store.get(c, audit=True).audit] == ["queued", "corrected"]


def test_second_reviewer_gets_a_clear_error_and_nothing_changes(hitl_store):
    i = hitl_store.enqueue(example_item())
    hitl_store.claim(i, "alice")
    for attempt in (lambda: hitl_store.claim(i, "bob"), lambda: hitl_store.decide(i, "bob", "approve")):
        with pytest.raises(ClaimConflict, match=r"claimed by alice until .* UTC; bob cannot"):
            attempt()
    hitl_store.decide(i, "alice", "approve")
    with pytest.raises(ClaimConflict, match="already approved by alice"):
        hitl_store.decide(i, "bob", "reject")
    with pytest.raises(ClaimConflict, match="already approved"):
        hitl_store.claim(i, "alice")
    assert [e.action for e in hitl_store.audit(i)] == ["queued", "claimed", "approved"]


def test_an_expired_claim_is_free_for_another_reviewer(hitl_store):
    i = hitl_store.enqueue(example_item())
    hitl_store.claim(i, "alice", claim_s=0.05)
    time.sleep(0.1)
    assert hitl_store.claim(i, "bob").claimed_by == "bob"
    assert hitl_store.audit(i)[-1].detail["expired_claim_of"] == "alice"
    with pytest.raises(ClaimConflict, match="claimed by bob"):
        hitl_store.decide(i, "alice", "approve")
    assert hitl_store.decide(i, "bob", "approve").decided_by == "bob"


def test_release_returns_the_item_to_the_queue(hitl_store):
    i = hitl_store.enqueue(example_item())
    hitl_store.claim(i, "alice")
    with pytest.raises(ClaimConflict):
        hitl_store.release(i, "bob")
    assert hitl_store.release(i, "alice").state == "pending"
    assert hitl_store.claim(i, "bob").claimed_by == "bob"


@pytest.mark.parametrize("correction, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ({"verdict": "maybe", "issues": []}, "verdict: Input should be 'pass', 'revise' or 'reject'"),
    ({"verdict": "pass"}, "issues: Field required"),
    ({"verdict": "pass", "issues": [], "extra": 1}, "extra: Extra inputs are not permitted"),
])
def test_corrections_are_validated_against_the_agent_contract(hitl_store, correction, message):
    i = hitl_store.enqueue(example_item())
    with pytest.raises(InvalidDecision, match=message):
        hitl_store.decide(i, "alice", "correct", correction=correction)
    assert hitl_store.get(i).state == "pending" and len(hitl_store.audit(i)) == 1


def test_corrections_must_fit_the_input(hitl_store):
    i = hitl_store.enqueue(example_item("fact_checker", ("unverified",)))
    one_verdict = {"verdicts": [{"verdict": "supported", "evidence": [0], "confidence": 0.9}]}
    with pytest.raises(InvalidDecision, match="expected one per input claims"):
        hitl_store.decide(i, "alice", "correct", correction=one_verdict)


def test_bad_decisions_and_unknown_items(hitl_store):
    i = hitl_store.enqueue(example_item())
    with pytest.raises(InvalidDecision, match="action 'publish'"):
        hitl_store.decide(i, "alice", "publish")  # type: ignore[arg-type]
    with pytest.raises(InvalidDecision, match="takes no correction"):
        hitl_store.decide(i, "alice", "approve", correction={"verdict": "pass", "issues": []})
    with pytest.raises(InvalidDecision, match="reviewer name"):
        hitl_store.claim(i, " ")
    with pytest.raises(ItemNotFound):
        hitl_store.claim(999, "alice")
    with pytest.raises(ItemNotFound):
        hitl_store.decide(999, "alice", "approve")
    with pytest.raises(InvalidDecision, match="reasons"):
        hitl_store.enqueue(example_item(reasons=("because",)))


def test_filters_by_agent_reason_state_and_age(hitl_store):
    from datetime import timedelta

    from hitl import utcnow

    old = example_item(created_at=utcnow() - timedelta(hours=2))
    ids = hitl_store.enqueue_many([old, example_item("fact_checker", ("unverified", "sampled")),
                                   example_item(reasons=("fallback",))])
    assert [i.id for i in hitl_store.list(agent="critic")] == [ids[0], ids[2]]
    assert [i.id for i in hitl_store.list(reason="sampled")] == [ids[1]]
    assert [i.id for i in hitl_store.list(reason="fallback")] == [ids[2]]
    assert [i.id for i in hitl_store.list(older_than_s=3600)] == [ids[0]]
    assert [i.id for i in hitl_store.list(newer_than_s=3600)] == ids[1:]
    hitl_store.decide(ids[2], "alice", "approve")
    assert [i.id for i in hitl_store.list(states=["pending"])] == ids[:2]
    stats = hitl_store.queue_stats()
    assert stats["critic"]["pending"] == 1 and stats["critic"]["oldest_age_s"] >= 7190
    assert stats["fact_checker"]["pending"] == 1 and stats["fact_checker"]["oldest_age_s"] < 60


def test_two_stores_on_one_file_see_each_other(hitl_store):
    other = ReviewStore(hitl_store.url)
    i = other.enqueue(example_item())
    hitl_store.claim(i, "alice")
    with pytest.raises(ClaimConflict, match="claimed by alice"):
        other.claim(i, "bob")
    other.close()


def test_sqlite_engine_uses_wal(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/x/q.db")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_the_migration_goes_down_and_up_again(hitl_store):
    from alembic import command

    from hitl.db import _config

    hitl_store.enqueue(example_item())
    command.downgrade(_config(hitl_store.engine), "base")
    assert current_revision(hitl_store.engine) is None
    assert not {"hitl_items", "hitl_audit"} & set(inspect(hitl_store.engine).get_table_names())
    assert hitl_store.migrate() == head_revision()
    assert hitl_store.list() == [] and hitl_store.enqueue(example_item()) == 1


def test_concurrent_migrators_on_one_file_serialise(tmp_path):
    import threading

    url = f"sqlite:///{tmp_path}/q.db"
    stores = [ReviewStore(url, auto_migrate=False) for _ in range(4)]
    revs: list = []
    threads = [threading.Thread(target=lambda s=s: revs.append(s.migrate())) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert revs == [head_revision()] * 4
    for s in stores:
        s.close()


def test_a_database_at_0001_with_items_upgrades_to_head(tmp_path):
    from sqlalchemy import text

    from hitl.db import migrate

    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    assert migrate(engine, "0001_review_queue") == "0001_review_queue"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO hitl_items (agent, input, output, reasons, reason_tags, source, state, "
                          "created_at, updated_at) VALUES ('critic', '{}', '{}', '[\"manual\"]', ',manual,', "
                          "'manual', 'pending', '2026-11-29 10:00:00', '2026-11-29 10:00:00')"))
    store = ReviewStore(engine=engine)
    assert store.migrate() == head_revision() == "0002_article_holds"
    [old] = store.list()
    assert (old.agent, old.state, old.input_key) == ("critic", "pending", None)
    assert store.decide(old.id, "alice", "reject").state == "rejected"
    assert {"hitl_holds"} <= set(inspect(engine).get_table_names())
    engine.dispose()
