"""Regression tests for what schemathesis found against ``/openapi.json`` (tests/e2e/test_schemathesis.py): each
was a 5xx (or an unhelpful 4xx) for a caller's mistake; each now answers a 4xx JSON error naming the limit."""

from __future__ import annotations

import sys

import pytest
from fastapi.testclient import TestClient

from agent_graph import get_spec, load_agent_map, run_heuristic
from deployments.ingress.http_app import build_http_app
from deployments.ingress.server import IngressServer, IngressSettings


@pytest.fixture
def client(store):
    async def llm(model_id: str, body: dict) -> dict:
        return {"text": "ok", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1,
                "adapter": model_id or None, "base": "base_models@v1-tiny-mistral"}

    server = IngressServer(IngressSettings(), load_agent_map(), store, llm=llm, agent=None)
    return TestClient(build_http_app(server))


@pytest.mark.parametrize("depth", [1_200, 100_000])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/agents/critic", "/v1/embeddings"])
def test_a_body_nested_deeper_than_the_parser_takes_names_the_limit(client, path, depth):
    body = '{"model": "base", "x": ' + "[" * depth + "]" * depth + "}"
    reply = client.post(path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "limit_exceeded"
    assert f"{sys.getrecursionlimit()} levels" in error["message"] and "nested" in error["message"]


def test_a_body_that_is_not_utf8_says_so(client):
    reply = client.post("/v1/chat/completions", content=b'{"model": "\xff"}',
                        headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request" and "UTF-8" in reply.json()["error"]["message"]


@pytest.fixture
def hitl(store, monkeypatch):
    from deployments.review.metrics import ingress_service
    from deployments.review.routes import build_hitl_app

    return TestClient(build_hitl_app(ingress_service(str(store.root), ["critic"])))


@pytest.mark.parametrize("method, path, params", [
    ("GET", "/hitl/items", {"older_than_s": "-1.1694732192457994e+16"}),
    ("GET", "/hitl/items", {"older_than_s": "3.1793077799950533e+77"}),
    ("GET", "/hitl/items/260442442456582193152", None),
    ("POST", "/hitl/items/226177453485147193344/decision", None),
])
def test_hitl_numbers_out_of_range_are_400_not_503(hitl, method, path, params):
    kwargs = {"json": {"action": "reject", "reviewer": "ed"}} if method == "POST" else {}
    reply = hitl.request(method, path, params=params, **kwargs)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request"


# Found by schemathesis: a whitespace-only field clipped to "" by the legacy heuristic (reasoning's premise,
# synthesizer's title) broke the contract, so a request whose model steps failed answered 502.
@pytest.mark.parametrize("agent, body", [
    ("reasoning", {"question": "q", "premises": [" "]}),
    ("synthesizer", {"task": "summary", "articles": [{"title": "\u00a0", "text": "x"}]}),
])
def test_the_legacy_heuristics_take_whitespace_only_text(agent, body):
    spec = get_spec(agent)
    inp = spec.load_input(body)
    spec.validate_output(run_heuristic(load_agent_map().legacy[agent].target, inp), inp)
