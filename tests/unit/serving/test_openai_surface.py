"""One OpenAI surface over fake deployments (no Ray): ``/v1/models`` lists exactly what ``/v1/chat/completions``
and ``/v1/embeddings`` accept; embeddings in OpenAI's shapes through the real embeddings server; chat completions
pin ``@current`` and take the agents' canary split, recording what each version did."""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest
from fastapi.testclient import TestClient

from agent_graph import get_spec, load_agent_map
from deployments.agent.server import AgentServer
from deployments.embeddings.server import EmbeddingServer
from deployments.ingress.http_app import build_http_app
from deployments.ingress.server import IngressServer, IngressSettings
from deployments.ingress.openai_api import store_pin
from rollout import CanaryController, CanaryRouter
from rollout.router import pin_and_choose
from rollout.state import CanaryBook
from tests.store_helpers import publish_copy

NS = "critic/mistral_critic_v1"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def embedder():
    return EmbeddingServer({"max_texts": 4, "max_chars": 200})


class Surface:
    """The ingress app over a private store, a fake BaseLLM (records the ids it is called with) and the real
    embeddings server."""

    def __init__(self, store, embedder, *, pin: bool = True, canary: bool = True):
        self.store, self.calls = store, []

        async def llm(model_id: str, body: dict) -> dict:
            self.calls.append(model_id)
            if model_id.endswith("@broken"):
                from deployments.errors import AdapterLoadFailedError
                raise AdapterLoadFailedError(f"{model_id}: checksum mismatch")
            return {"text": "fine words", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 2,
                    "adapter": model_id or None, "base": "base_models@v1-tiny-mistral"}

        async def embed(body: dict) -> dict:
            return await embedder.embed(body)

        async def agent(name: str, body: dict, strict: bool) -> dict:
            raise AssertionError("not used")

        self.router = CanaryRouter(store.root, "ingress-r1") if canary else None
        self.server = IngressServer(IngressSettings(), load_agent_map(), store, llm=llm, agent=agent, embed=embed,
                                    embedding_model=EMBEDDING_MODEL, pin=store_pin(store) if pin else None,
                                    canary=self.router)
        self.client = TestClient(build_http_app(self.server))

    def chat(self, model: str, **extra) -> "object":
        return self.client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra})

    def embed(self, model: str = "scout", **body) -> "object":
        return self.client.post("/v1/embeddings", json={"model": model, "input": "The council approved a bridge.",
                                                        **body})


@pytest.fixture
def surface(store, embedder):
    return Surface(store, embedder)


# -- /v1/models: exactly what the two endpoints accept ------------------------------------------------

def test_every_listed_model_is_accepted_by_its_endpoint_and_refused_by_the_other(surface):
    cards = surface.client.get("/v1/models").json()["data"]
    by_endpoint = {}
    for card in cards:
        by_endpoint.setdefault(card["endpoint"], []).append(card["id"])
    assert set(by_endpoint) == {"/v1/chat/completions", "/v1/embeddings"}
    assert sorted(by_endpoint["/v1/embeddings"]) == sorted(["scout", "memory", EMBEDDING_MODEL])
    assert {"base", "critic", f"base:{NS}@seed-1", f"base:{NS}@current"} <= set(by_endpoint["/v1/chat/completions"])
    assert "newsreader" in by_endpoint["/v1/chat/completions"]  # served: a chat model that also reads images
    assert not {"scout", "memory", EMBEDDING_MODEL} & set(by_endpoint["/v1/chat/completions"])
    for model in by_endpoint["/v1/chat/completions"]:
        assert surface.chat(model).status_code == 200, model
        wrong = surface.embed(model)
        assert (wrong.status_code, wrong.json()["error"]["type"]) == (400, "invalid_request"), model
        assert "/v1/chat/completions" in wrong.json()["error"]["message"]
    for model in by_endpoint["/v1/embeddings"]:
        assert surface.embed(model).status_code == 200, model
        wrong = surface.chat(model)
        assert wrong.status_code in (400, 404) and wrong.json()["error"]["message"], model
    assert surface.chat("scout").json()["error"]["message"].endswith("call POST /v1/embeddings")


def test_without_an_embeddings_deployment_nothing_embeds_and_none_is_listed(store, embedder):
    surface = Surface(store, embedder)
    surface.server._embed, surface.server.embedding_model = None, None
    assert all(c["endpoint"] == "/v1/chat/completions" for c in surface.client.get("/v1/models").json()["data"])
    reply = surface.embed()
    assert (reply.status_code, reply.json()["error"]["type"]) == (404, "not_served")


# -- /v1/embeddings ----------------------------------------------------------------------------------

def test_embeddings_answer_in_openai_shapes(surface, embedder):
    texts = ["Flood hits the city centre", "Storm floods the town", "Election results are in"]
    reply = surface.embed("memory", input=texts)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "list" and body["model"] == "memory"
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and {d["object"] for d in body["data"]} == {"embedding"}
    vectors = [d["embedding"] for d in body["data"]]
    assert {len(v) for v in vectors} == {embedder.dimensions}
    assert vectors == embedder.embed_sync({"texts": texts}).vectors
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(texts)
    one = surface.embed(input=texts[0]).json()
    assert len(one["data"]) == 1 and one["data"][0]["embedding"] == pytest.approx(vectors[0], abs=1e-5)
    packed = surface.embed(input=texts, encoding_format="base64").json()
    for item, vector in zip(packed["data"], vectors):
        raw = base64.b64decode(item["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vector, abs=1e-6)
    assert surface.embed(input=texts, dimensions=embedder.dimensions).status_code == 200


@pytest.mark.parametrize("body, status, error_type, words", [
    ({"dimensions": 64}, 400, "invalid_request", ["dimensions (64)", "384"]),
    ({"input": []}, 400, "invalid_request", ["at least one"]),
    ({"input": [1, 2, 3]}, 400, "invalid_request", ["input"]),
    ({"input": ["a"] * 5}, 413, "request_too_large", ["5 texts", "max_texts (4)"]),
    ({"input": ["ok", "x" * 201]}, 413, "request_too_large", ["text 1", "201", "max_chars (200)"]),
    ({"encoding_format": "int8"}, 400, "invalid_request", ["encoding_format"]),
    ({"model": "gpt-embed"}, 404, "model_not_found", ["scout", "memory", EMBEDDING_MODEL]),
])
def test_bad_embedding_requests_get_clear_4xx(surface, body, status, error_type, words):
    reply = surface.embed(**body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["type"] == error_type and all(w in error["message"] for w in words), error


# -- chat: pinned refs and the canary split, as the agents' adapter step -------------------------------

def test_a_chat_pins_current_per_request_and_follows_a_promote(surface, tmp_path):
    first = surface.chat("critic").json()
    assert first["system_fingerprint"] == f"{NS}@seed-1" and surface.calls == [f"{NS}@seed-1"]
    assert surface.chat(f"base:{NS}").json()["system_fingerprint"] == f"{NS}@seed-1"
    publish_copy(surface.store, f"{NS}@seed-1", NS, "v2", tmp_path)  # promoted: current is v2
    assert surface.chat("critic").json()["system_fingerprint"] == f"{NS}@v2"
    assert surface.chat(f"base:{NS}@current").json()["system_fingerprint"] == f"{NS}@v2"
    assert surface.chat(f"base:{NS}@seed-1").json()["system_fingerprint"] == f"{NS}@seed-1"  # named: kept
    assert surface.chat("base").json()["system_fingerprint"] == "base_models@v1-tiny-mistral"


@pytest.mark.parametrize("model, status, error_type", [
    ("base:critic/nope", 404, "adapter_not_found"),
    (f"base:{NS}@v9", 404, "adapter_not_found"),
    ("base:../etc@x", 400, "invalid_request"),
    ("base:", 400, "invalid_request"),
    ("base:base_models@current", 400, "invalid_request"),
    ("gpt-4", 404, "model_not_found"),
])
def test_a_chat_ref_that_cannot_be_pinned_is_a_clear_4xx(surface, model, status, error_type):
    reply = surface.chat(model)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["type"] == error_type and surface.calls == []


@pytest.fixture
def candidate(store, tmp_path):
    publish_copy(store, f"{NS}@seed-1", NS, "v2", tmp_path, promote=False)
    return "v2"


def test_a_running_canary_splits_chats_and_records_both_versions(surface, candidate):
    CanaryController(surface.store).start(NS, candidate, stages=[0.25])
    answered = [surface.chat(m).json()["system_fingerprint"] for m in ["critic", f"base:{NS}"] * 4]
    assert answered.count(f"{NS}@{candidate}") == 2 and answered.count(f"{NS}@seed-1") == 6
    # a caller naming a version is not split
    assert {surface.chat(f"base:{NS}@seed-1").json()["system_fingerprint"] for _ in range(4)} == {f"{NS}@seed-1"}
    surface.server.flush()
    book = CanaryBook(surface.store.root)
    figs = book.stage_figures(book.load(NS))
    assert (figs["candidate"].requests, figs["baseline"].requests) == (2, 6)


def test_a_failing_candidate_is_recorded_as_an_error_and_the_caller_sees_it(surface, tmp_path):
    publish_copy(surface.store, f"{NS}@seed-1", NS, "broken", tmp_path, promote=False)
    CanaryController(surface.store).start(NS, "broken", stages=[0.5])
    statuses = [surface.chat("critic").status_code for _ in range(4)]
    assert sorted(statuses) == [200, 200, 500, 500]  # no fallback on the OpenAI path: the error is the answer
    surface.server.flush()
    book = CanaryBook(surface.store.root)
    figs = book.stage_figures(book.load(NS))
    assert (figs["candidate"].errors, figs["baseline"].errors, figs["baseline"].requests) == (2, 0, 2)


def test_a_mirroring_canary_shadows_chats_to_the_candidate(surface, candidate):
    CanaryController(surface.store).start(NS, candidate, stages=[0.25], mirror=True)

    async def run():
        out = [surface.server.chat(_request("critic")) for _ in range(4)]
        replies = await asyncio.gather(*out)
        await asyncio.sleep(0.05)  # the shadow calls
        return replies

    replies = asyncio.run(run())
    assert sum(r["adapter"].endswith(f"@{candidate}") for r in replies) == 1
    assert surface.calls.count(f"{NS}@{candidate}") == 4  # 1 routed + 3 mirrored
    surface.server.flush()
    book = CanaryBook(surface.store.root)
    figs = book.stage_figures(book.load(NS))
    assert (figs["candidate"].requests, figs["candidate"].mirrored) == (4, 3)


def _request(model: str):
    from deployments.ingress.openai_protocol import ChatCompletionRequest

    return ChatCompletionRequest(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)


def test_chat_and_agent_route_through_the_one_pin_and_choose(store, candidate, monkeypatch):
    """The agents' adapter step and the chat path call the same routing function (nothing copied)."""
    import deployments.agent.server as agent_server
    import deployments.ingress.server as ingress_server

    seen = []

    def spy(model_id, pin, canary):
        seen.append(model_id)
        return pin_and_choose(model_id, pin, canary)

    monkeypatch.setattr(agent_server, "pin_and_choose", spy)
    monkeypatch.setattr(ingress_server, "pin_and_choose", spy)

    async def llm(model_id: str, body: dict) -> dict:
        return {"text": "{}", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1,
                "adapter": model_id, "base": "base_models@v1-tiny-mistral"}

    agent = AgentServer("critic", load_agent_map(), llm=llm, pin=lambda ref: str(store.pin(ref)))
    asyncio.run(agent.answer(get_spec("critic").example))
    server = IngressServer(IngressSettings(), load_agent_map(), store, llm=llm, agent=None, pin=store_pin(store))
    asyncio.run(server.chat(_request("critic")))
    assert seen[0] == seen[-1] == f"{NS}@current"
