"""A pipeline run holds its article while the review items of its steps are undecided.

The ingress runs the newsroom pipeline over real AgentServers whose model calls fail (every llm step is then
answered by its legacy heuristic, and the map's 'fallback' rule sends it to review); each agent's review hook
queues its items as the agent replicas do; the ingress records the hold, and ``GET /hitl/articles/{id}``
says the article is held until an editor has decided every held step.
"""

from __future__ import annotations


from fastapi.testclient import TestClient

from agent_graph import load_agent_map
from deployments.agent.server import AgentServer
from deployments.review.auth import Reviewers
from deployments.review.metrics import review_hook
from deployments.review.routes import HitlService, install_hitl
from deployments.ingress.http_app import build_http_app
from deployments.ingress.server import IngressServer, IngressSettings
from hitl import HeldStep

from .conftest import example_item

ARTICLE = {"id": "a-42", "title": "Council approves bridge",
           "text": "The council approved a bridge on Monday. It costs 40 million euros.",
           "evidence": ["The approved budget is 40 million euros."]}


def _ingress(hitl_store, monkeypatch):
    monkeypatch.delenv("JUSTNEWS_API_TOKEN", raising=False)
    monkeypatch.delenv("JUSTNEWS_ADMIN_TOKEN", raising=False)
    agent_map = load_agent_map()

    async def pool_down(model_id: str, body: dict) -> dict:
        raise ConnectionError("no BaseLLM replica")

    async def embed(body: dict) -> dict:
        return {"model": "mini", "dimensions": 2, "vectors": [[0.6, 0.8] for _ in body["texts"]]}

    agents = {n: AgentServer(n, agent_map, llm=pool_down if e.kind in ("llm", "multimodal") else None,
                             embed=embed if e.kind == "embedding" else None)
              for n, e in agent_map.agents.items() if e.served}
    hooks = {n: review_hook(n, agent_map.entry(n), store_root=None, url=hitl_store.url) for n in agents}

    async def agent(name: str, body: dict, strict: bool) -> dict:  # what AgentDeployment.answer does
        reply = (await agents[name].answer(body, strict=strict)).model_dump(mode="json")
        if hooks[name] is not None:
            hooks[name].offer(body, reply)
        return reply

    server = IngressServer(IngressSettings(), agent_map, None, llm=pool_down, agent=agent)
    app = build_http_app(server)
    svc = HitlService(hitl_store, reviewers=Reviewers.parse(""))
    install_hitl(app, svc)
    return TestClient(app), server, svc, [h for h in hooks.values() if h is not None]


def test_pipeline_holds_the_article_until_its_items_are_decided(hitl_store, monkeypatch):
    client, server, svc, hooks = _ingress(hitl_store, monkeypatch)
    assert server.on_held == svc.hold_later  # install_hitl wired the ingress' pipeline to the queue
    reply = client.post("/pipeline/article", json=ARTICLE)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["held"] is True
    llm_steps = [s["step"] for s in body["steps"] if not s["skipped"] and s["agent"] != "scout"]
    assert set(body["review"]) == set(llm_steps) and all("fallback" in r for r in body["review"].values())
    for hook in hooks:
        assert hook.router.writer.flush(10)
    svc._holds.submit(lambda: None).result(10)  # the hold write ran

    status = client.get(f"/hitl/articles/{ARTICLE['id']}").json()
    assert status["held"] is True and {s["step"] for s in status["steps"]} == set(llm_steps)
    assert all(s["state"] == "pending" and s["item_id"] for s in status["steps"])
    first, *rest = status["steps"]
    assert client.post(f"/hitl/items/{first['item_id']}/decision",
                       json={"reviewer": "editor", "action": "approve"}).status_code == 200
    assert client.get(f"/hitl/articles/{ARTICLE['id']}").json()["held"] is True
    for step in rest:
        client.post(f"/hitl/items/{step['item_id']}/decision", json={"reviewer": "editor", "action": "reject"})
    released = client.get(f"/hitl/articles/{ARTICLE['id']}").json()
    assert released["held"] is False and {s["state"] for s in released["steps"]} == {"approved", "rejected"}
    assert client.get("/hitl/articles/never-seen").json() == {"article_id": "never-seen", "held": False, "steps": []}


def test_a_step_whose_item_never_arrives_stops_holding_after_the_grace(hitl_store):
    item = example_item()
    hitl_store.hold("a-1", [HeldStep("critic", "critic", item.input, item.output, ("blocking_verdict",))])
    assert hitl_store.article("a-1")["steps"][0]["state"] == "queueing"
    assert hitl_store.article("a-1")["held"] is True
    later = hitl_store.article("a-1", grace_s=-1)
    assert later["held"] is False and later["steps"][0]["state"] == "not_queued"
    hitl_store.enqueue(item)  # the agent's write lands after all
    assert hitl_store.article("a-1", grace_s=-1)["steps"][0]["state"] == "pending"


def test_hold_writes_never_fail_the_pipeline(tmp_path, monkeypatch):
    from hitl import ReviewStore

    broken = HitlService(lambda: ReviewStore(f"sqlite:///{tmp_path}"), reviewers=Reviewers.parse(""))
    item = example_item()
    broken.hold_later("a-2", [HeldStep("critic", "critic", item.input, item.output, ("fallback",))])
    broken._holds.submit(lambda: None).result(10)
    assert broken.hold_failures == 1
