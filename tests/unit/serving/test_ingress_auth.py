"""The ingress' tokens: no unauthenticated ingress outside loopback, and API vs admin scopes (no Ray)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from agent_graph import load_agent_map
from deployments.ingress.http_app import build_http_app
from deployments.ingress.auth import MIN_TOKEN_CHARS, InsecureBindingError, TokenGuard, is_loopback, scope_of
from deployments.ingress.server import IngressServer, IngressSettings

API, ADMIN = "a" * 24, "b" * 24
API_ENV, ADMIN_ENV = "JUSTNEWS_TEST_API_TOKEN", "JUSTNEWS_TEST_ADMIN_TOKEN"


def _settings(**kw) -> IngressSettings:
    return IngressSettings(api_token_env=API_ENV, admin_token_env=ADMIN_ENV, **kw)


def _server(monkeypatch, api: str | None, admin: str | None, **kw) -> IngressServer:
    for env, value in ((API_ENV, api), (ADMIN_ENV, admin)):
        if value is None:
            monkeypatch.delenv(env, raising=False)
        else:
            monkeypatch.setenv(env, value)

    async def unused(*_):  # agent and LLM calls are not part of these tests
        raise AssertionError("not called")

    async def stats() -> dict:
        return {"critic": {"requests": 3}}

    return IngressServer(_settings(**{k: v for k, v in kw.items() if k == "http_host"}), load_agent_map(), None,
                         llm=unused, agent=unused, agent_stats=stats,
                         **{k: v for k, v in kw.items() if k != "http_host"})


def _client(server: IngressServer) -> TestClient:
    return TestClient(build_http_app(server))


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.0.0.53", True), ("localhost", True), ("LOCALHOST", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("head.example.org", False),
    ("<unknown: RayServeException>", False),
])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("path,scope", [
    ("/stats", "admin"), ("/stats/", "admin"), ("/canary", "admin"), ("/hitl", "admin"), ("/hitl/queue/1", "admin"),
    ("/healthz", "api"), ("/docs", "api"), ("/openapi.json", "api"), ("/agents/critic", "api"),
    ("/statsx", "api"), ("/v1/models", "api"),
])
def test_scope_of_paths(path, scope):
    assert scope_of(path) == scope


@pytest.mark.parametrize("hosts,api,admin,error", [
    (["127.0.0.1"], None, None, None),
    (["localhost", None], None, None, None),
    ([None], None, None, None),  # no HTTP proxy at all
    (["127.0.0.1"], "short", None, None),  # loopback: no length rule
    (["0.0.0.0"], None, None, r"binds '0\.0\.0\.0' \(http_options\.host\).*\$A is unset or empty; \$B is unset"),
    (["0.0.0.0"], API, None, r"binds '0\.0\.0\.0'.*\$B is unset or empty"),
    (["10.1.2.3"], None, ADMIN, r"binds '10\.1\.2\.3'.*\$A is unset or empty"),
    (["0.0.0.0"], "x" * 5, ADMIN, rf"\$A has 5 characters, fewer than {MIN_TOKEN_CHARS}"),
    (["127.0.0.1", "head.example.org"], None, None, r"binds 'head\.example\.org'"),
    (["<unknown: RayServeException>"], None, None, r"binds '<unknown: RayServeException>'"),
    (["0.0.0.0"], API, ADMIN, None),
    (["127.0.0.1"], API, API, r"\$B must differ from \$A"),
    (["0.0.0.0"], API, API, r"\$B must differ from \$A"),
])
def test_binding_rules(hosts, api, admin, error):
    guard = TokenGuard(api, admin, "A", "B")
    if error is None:
        guard.check_binding(hosts)
    else:
        with pytest.raises(InsecureBindingError, match=error) as exc:
            guard.check_binding(hosts)
        assert API not in str(exc.value) and ADMIN not in str(exc.value)  # never echo a secret


def test_the_ingress_refuses_to_start_exposed_without_tokens(monkeypatch):
    with pytest.raises(InsecureBindingError, match=rf"binds '0\.0\.0\.0'.*\${API_ENV} is unset.*or bind "
                                                   r"http_options\.host: 127\.0\.0\.1"):
        _server(monkeypatch, None, None, http_host="0.0.0.0")
    monkeypatch.setenv(API_ENV, API)
    with pytest.raises(InsecureBindingError, match=rf"\${ADMIN_ENV} is unset"):  # the serve config's host counts too
        IngressServer(_settings(http_host="0.0.0.0"), load_agent_map(), None, llm=None, agent=None, http_host=None)
    assert _server(monkeypatch, API, ADMIN, http_host="0.0.0.0").guard.admin_token == ADMIN


@pytest.mark.parametrize("path,token,status,error_type", [
    ("/healthz", None, 401, "unauthorized"),
    ("/healthz", "wrong-token-wrong-token", 401, "unauthorized"),
    ("/healthz", API, 200, None),
    ("/healthz", ADMIN, 200, None),  # the admin token calls everything
    ("/docs", None, 401, "unauthorized"),
    ("/openapi.json", API, 200, None),
    ("/stats", None, 401, "unauthorized"),
    ("/stats", API, 403, "forbidden"),
    ("/stats", ADMIN, 200, None),
    ("/canary", API, 403, "forbidden"),
    ("/canary", ADMIN, 404, "not_served"),  # past the guard: this app runs no canary controller
    ("/hitl/queue", API, 403, "forbidden"),
    ("/hitl/queue", ADMIN, 404, "not_found"),
])
def test_api_and_admin_scopes(monkeypatch, path, token, status, error_type):
    client = _client(_server(monkeypatch, API, ADMIN, http_host="0.0.0.0"))
    reply = client.get(path, headers={"Authorization": f"Bearer {token}"} if token else {})
    assert reply.status_code == status, reply.text
    if error_type:
        assert reply.json()["error"]["type"] == error_type
    if status == 401:
        assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert f"${API_ENV}" in reply.json()["error"]["message"] or f"${ADMIN_ENV}" in reply.json()["error"]["message"]
    if status == 403:
        assert reply.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
        assert f"${ADMIN_ENV}" in reply.json()["error"]["message"] and path in reply.json()["error"]["message"]


def test_on_loopback_without_an_admin_token_the_api_token_stands_in(monkeypatch):
    client = _client(_server(monkeypatch, API, None, http_host="127.0.0.1"))
    assert client.get("/stats", headers={"Authorization": f"Bearer {API}"}).json()["agents"]["critic"]["requests"] == 3
    assert client.get("/stats").status_code == 401


def test_on_loopback_without_tokens_every_route_is_open(monkeypatch):
    client = _client(_server(monkeypatch, None, None, http_host="127.0.0.1"))
    assert client.get("/stats").status_code == 200
    assert client.get("/docs").status_code == 200


def test_the_scope_ignores_serves_route_prefix(monkeypatch):
    client = TestClient(build_http_app(_server(monkeypatch, API, ADMIN)), root_path="/jn")
    reply = client.get("/jn/stats", headers={"Authorization": f"Bearer {API}"})
    assert reply.status_code == 403, reply.text


def test_the_ingress_reads_the_serve_host_from_the_controller_and_fails_closed(monkeypatch):
    import ray.serve.context as context

    from deployments.ingress.deployment import _serve_http_host

    class Client:
        class http_config:  # noqa: N801 - mimics ServeControllerClient.http_config
            host = "0.0.0.0"

    monkeypatch.setattr(context, "_get_global_client", lambda: Client)
    assert _serve_http_host() == "0.0.0.0"

    def broken():
        raise RuntimeError("no controller")

    monkeypatch.setattr(context, "_get_global_client", broken)
    assert _serve_http_host() == "<unknown: RuntimeError>" and not is_loopback(_serve_http_host())


def test_the_api_token_may_queue_a_review_item_but_not_read_the_queue(monkeypatch):
    """POST /hitl/items is open to any API client (issue 14); listing and deciding stay admin. This app has no
    review routes, so a request the guard lets through ends in the router's 404/405, never 401/403."""
    client = _client(_server(monkeypatch, API, ADMIN, http_host="0.0.0.0"))
    bearer = {"Authorization": f"Bearer {API}"}
    assert client.post("/hitl/items", json={}, headers=bearer).status_code in (404, 405)
    assert client.post("/hitl/items", json={}).status_code == 401
    assert client.get("/hitl/items", headers=bearer).status_code == 403
    assert client.post("/hitl/items/3/decision", json={}, headers=bearer).status_code == 403
