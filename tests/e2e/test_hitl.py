"""Human review on the running cluster (``serve run``): the agents' review rules queue answers into the SQLite
file beside the store, the /hitl JSON API and the reviewers' pages answer through Serve in their token scopes,
the justnews_hitl_* metrics reach Prometheus, and corrections made over HTTP train the next adapter version.

The e2e map gives reasoning too few tokens for any model reply, so every reasoning answer comes from the legacy
step and the map's ``fallback`` rule queues it: the test's supply of rule-queued items. The loop: an editor
corrects them over HTTP (the synthetic task's rule knows the right answer), ``justnews hitl export`` writes the
training file, ``justnews train ... --publish --no-promote`` publishes ``hitl-1`` into the cluster's store
(not promoted: the other e2e tests keep the versions they expect), and the cluster's BaseLLM, asked for that
version through ``/v1/chat/completions`` with the agent's own prompt and schema, answers as the editor said.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from agent_graph import get_spec

AGENT = "reasoning"
N_REVIEWED, N_HELD_OUT = 32, 16


def _wait_items(client: httpx.Client, n: int, timeout_s: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    items: list[dict] = []
    while time.monotonic() < deadline:
        items = client.get("/hitl/items", params={"agent": AGENT, "limit": 1000}).json()["items"]
        if len(items) >= n:
            return items
        time.sleep(0.5)
    pytest.fail(f"{len(items)} of {n} {AGENT} answers queued after {timeout_s}s")


def _ask(client: httpx.Client, inputs) -> list[dict]:
    replies = []
    for inp in inputs:
        reply = client.post(f"/agents/{AGENT}", json=inp.model_dump(mode="json"))
        assert reply.status_code == 200, reply.text
        replies.append(reply.json())
    return replies


def test_rules_queue_answers_and_hitl_routes_answer_through_serve(cluster):
    from training.synthetic import generate

    records = generate(AGENT, 3, 4242)
    with cluster.client() as client:
        before = len(client.get("/hitl/items", params={"agent": AGENT, "limit": 1000}).json()["items"])
        replies = _ask(client, [i for i, _ in records])
        assert all(r["fallback"] and r["step"] == "legacy" for r in replies)
        items = _wait_items(client, before + 3)
        mine = [it for it in items if it["input"] in [i.model_dump(mode="json") for i, _ in records]]
        assert len(mine) == 3 and all("fallback" in it["reasons"] and it["step"] == "legacy" for it in mine)
        assert mine[0]["answered_by"].startswith("heuristic:")
        first = mine[0]["id"]
        ok = client.post(f"/hitl/items/{first}/decision", json={"reviewer": "e2e", "action": "approve"})
        assert ok.status_code == 200 and [a["action"] for a in ok.json()["audit"]] == ["queued", "approved"]
        again = client.post(f"/hitl/items/{first}/decision", json={"reviewer": "other", "action": "reject"})
        assert again.status_code == 409 and "already approved by e2e" in again.json()["error"]["message"]
        stats = client.get("/hitl/stats").json()
        assert stats["queue"][AGENT]["pending"] >= 2
        assert (cluster.store_root / ".hitl" / "hitl.db").is_file()
    with httpx.Client(base_url=cluster.url, timeout=30) as browser:  # no bearer token, as a browser
        assert browser.get("/hitl/login").status_code == 200
        assert browser.get("/hitl/", follow_redirects=False).headers["location"].endswith("/hitl/login")
        assert browser.get("/hitl/stats").status_code == 401  # the JSON API keeps its bearer scope
        assert browser.post(f"/agents/{AGENT}", json=records[0][0].model_dump(mode="json")).status_code == 401

    from tests.e2e.test_rollout import _scrape

    expected = {("ray_justnews_hitl_queued_total", AGENT), ("ray_justnews_hitl_decisions_total", AGENT),
                ("ray_justnews_hitl_pending", AGENT), ("ray_justnews_hitl_oldest_pending_age_s", AGENT)}
    deadline = time.monotonic() + 90
    seen: set = set()
    while time.monotonic() < deadline:
        seen = {(s.name, s.labels.get("agent")) for s in _scrape(cluster.metrics_url) if "hitl" in s.name}
        if expected <= seen:
            break
        time.sleep(2)
    assert expected <= seen, sorted(seen)


@pytest.mark.slow
def test_corrections_over_http_train_the_next_adapter_version(cluster, tmp_path, capsys):
    from hitl.cli import main as hitl_main
    from tests.unit.hitl.conftest import train_argv
    from training.cli import main as train_main
    from training.evaluate import SCORERS
    from training.synthetic import generate

    from datetime import datetime, timezone

    spec = get_spec(AGENT)
    since = datetime.now(timezone.utc).isoformat()  # export only this test's decisions
    reviewed, held_out = generate(AGENT, N_REVIEWED, 1101), generate(AGENT, N_HELD_OUT, 2202)
    truth = {json.dumps(i.model_dump(mode="json"), sort_keys=True): o for i, o in reviewed}
    with cluster.client() as client:
        before = {it["id"] for it in client.get("/hitl/items", params={"agent": AGENT, "limit": 1000}).json()["items"]}
        _ask(client, [i for i, _ in reviewed])
        items = [it for it in _wait_items(client, len(before) + N_REVIEWED) if it["id"] not in before]
        corrected = 0
        for it in items:
            right = truth[json.dumps(it["input"], sort_keys=True)]
            if SCORERS[AGENT](spec.output_model.model_validate(it["output"]), right):
                body = {"reviewer": "editor", "action": "approve"}
            else:
                body = {"reviewer": "editor", "action": "correct", "output": right.model_dump(mode="json")}
                corrected += 1
            reply = client.post(f"/hitl/items/{it['id']}/decision", json=body)
            assert reply.status_code == 200, reply.text
        assert corrected >= N_REVIEWED // 2  # the legacy heuristic rarely gives the synthetic task's conclusion

    data = tmp_path / "reasoning-hitl.jsonl"
    assert hitl_main(["--store-root", str(cluster.store_root), "export", "--agent", AGENT, "--since", since,
                      "--out", str(data)]) == 0
    exported = [json.loads(line) for line in data.read_text().splitlines()]
    assert {json.dumps(r["input"], sort_keys=True) for r in exported} == set(truth) and len(exported) == N_REVIEWED
    started = time.monotonic()
    assert train_main(train_argv(AGENT, data, cluster.store_root, tmp_path / "run", steps=150, promote=False)) == 0
    train_s = time.monotonic() - started

    def score(records) -> tuple[float, set[str]]:
        right, fingerprints = 0, set()
        with cluster.client() as client:
            for inp, expected in records:
                reply = client.post("/v1/chat/completions", json={
                    "model": f"base:{AGENT}/mistral_{AGENT}_v1@hitl-1", "messages": spec.build_messages(inp),
                    "max_tokens": 160, "temperature": 0,
                    "response_format": {"type": "json_schema",
                                        "json_schema": {"name": AGENT, "schema": spec.json_schema(inp)}}})
                assert reply.status_code == 200, reply.text
                fingerprints.add(reply.json()["system_fingerprint"])
                got = spec.parse(reply.json()["choices"][0]["message"]["content"], inp)
                right += bool(SCORERS[AGENT](got, expected))
        return right / len(records), fingerprints

    fit, served_by = score(reviewed)
    held, _ = score(held_out)
    with capsys.disabled():
        print(f"\ne2e close the loop ({AGENT}: {N_REVIEWED} answers queued by the fallback rule, {corrected} corrected "
              f"over HTTP, trained {train_s:.0f} s): corrected inputs {fit:.2f}, held-out inputs {held:.2f}")
    assert served_by == {f"{AGENT}/mistral_{AGENT}_v1@hitl-1"}
    assert fit >= 0.9


def test_pipeline_answers_say_whether_review_holds_the_article(cluster):
    article = {"id": "hitl-e2e-1", "title": "Council approves bridge",
               "text": "The council approved a bridge on Monday. It costs 40 million euros.",
               "evidence": ["The approved budget is 40 million euros."]}
    with cluster.client() as client:
        reply = client.post("/pipeline/article", json=article)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["held"] == bool(body["review"])
        deadline = time.monotonic() + 30
        status = client.get(f"/hitl/articles/{article['id']}").json()
        while body["held"] and not all(s["item_id"] for s in status["steps"]) and time.monotonic() < deadline:
            time.sleep(0.5)
            status = client.get(f"/hitl/articles/{article['id']}").json()
    assert {s["step"] for s in status["steps"]} == set(body["review"])
    assert status["held"] == body["held"]
    assert all(s["item_id"] and s["state"] == "pending" for s in status["steps"])
