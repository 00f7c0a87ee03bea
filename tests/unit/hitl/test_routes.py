"""The /hitl routes without Ray: reviewer login and sessions, CSRF, claims between two reviewers, decisions
through the pages and the admin JSON API, and how they sit inside the ingress' token scopes."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from agent_graph import load_agent_map
from deployments.review.auth import LOGIN_COOKIE, SESSION_COOKIE, Reviewers, Sessions
from deployments.review.routes import HitlService, build_hitl_app, install_hitl
from deployments.ingress.http_app import build_http_app
from deployments.ingress.server import IngressServer, IngressSettings
from hitl import ReviewerConfigError

from .conftest import example_item

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"
REVIEWERS = f"alice:{ALICE},bob:{BOB}"


@pytest.fixture
def svc(hitl_store):
    return HitlService(hitl_store, reviewers=Reviewers.parse(REVIEWERS), secret="test-secret")


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def _login(client: TestClient, name: str, token: str):
    page = client.get("/hitl/login")
    return client.post("/hitl/login", data={"csrf": _csrf(page.text), "name": name, "token": token},
                       follow_redirects=False)


def _logged_in(app, name="alice", token=ALICE) -> TestClient:
    client = TestClient(app)
    assert _login(client, name, token).status_code == 303
    return client


@pytest.mark.parametrize("spec, message", [
    ("alice", "expected name:token"),
    ("al ice:" + ALICE, "expected name:token"),
    ("alice:short", "fewer than 16"),
    (f"alice:{ALICE},alice:{BOB}", "listed twice"),
    (f"alice:{ALICE},bob:{ALICE}", "shares a token"),
])
def test_reviewer_config_errors_name_the_entry_never_the_token(spec, message):
    with pytest.raises(ReviewerConfigError, match=message) as err:
        Reviewers.parse(spec)
    assert ALICE not in str(err.value)


def test_reviewer_token_must_differ_from_bearer_tokens(monkeypatch):
    monkeypatch.setenv("JUSTNEWS_HITL_REVIEWERS", f"alice:{ALICE}")
    monkeypatch.setenv("JUSTNEWS_ADMIN_TOKEN", ALICE)
    with pytest.raises(ReviewerConfigError, match="equals an API/admin bearer token"):
        Reviewers.from_env()


def test_sessions_expire_and_die_with_their_token():
    sessions = Sessions(Reviewers.parse(REVIEWERS), secret="s")
    cookie = sessions.issue("alice", now=1000.0)
    assert sessions.verify(cookie, now=1001.0) == "alice"
    assert sessions.verify(cookie, now=1000.0 + sessions.ttl_s + 1) is None
    assert sessions.verify(cookie.replace("alice", "bob"), now=1001.0) is None
    rotated = Sessions(Reviewers.parse(f"alice:{'n' * 20},bob:{BOB}"), secret="s")
    assert rotated.verify(cookie, now=1001.0) is None
    assert sessions.check_csrf(cookie, sessions.csrf(cookie)) and not sessions.check_csrf(cookie, "x" * 32)


def test_login_flow_and_bad_logins(svc):
    app = build_hitl_app(svc)
    client = TestClient(app)
    assert client.get("/hitl/", follow_redirects=False).headers["location"] == "/hitl/login"
    bad = _login(client, "alice", BOB)
    assert bad.status_code == 303 and "error=Unknown" in bad.headers["location"]
    forged = client.post("/hitl/login", data={"csrf": "forged", "name": "alice", "token": ALICE},
                         follow_redirects=False)
    assert "expired" in forged.headers["location"]
    ok = _login(client, "alice", ALICE)
    assert ok.headers["location"] == "/hitl/"
    cookie = ok.headers["set-cookie"]
    assert SESSION_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/hitl" in cookie
    page = client.get("/hitl/")
    assert page.status_code == 200 and 'id="reviewer">alice<' in page.text
    assert "nonce-" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"


def test_no_reviewers_configured_says_how_to(hitl_store):
    client = TestClient(build_hitl_app(HitlService(hitl_store, reviewers=Reviewers.parse(""))))
    assert "JUSTNEWS_HITL_REVIEWERS" in client.get("/hitl/login").text


def test_every_form_post_needs_the_sessions_csrf_token(svc, hitl_store):
    i = hitl_store.enqueue(example_item())
    client = _logged_in(build_hitl_app(svc))
    for path, data in ((f"/hitl/review/{i}/claim", {}), (f"/hitl/review/{i}/decide", {"action": "approve"}),
                       ("/hitl/logout", {})):
        r = client.post(path, data={**data, "csrf": "0" * 32}, follow_redirects=False)
        assert r.status_code == 403 and r.json()["error"]["type"] == "csrf_failed", path
        assert client.post(path, data=data, follow_redirects=False).status_code == 403
    anonymous = TestClient(build_hitl_app(svc))
    assert anonymous.post(f"/hitl/review/{i}/decide", data={"action": "approve"}).status_code == 401
    assert hitl_store.get(i).state == "pending" and len(hitl_store.audit(i)) == 1


def test_two_reviewers_on_the_pages_second_gets_a_clear_message(svc, hitl_store):
    i = hitl_store.enqueue(example_item())
    app = build_hitl_app(svc)
    alice, bob = _logged_in(app), _logged_in(app, "bob", BOB)
    a_csrf, b_csrf = _csrf(alice.get("/hitl/").text), _csrf(bob.get("/hitl/").text)
    r = alice.post(f"/hitl/review/{i}/claim", data={"csrf": a_csrf}, follow_redirects=False)
    assert r.headers["location"] == f"/hitl/review/{i}"
    assert 'id="input"' in alice.get(f"/hitl/review/{i}").text
    r = bob.post(f"/hitl/review/{i}/claim", data={"csrf": b_csrf})
    assert f"item {i} is claimed by alice until" in r.text
    r = bob.post(f"/hitl/review/{i}/decide", data={"csrf": b_csrf, "action": "approve"})
    assert "claimed by alice" in r.text
    r = alice.post(f"/hitl/review/{i}/decide", data={"csrf": a_csrf, "action": "approve"})
    assert f"Item {i} approved." in r.text
    assert [(e.actor, e.action) for e in hitl_store.audit(i)] == [("agent", "queued"), ("alice", "claimed"),
                                                                  ("alice", "approved")]


def test_correction_on_the_page_is_checked_against_the_contract(svc, hitl_store):
    i = hitl_store.enqueue(example_item())
    client = _logged_in(build_hitl_app(svc))
    csrf = _csrf(client.get("/hitl/").text)
    bad = client.post(f"/hitl/review/{i}/decide", data={"csrf": csrf, "action": "correct",
                                                        "correction": '{"verdict": "maybe", "issues": []}'})
    assert bad.status_code == 400 and "does not fit the critic contract" in bad.text and "maybe" in bad.text
    good = client.post(f"/hitl/review/{i}/decide", data={"csrf": csrf, "action": "correct",
                                                         "correction": '{"verdict": "revise", "issues": []}'})
    assert good.status_code == 200 and f"Item {i} corrected." in good.text
    assert hitl_store.get(i).correction == {"verdict": "revise", "issues": []}


def test_queue_filters(svc, hitl_store):
    hitl_store.enqueue_many([example_item(), example_item("fact_checker", ("unverified",))])
    client = _logged_in(build_hitl_app(svc))
    assert client.get("/hitl/").text.count("data-item=") == 2
    assert client.get("/hitl/?agent=fact_checker").text.count("data-item=") == 1
    assert client.get("/hitl/?reason=blocking_verdict").text.count("data-item=") == 1
    assert client.get("/hitl/?age=gt1h").text.count("data-item=") == 0


def test_admin_api_queue_by_hand_list_and_decide(svc, hitl_store):
    client = TestClient(build_hitl_app(svc))
    item = example_item()
    r = client.post("/hitl/items", json={"agent": "critic", "input": item.input, "output": item.output,
                                         "note": "looks off"})
    assert r.status_code == 201
    i = r.json()["id"]
    bad = client.post("/hitl/items", json={"agent": "critic", "input": item.input, "output": {"verdict": "x"}})
    assert bad.status_code == 400 and "critic" in bad.json()["error"]["message"]
    assert client.post("/hitl/items", json={"agent": "nobody", "input": {}, "output": {}}).status_code == 400
    listed = client.get("/hitl/items", params={"agent": "critic", "reason": "manual"}).json()["items"]
    assert [x["id"] for x in listed] == [i] and listed[0]["source"] == "manual"
    hitl_store.claim(i, "bob")
    r = client.post(f"/hitl/items/{i}/decision", json={"reviewer": "carol", "action": "approve"})
    assert r.status_code == 409 and "claimed by bob" in r.json()["error"]["message"]
    r = client.post(f"/hitl/items/{i}/decision", json={"reviewer": "bob", "action": "correct",
                                                       "output": {"verdict": "pass", "issues": []}})
    assert r.status_code == 200 and r.json()["state"] == "corrected"
    assert [a["action"] for a in r.json()["audit"]] == ["queued", "claimed", "corrected"]
    assert client.get("/hitl/items/999").status_code == 404
    assert client.get("/hitl/stats").json()["states"] == {"corrected": 1}


def test_database_outage_is_a_503_on_hitl_routes_only(tmp_path):
    from hitl import ReviewStore

    def broken():  # the "database file" is a directory: every connection fails as a dead server would
        return ReviewStore(f"sqlite:///{tmp_path}")

    client = TestClient(build_hitl_app(HitlService(broken, reviewers=Reviewers.parse(REVIEWERS))))
    r = client.get("/hitl/stats")
    assert r.status_code == 503 and r.json()["error"]["type"] == "review_queue_unavailable"


API, ADMIN = "api-token-0123456789abcd", "admin-token-0123456789ab"


def test_inside_the_ingress_tokens_keep_their_scopes_and_pages_use_the_session(monkeypatch, svc, hitl_store):
    monkeypatch.setenv("JUSTNEWS_API_TOKEN", API)
    monkeypatch.setenv("JUSTNEWS_ADMIN_TOKEN", ADMIN)

    async def unused(*_):
        raise AssertionError("not called")

    server = IngressServer(IngressSettings(), load_agent_map(), None, llm=unused, agent=unused)
    app = build_http_app(server)
    install_hitl(app, svc)
    client = TestClient(app)
    item = example_item()
    body = {"agent": "critic", "input": item.input, "output": item.output}
    assert client.post("/hitl/items", json=body).status_code == 401
    # any API client may queue by hand (issue 14); reading the queue stays admin
    assert client.post("/hitl/items", json=body, headers={"Authorization": f"Bearer {API}"}).status_code == 201
    assert client.get("/hitl/items", headers={"Authorization": f"Bearer {API}"}).status_code == 403
    assert client.post("/hitl/items", json=body, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 201
    assert client.get("/hitl/stats", headers={"Authorization": f"Bearer {ALICE}"}).status_code == 401  # reviewer token is no bearer
    assert client.get("/hitl/login").status_code == 200  # a browser sends no bearer token
    assert client.get("/hitl/", follow_redirects=False).headers["location"] == "/hitl/login"
    assert _login(client, "alice", ALICE).status_code == 303
    assert "data-item=" in client.get("/hitl/").text
    assert client.get("/agents/critic").status_code in (401, 405)  # the session opens nothing else
    assert client.get("/stats").status_code == 401


@pytest.mark.parametrize("path, scope", [
    ("/hitl/", "reviewer"), ("/hitl/login", "reviewer"), ("/hitl/logout", "reviewer"), ("/hitl/review/3", "reviewer"),
    ("/hitl/review/3/decide", "reviewer"), ("/hitl", "admin"), ("/hitl/items", "admin"),
    ("/hitl/items/3/decision", "admin"), ("/hitl/stats", "admin"), ("/hitl/review", "admin"),
    ("/hitl/loginx", "admin"), ("/hitl/login/x", "admin"), ("/stats", "admin"), ("/agents/critic", "api"),
])
def test_only_the_reviewer_pages_leave_the_bearer_scopes(path, scope):
    from deployments.ingress.auth import scope_of

    assert scope_of(path) == scope


def test_any_api_client_may_queue_an_item_by_hand_but_not_list_or_decide():
    from deployments.ingress.auth import scope_of

    assert scope_of("/hitl/items", "POST") == "api"
    assert scope_of("/hitl/items", "GET") == "admin"
    assert scope_of("/hitl/items/3/decision", "POST") == "admin"


def test_a_released_claim_lets_the_other_reviewer_in(svc, hitl_store):
    i = hitl_store.enqueue(example_item())
    app = build_hitl_app(svc)
    alice, bob = _logged_in(app), _logged_in(app, "bob", BOB)
    a_csrf, b_csrf = _csrf(alice.get("/hitl/").text), _csrf(bob.get("/hitl/").text)
    alice.post(f"/hitl/review/{i}/claim", data={"csrf": a_csrf})
    assert 'id="release"' in alice.get(f"/hitl/review/{i}").text
    assert f"Item {i} released." in alice.post(f"/hitl/review/{i}/release", data={"csrf": a_csrf}).text
    bob.post(f"/hitl/review/{i}/claim", data={"csrf": b_csrf})
    assert hitl_store.get(i).claimed_by == "bob"
    assert [e.action for e in hitl_store.audit(i)] == ["queued", "claimed", "released", "claimed"]
    assert "Log out" in bob.get("/hitl/").text
    r = bob.post("/hitl/logout", data={"csrf": b_csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/hitl/login"
