"""The JustNews application end to end over HTTP: every agent, the pipeline, the OpenAI surface, errors,
overload, fallback and strict mode, on one cluster started by ``serve run`` (see conftest.py)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from agent_graph import NEWSROOM, get_spec, load_agent_map

from .conftest import BROKEN_ADAPTER, MAX_IN_FLIGHT, TOKEN

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARTICLE = {
    "id": "e2e-1",
    "title": "Council approves new bridge",
    "text": "The city council approved a new river bridge on Monday. The budget is 40 million euros. "
            "Residents said the cost is too high.",
    "evidence": ["The approved budget of the bridge is 40 million euros.", "The football club won on Sunday."],
}
SCHEMA = {"type": "object", "properties": {"headline": {"type": "string", "maxLength": 40},
                                           "score": {"type": "number", "minimum": 0, "maximum": 1}},
          "required": ["headline", "score"], "additionalProperties": False}


def _served():
    agent_map = load_agent_map()
    return agent_map, sorted(n for n, e in agent_map.agents.items() if e.served)


async def _post_all(cluster, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=cluster.url, headers=headers, timeout=300) as client:
        return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))


def _pinned(cluster, ref: str) -> str:
    from modelstore import ModelStore

    return str(ModelStore(cluster.store_root).resolve(ref).ref)


def test_healthz_reports_every_deployment_healthy(cluster):
    _, served = _served()
    with cluster.client() as client:
        health = client.get("/healthz").json()
    expected = {"Ingress", "BaseLLM-fp32", "BaseLLM-bnb-int8", "BaseLLM-llava_tiny-fp32", "Embeddings",
                *(f"Agent-{n}" for n in served)}
    assert health["status"] == "ok"
    assert expected <= set(health["deployments"])
    assert set(health["deployments"].values()) == {"HEALTHY"}


def test_every_agent_answers_its_example_with_a_valid_output(cluster):
    agent_map, served = _served()
    replies = asyncio.run(_post_all(cluster, [(f"/agents/{n}", get_spec(n).example.model_dump(mode="json"))
                                              for n in served]))
    for name, reply in zip(served, replies):
        assert reply.status_code == 200, (name, reply.text)
        body = reply.json()
        spec = get_spec(name)
        spec.validate_output(body["output"], spec.example)  # raises ContractError when it does not fit
        assert body["agent"] == name
        assert body["fallback"] == bool(body["failures"])
        entry = agent_map.entry(name)
        if entry.kind == "llm":
            assert body["usage"]["completion_tokens"] > 0
            if body["step"] == "adapter":
                assert body["answered_by"] == _pinned(cluster, entry.adapter_for(spec.task_of(spec.example)))
        elif body["step"] == "base":
            assert body["answered_by"] == entry.model


def test_pipeline_article_runs_every_step(cluster):
    with cluster.client() as client:
        reply = client.post("/pipeline/article", json=ARTICLE)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["article_id"] == ARTICLE["id"]
    assert [s["step"] for s in result["steps"]] == [s.name for s in NEWSROOM]
    for step in result["steps"]:
        if step["skipped"]:
            continue
        get_spec(step["agent"]).output_model.model_validate(step["output"])
        assert step["answered_by"]


def test_openai_client_lists_models_and_completes_with_a_schema(cluster):
    import openai

    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=TOKEN, max_retries=0, timeout=300)
    ids = {m.id for m in client.models.list().data}
    assert {"base", "critic", "scout", "base:critic/mistral_critic_v1@seed-1", f"base:{BROKEN_ADAPTER}"} <= ids

    reply = client.chat.completions.create(
        model="critic", messages=[{"role": "user", "content": "Rate this headline: bridge approved"}],
        max_tokens=48, response_format={"type": "json_schema", "json_schema": {"name": "rating", "schema": SCHEMA}})
    data = json.loads(reply.choices[0].message.content)
    assert set(data) == {"headline", "score"} and 0 <= data["score"] <= 1
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.system_fingerprint == _pinned(cluster, "critic/mistral_critic_v1@current")


def test_openai_client_streams_server_sent_events(cluster):
    import openai

    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=TOKEN, max_retries=0, timeout=300)
    request = dict(model="base:analyst/mistral_analyst_v1@seed-1", max_tokens=24, temperature=0,
                   messages=[{"role": "user", "content": "Summarise: the council approved a bridge."}])
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize("method,path,body,headers,status,error_type", [
    ("POST", "/agents/critic", {"headline": 3}, None, 400, "invalid_request"),
    ("POST", "/agents/critic", "not json", None, 400, "invalid_request"),
    ("POST", "/v1/chat/completions", {"model": "base", "messages": []}, None, 400, "invalid_request"),
    ("POST", "/agents/no_such_agent", {}, None, 404, "unknown_agent"),
    ("POST", "/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
     None, 404, "model_not_found"),
    ("POST", "/v1/chat/completions", {"model": "base:critic/nope@v9", "messages": [{"role": "user", "content": "x"}]},
     None, 404, "adapter_not_found"),
    ("POST", "/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "news " * 4000}]},
     None, 413, "request_too_large"),
    ("GET", "/v1/models", None, {"Authorization": "Bearer wrong"}, 401, "unauthorized"),
    ("GET", "/healthz", None, {"Authorization": ""}, 401, "unauthorized"),
])
def test_a_bad_request_gets_its_status_and_a_json_error(cluster, method, path, body, headers, status, error_type):
    with cluster.client() as client:
        kwargs = {"content": body} if isinstance(body, str) else {"json": body}
        reply = client.request(method, path, headers=headers, **kwargs)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["type"] == error_type and error["status"] == status and error["message"]


def test_overload_answers_503_with_retry_after(cluster):
    body = {"model": "base", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}
    replies = asyncio.run(_post_all(cluster, [("/v1/chat/completions", body)] * (3 * MAX_IN_FLIGHT)))
    statuses = [r.status_code for r in replies]
    assert set(statuses) == {200, 503}, statuses
    overloaded = [r for r in replies if r.status_code == 503]
    assert all(r.headers["Retry-After"].isdigit() for r in overloaded)
    assert all(r.json()["error"]["type"] == "overloaded" for r in overloaded)


def _summary_request() -> dict:
    return {"task": "summary", "articles": [{"title": ARTICLE["title"], "text": ARTICLE["text"]}]}


def test_a_corrupt_adapter_falls_back_says_so_and_is_counted(cluster):
    with cluster.client() as client:
        before = client.get("/stats").json()["agents"]["synthesizer"]["fallbacks"]
        reply = client.post("/agents/synthesizer", json=_summary_request())
        after = client.get("/stats").json()["agents"]["synthesizer"]["fallbacks"]
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["fallback"] is True and body["step"] in ("base", "legacy")
    assert body["failures"][0]["route"] == f"adapter:{BROKEN_ADAPTER}"
    assert "AdapterLoadFailedError" in body["failures"][0]["reason"]
    if body["step"] == "base":
        assert body["answered_by"] == _pinned(cluster, "base_models@current")
    get_spec("synthesizer").output_model.model_validate(body["output"])
    key = f"adapter->{body['step']}"
    assert after.get(key, 0) == before.get(key, 0) + 1


def test_strict_mode_refuses_to_fall_back(cluster):
    with cluster.client() as client:
        reply = client.post("/agents/synthesizer", params={"strict": "true"}, json=_summary_request())
    assert reply.status_code == 503, reply.text
    error = reply.json()["error"]
    assert error["type"] == "agent_unavailable"
    assert BROKEN_ADAPTER in error["message"] and "strict" in error["message"]


def test_hot_swap_under_load_loses_no_request_and_names_each_version(cluster, tmp_path):
    """Promote two new adapter versions while a bounded load runs: no failure, no fallback, every
    response names its version, and each caller sees versions only move forward (agents pin
    ``@current`` when a request starts; the BaseLLM replica is never restarted)."""
    import shutil
    import threading
    import time

    from modelstore import ModelStore

    store = ModelStore(cluster.store_root)
    order = ["seed-1", "hot-2", "hot-3"]
    sources = {}
    for version, donor in zip(order[1:], ("journalist", "reasoning")):  # different weights, same base
        sources[version] = shutil.copytree(store.adapter_path(f"{donor}/mistral_{donor}_v1@seed-1"),
                                           tmp_path / version, ignore=shutil.ignore_patterns("manifest.json"))
    body = get_spec("analyst").example.model_dump(mode="json")
    seen: list[list[str]] = [[] for _ in range(3)]
    errors: list[str] = []
    done = threading.Event()

    def caller(i: int) -> None:
        with cluster.client() as client:
            # after the last promote, a request already in flight may still finish on the previous version:
            # keep calling until this caller is answered by the last one (bounded by the 60-call cap)
            while not done.is_set() or len(seen[i]) < 3 or seen[i][-1] != order[-1]:
                reply = client.post("/agents/analyst", json=body)
                if reply.status_code != 200 or reply.json()["fallback"]:
                    errors.append(reply.text)
                    return
                seen[i].append(reply.json()["answered_by"].split("@")[1])
                if len(seen[i]) > 60:
                    return

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for version in order[1:]:
            while sum(map(len, seen)) < 3 * (order.index(version)) and not errors:
                threading.Event().wait(0.2)
            store.publish_adapter("analyst", "mistral_analyst_v1", sources[version], version)
            deadline = time.monotonic() + 120
            # the next swap only once a caller was answered by this version (requests started before
            # the promote may still finish on the previous one)
            while not any(version in calls for calls in seen) and not errors and time.monotonic() < deadline:
                threading.Event().wait(0.2)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=300)
    assert errors == []
    for calls in seen:
        ranks = [order.index(v) for v in calls]
        assert ranks == sorted(ranks), calls  # a caller never goes back to an older version
    assert {v for calls in seen for v in calls} == set(order)
    assert all(calls[-1] == "hot-3" for calls in seen)


def test_each_agent_is_answered_by_the_pool_its_preferences_require(cluster):
    """Two base pools from the plan (fp32 on the CPU, bnb-int8 for the agents that prefer it); the response
    and /stats say which pool answered, and /stats reads back what each pool's replica loaded."""
    agent_map, served = _served()
    llm = [n for n in served if agent_map.agents[n].kind == "llm"]
    replies = asyncio.run(_post_all(cluster, [(f"/agents/{n}", get_spec(n).example.model_dump(mode="json"))
                                              for n in llm]))
    answered = {}
    for name, reply in zip(llm, replies):
        assert reply.status_code == 200, (name, reply.text)
        body = reply.json()
        answered[name] = body["pool"]
        if body["step"] == "legacy":
            assert body["pool"] is None
            continue
        assert body["pool"] == ("BaseLLM-bnb-int8" if name in ("analyst", "re_ranker") else "BaseLLM-fp32"), name
        if not agent_map.agents[name].allow_quantized:
            assert body["pool"] != "BaseLLM-bnb-int8"
    assert "BaseLLM-bnb-int8" in answered.values() and "BaseLLM-fp32" in answered.values()
    with cluster.client() as client:
        stats = client.get("/stats").json()
    for pool, variant in (("BaseLLM-fp32", "fp32"), ("BaseLLM-bnb-int8", "bnb-int8")):
        loaded = stats["pools"][pool]["loaded"]  # read from the replica, not from the plan
        assert (loaded["pool"], loaded["variant"], loaded["device"]) == (pool, variant, "cpu")
        assert loaded["weight_bytes"] > 0 and loaded["mismatches"] == []
        assert loaded["planned"]["variant"] == variant and loaded["planned"]["inventory"] == "e2e-cpu"
    for agent in ("critic", "chief_editor", "fact_checker"):
        assert stats["agents"][agent]["pools"]["route"] == ["BaseLLM-fp32"]
    assert stats["agents"]["analyst"]["pools"]["route"] == ["BaseLLM-bnb-int8", "BaseLLM-fp32"]
    assert stats["agents"]["analyst"]["pools"]["answered"].get("BaseLLM-bnb-int8", 0) >= 1
