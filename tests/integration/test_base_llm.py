"""The BaseLLM deployment on a real local Ray cluster: multiplexing, mixed batching, eviction, errors,
runtime reconfiguration and the HTTP path.

All tests share one application (one replica); counters are compared before and after, so the tests do
not depend on their order. Each test sets the runtime config it needs.
"""

from __future__ import annotations

import httpx
import pytest

from deployments.errors import AdapterLoadFailedError, AdapterNotFoundError, InvalidRequestError

from .conftest import BROKEN_ADAPTER, INITIAL_RUNTIME, ROUTE, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Spellings differ between tests on purpose: Serve's multiplexer keys its LRU by the id string.
PINNED = {
    "synthesizer/mistral_synthesizer_v1@seed-1": "synthesizer/mistral_synthesizer_v1@seed-1",
    "journalist/mistral_journalist_v1@seed-1": "journalist/mistral_journalist_v1@seed-1",
    "critic/mistral_critic_v1@seed-1": "critic/mistral_critic_v1@seed-1",
}
CURRENT = {
    "analyst/mistral_analyst_v1": "analyst/mistral_analyst_v1@seed-1",
    "journalist/mistral_journalist_v1@current": "journalist/mistral_journalist_v1@seed-1",
    "synthesizer/mistral_synthesizer_v1": "synthesizer/mistral_synthesizer_v1@seed-1",
}


def _results(responses, timeout_s: float = 120):
    return [r.result(timeout_s=timeout_s) for r in responses]


def test_each_adapter_loads_once_on_one_replica(llm_app):
    llm_app.deploy(INITIAL_RUNTIME)
    before = llm_app.stats()
    outs = _results([llm_app.generate(model_id) for model_id in PINNED])
    warm = llm_app.stats()
    for _ in range(2):
        outs += _results([llm_app.generate(model_id) for model_id in PINNED])
    after = llm_app.stats()

    assert {o["replica_id"] for o in outs} == {before["replica_id"]}
    for out in outs:
        assert out["adapter"] == PINNED[out["model_id"]]
        assert out["completion_tokens"] >= 1
    for model_id, pinned in PINNED.items():
        assert warm["adapter_loads"][model_id] - before["adapter_loads"].get(model_id, 0) <= 1
        assert after["adapter_loads"][model_id] == warm["adapter_loads"][model_id], "resident adapter reloaded"
        assert model_id in after["multiplexed_model_ids"]
        assert pinned in after["engine"]["loaded_adapters"]
        assert after["engine_adapter_loads"][pinned] == warm["engine_adapter_loads"][pinned]


@pytest.mark.parametrize("scheduling", ["continuous", "static"])
def test_requests_for_different_adapters_share_one_forward_pass(llm_app, scheduling):
    llm_app.deploy({**INITIAL_RUNTIME, "scheduling": scheduling})
    before = llm_app.stats()
    model_ids = [*PINNED, ""] * 2  # "" is the bare base
    # Long enough replies (EOS ignored) that every request is still decoding when the last one arrives.
    outs = _results([llm_app.generate(model_id, max_new_tokens=48, ignore_eos=True) for model_id in model_ids])
    after = llm_app.stats()

    assert [o["model_id"] for o in outs] == model_ids
    assert [o["adapter"] for o in outs] == [PINNED.get(m) for m in model_ids]
    assert after["engine"]["rows"] - before["engine"]["rows"] == len(model_ids)
    if scheduling == "static":
        assert after["batches"]["mixed_batches"] > before["batches"]["mixed_batches"]
        assert after["batches"]["max_distinct_keys"] >= 2
        assert after["batches"]["items"] - before["batches"]["items"] == len(model_ids)
    else:  # joined the running batch: decode steps mixed adapters, and the static batcher never ran
        engine, was = after["engine"], before["engine"]
        assert engine["continuous_mixed_steps"] > was.get("continuous_mixed_steps", 0)
        assert engine["continuous_max_distinct_adapters"] >= 2
        assert after["batches"]["items"] == before["batches"]["items"]


def test_lru_evicts_and_unloads_then_reloads_on_demand(llm_app):
    llm_app.deploy({**INITIAL_RUNTIME, "max_num_models_per_replica": 2})
    stats = llm_app.stats()
    assert len(stats["multiplexed_model_ids"]) <= 2  # lowering the limit evicted down to it
    first, second, third = CURRENT
    before = stats["adapter_loads"].get(first, 0)

    for model_id in (first, second, third):  # the third evicts the least recently used: first
        _results([llm_app.generate(model_id)])
    stats = llm_app.stats()
    assert stats["multiplexed_model_ids"] == [second, third]
    assert stats["adapter_evictions"].get(first, 0) >= 1
    assert CURRENT[first] not in stats["engine"]["loaded_adapters"], "evicted adapter still in the engine"

    out = _results([llm_app.generate(first)])[0]
    stats = llm_app.stats()
    assert out["adapter"] == CURRENT[first]
    assert stats["adapter_loads"][first] == before + 2
    assert stats["multiplexed_model_ids"] == [third, first]
    assert len(stats["engine"]["loaded_adapters"]) <= 2


def test_reconfigure_changes_batch_size_without_restart(llm_app):
    llm_app.deploy(INITIAL_RUNTIME)
    replica = llm_app.stats()["replica_id"]

    llm_app.deploy({**INITIAL_RUNTIME, "max_batch_size": 2, "scheduling": "static"})
    before = llm_app.stats()
    assert before["replica_id"] == replica
    assert before["runtime"]["max_batch_size"] == 2 and before["engine"]["max_running_rows"] == 2
    _results([llm_app.generate(m) for m in [*PINNED, *PINNED]])
    after = llm_app.stats()
    new_batches = after["batches"]["batches"] - before["batches"]["batches"]
    assert new_batches >= 3  # six requests, at most two per batch
    assert max(after["batches"]["recent_batch_sizes"][-new_batches:]) <= 2

    # The continuous loop runs at most two rows at once too: the others wait for a slot.
    llm_app.deploy({**INITIAL_RUNTIME, "max_batch_size": 2, "scheduling": "continuous"})
    _results([llm_app.generate(m, max_new_tokens=24, ignore_eos=True) for m in [*PINNED, *PINNED]])
    engine = llm_app.stats()["engine"]
    assert max(engine["continuous_recent_batch_sizes"]) <= 2  # the last 32 steps: all of these requests

    llm_app.deploy(INITIAL_RUNTIME)
    stats = llm_app.stats()
    assert stats["replica_id"] == replica and stats["engine"]["max_running_rows"] == 8


@pytest.mark.parametrize(
    ("model_id", "error", "reason"),
    [
        ("critic/no_such_adapter@v1", AdapterNotFoundError, "not_found"),
        ("critic/mistral_critic_v1@no-such-version", AdapterNotFoundError, "not_found"),
        ("../../etc/passwd", InvalidRequestError, "invalid_ref"),
        (BROKEN_ADAPTER, AdapterLoadFailedError, "load_error"),
    ],
)
def test_failed_adapter_load_is_a_clear_error_and_the_replica_stays_healthy(llm_app, model_id, error, reason):
    from ray import serve

    llm_app.deploy(INITIAL_RUNTIME)
    before = llm_app.stats()
    with pytest.raises(error) as info:
        llm_app.generate(model_id).result(timeout_s=60)
    assert model_id.split("@")[0] in str(info.value) or reason == "invalid_ref"

    after = llm_app.stats()
    failures = sum(after["metrics"]["adapter_load_failures"].values())
    assert failures == sum(before["metrics"]["adapter_load_failures"].values()) + 1
    assert any(key.endswith(f":{reason}") for key in after["metrics"]["adapter_load_failures"])
    assert after["replica_id"] == before["replica_id"]
    assert model_id not in after["multiplexed_model_ids"]
    ok = llm_app.generate("synthesizer/mistral_synthesizer_v1@seed-1").result(timeout_s=60)
    assert ok["adapter"] == "synthesizer/mistral_synthesizer_v1@seed-1"
    status = serve.status().applications["llm"].deployments["BaseLLM"].status
    assert status == "HEALTHY"


def test_http_with_multiplexed_model_id_header(llm_app):
    llm_app.deploy(INITIAL_RUNTIME)
    url = llm_app.http_url + ROUTE
    body = {"messages": [{"role": "user", "content": "Headline?"}], "max_new_tokens": 3, "request_id": "r-1"}
    with httpx.Client(timeout=60) as client:
        ok = client.post(url, json=body, headers={"serve_multiplexed_model_id": "critic/mistral_critic_v1@seed-1"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["adapter"] == "critic/mistral_critic_v1@seed-1"
        assert ok.json()["request_id"] == "r-1"

        base = client.post(url, json={"prompt": "[INST] hi [/INST]", "max_new_tokens": 2})
        assert base.status_code == 200 and base.json()["adapter"] is None

        cases = [
            (dict(content=b"{not json"), {}, 400, "invalid_request"),
            (dict(json={"max_new_tokens": 2}), {}, 400, "invalid_request"),
            (dict(json={"prompt": "x", "max_new_tokens": 1_000}), {}, 413, "request_too_large"),  # > engine's 512
            (dict(json={"prompt": "x", "max_new_tokens": 100_000}), {}, 400, "invalid_request"),  # admission limit
            (dict(json=body), {"serve_multiplexed_model_id": "critic/nope@v1"}, 404, "adapter_not_found"),
        ]
        for kwargs, headers, status, error_type in cases:
            resp = client.post(url, headers=headers, **kwargs)
            assert resp.status_code == status, resp.text
            assert resp.json()["error"]["type"] == error_type


def test_ray_multiplexing_tracks_the_same_adapters(llm_app):
    """Ray's multiplexer (source of the ray_serve_multiplexed_* metrics) holds exactly the resident ids."""
    llm_app.deploy(INITIAL_RUNTIME)
    _results([llm_app.generate(m) for m in PINNED])
    stats = wait_for(lambda: llm_app.stats(), what="stats")
    assert set(PINNED) <= set(stats["multiplexed_model_ids"])
    pinned_resident = {PINNED.get(m, CURRENT.get(m)) for m in stats["multiplexed_model_ids"]}
    assert pinned_resident == set(stats["resident_adapters"])


def test_deleting_the_app_lets_queued_requests_finish(serve_cluster, model_store):
    """Graceful shutdown, on its own app built imperatively with build_base_llm and serve.run."""
    from ray import serve

    from deployments.base_llm.deployment import build_base_llm

    settings = {
        "store_root": str(model_store),
        "deployment_name": "DrainLLM",
        "ray_actor_options": {"num_cpus": 1},
        "runtime": {"max_batch_size": 8, "batch_wait_timeout_s": 2.0, "scheduling": "static"},
    }
    handle = serve.run(build_base_llm(settings), name="llm-drain", route_prefix="/drain")
    model_ids = [*PINNED, ""]
    body = {"prompt": "[INST] Last call [/INST]", "max_new_tokens": 3}
    for model_id in PINNED:  # load the adapters first, so the requests below reach the batcher at once
        handle.options(multiplexed_model_id=model_id).generate.remote(body).result(timeout_s=60)
    responses = [handle.options(multiplexed_model_id=m).generate.remote(body) for m in model_ids]
    # The batcher holds them for up to 2 s waiting for a fuller batch: delete the app meanwhile.
    wait_for(lambda: handle.stats.remote().result(timeout_s=30)["queue_depth"] == len(model_ids),
             timeout_s=30, interval_s=0.05, what="requests to be queued in the replica")
    serve.delete("llm-drain", _blocking=False)
    outs = _results(responses, timeout_s=60)
    assert [o["adapter"] for o in outs] == [PINNED.get(m) for m in model_ids]
    wait_for(lambda: "llm-drain" not in serve.status().applications, what="the app to be deleted")


def test_the_streamed_call_beats_then_answers_as_generate_does(llm_app):
    """generate_stream sends heartbeats while the batcher holds a request, then the same answer as generate;
    pool_call (what agents and the ingress use) returns it, and a caller's error arrives as the same error."""
    import asyncio

    from deployments.base_llm.client import pool_call

    # The batcher waits 1 s for a fuller batch: heartbeats every 0.1 s must arrive meanwhile.
    llm_app.deploy({**INITIAL_RUNTIME, "batch_wait_timeout_s": 1.0, "scheduling": "static"})
    model_id = next(iter(PINNED))
    body = {"prompt": "[INST] Summarise the news [/INST]", "max_new_tokens": 3, "temperature": 0}
    stream = llm_app.handle.options(multiplexed_model_id=model_id, stream=True).generate_stream.remote(body, 0.1)
    messages = list(stream)
    beats = [m["heartbeat"] for m in messages[:-1]]
    assert beats == list(range(len(beats))) and len(beats) >= 5, messages
    streamed = messages[-1]["result"]
    plain = llm_app.handle.options(multiplexed_model_id=model_id).generate.remote(body).result(timeout_s=60)
    assert streamed["adapter"] == plain["adapter"] == PINNED[model_id]
    assert streamed["text"] == plain["text"]

    async def both():
        call = pool_call(llm_app.handle, silence_s=5.0)
        answer = await call(model_id, body)
        with pytest.raises(AdapterNotFoundError):
            await call("critic/nope@v1", body)
        return answer

    assert asyncio.run(both())["text"] == plain["text"]
    llm_app.deploy(INITIAL_RUNTIME)
