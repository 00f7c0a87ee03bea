"""The ingress FastAPI app over fake deployments (no Ray): routes, JSON errors, guards, OpenAI shapes."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from agent_graph import get_spec, load_agent_map
from deployments.agent.server import AgentServer
from deployments.errors import AdapterNotFoundError, RequestTooLargeError
from deployments.ingress.http_app import build_http_app
from deployments.ingress.server import IngressServer, IngressSettings

TOKEN = "t0ken"


def _reply(model_id: str, body: dict) -> dict:
    if "prompt too long" in json.dumps(body["messages"]):
        raise RequestTooLargeError("request 0: prompt has 5000 tokens, max_prompt_tokens is 2048")
    if model_id.endswith("@missing"):
        raise AdapterNotFoundError(f"{model_id}: not in the store")
    text = '{"ok":true}' if body.get("json_schema") else "one two three four five six seven eight nine ten"
    return {"text": text, "finish_reason": "stop", "prompt_tokens": 7, "completion_tokens": 10,
            "adapter": model_id or None, "base": "base_models@v1-tiny-mistral"}


@pytest.fixture()
def app(seeded_store_root, monkeypatch):
    from modelstore import ModelStore

    monkeypatch.setenv("JUSTNEWS_TEST_TOKEN", TOKEN)
    agent_map = load_agent_map()

    async def llm(model_id: str, body: dict) -> dict:
        return _reply(model_id, body)

    async def embed(body: dict) -> dict:
        return {"model": "mini", "dimensions": 2, "vectors": [[0.6, 0.8] for _ in body["texts"]]}

    agents = {n: AgentServer(n, agent_map, llm=llm if e.kind in ("llm", "multimodal") else None,
                             embed=embed if e.kind == "embedding" else None)
              for n, e in agent_map.agents.items() if e.served}

    async def agent(name: str, body: dict, strict: bool) -> dict:
        return (await agents[name].answer(body, strict=strict)).model_dump(mode="json")

    settings = IngressSettings(api_token_env="JUSTNEWS_TEST_TOKEN", max_in_flight=4, retry_after_s=3)
    server = IngressServer(settings, agent_map, ModelStore(seeded_store_root), llm=llm, agent=agent,
                           embedding_model="all-MiniLM-L6-v2")
    client = TestClient(build_http_app(server), headers={"Authorization": f"Bearer {TOKEN}"})
    client.server = server  # type: ignore[attr-defined]
    return client


def test_agent_route_validates_input_and_types_output(app):
    reply = app.post("/agents/scout", json=get_spec("scout").example.model_dump(mode="json"))
    assert reply.status_code == 200, reply.text
    assert reply.json()["output"]["dimensions"] == 2
    schema = app.get("/openapi.json").json()
    assert "CriticResponse" in schema["components"]["schemas"]
    assert schema["paths"]["/agents/critic"]["post"]["requestBody"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize("method,path,body,status,error_type", [
    ("POST", "/agents/critic", {"headline": 1}, 400, "invalid_request"),
    ("POST", "/agents/nobody", {}, 404, "unknown_agent"),
    ("POST", "/agents/newsreader", {}, 400, "invalid_request"),  # served; no image (unserved 404: newsreader_http)
    ("POST", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404,
     "model_not_found"),
    ("POST", "/v1/chat/completions", {"model": "base:critic/x@missing", "messages": [{"role": "user", "content": "x"}]},
     404, "adapter_not_found"),
    ("POST", "/v1/chat/completions", {"model": "scout", "messages": [{"role": "user", "content": "x"}]}, 400,
     "invalid_request"),
    ("POST", "/v1/chat/completions", {"model": "base", "n": 2, "messages": [{"role": "user", "content": "x"}]}, 400,
     "invalid_request"),
    ("POST", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "prompt too long"}]},
     413, "request_too_large"),
    ("GET", "/nowhere", None, 404, "not_found"),
])
def test_errors_are_json_with_their_status(app, method, path, body, status, error_type):
    reply = app.request(method, path, json=body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["type"] == error_type


def test_the_bearer_token_guards_every_route(app):
    for path in ("/healthz", "/v1/models"):
        reply = app.get(path, headers={"Authorization": "Bearer nope"})
        assert reply.status_code == 401 and reply.headers["WWW-Authenticate"] == "Bearer"
    assert app.get("/healthz").status_code == 200


def test_over_the_in_flight_limit_answers_503_with_retry_after(app):
    app.server.in_flight = app.server.settings.max_in_flight
    reply = app.get("/v1/models")
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "3"
    assert reply.json()["error"]["type"] == "overloaded"
    assert app.get("/healthz").status_code == 200  # probes pass the limit


def test_chat_completion_and_its_stream_carry_the_same_text(app):
    body = {"model": "critic", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    whole = app.post("/v1/chat/completions", json=body).json()
    assert whole["usage"] == {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17}
    assert whole["system_fingerprint"] == "critic/mistral_critic_v1@current"
    stream = app.post("/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"] and len(chunks) > 3
    assert chunks[-1]["usage"]["completion_tokens"] == 10


def test_models_lists_base_agents_and_adapters(app):
    ids = {m["id"]: m for m in app.get("/v1/models").json()["data"]}
    assert ids["base"]["ref"] == "base_models@v1-tiny-mistral"
    assert ids["critic"]["ref"] == "critic/mistral_critic_v1@seed-1"
    assert "base:critic/mistral_critic_v1@seed-1" in ids
    assert ids["newsreader"]["ref"] == "newsreader/llava_newsreader_v1@seed-1"  # served from its vision pool


def test_pipeline_runs_through_the_agents(app):
    article = {"id": "a", "title": "Bridge approved", "text": "The council approved a bridge. It costs 40 million."}
    reply = app.post("/pipeline/article", json=article)
    assert reply.status_code == 200, reply.text
    assert [s["step"] for s in reply.json()["steps"]][0] == "scout"
