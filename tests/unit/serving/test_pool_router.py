"""PoolRouter and AgentServer over per-variant pools: the next pool only when one is unavailable, and a
never-quantised agent never reaches an int8 pool, even with its own pool dead."""

from __future__ import annotations

import asyncio
import json

import pytest
from ray.exceptions import ActorDiedError

from agent_graph import get_spec, load_agent_map, run_heuristic
from cluster import AgentNeed, assign_pools
from cluster.demand import BaseFacts
from deployments.agent.server import AgentServer
from deployments.errors import AdapterLoadFailedError
from deployments.agent.pool_router import PoolRouter, PoolUnavailableError, is_pool_unavailable

BASE = BaseFacts(ref="base_models@v1-tiny-mistral", approx_vram_mb={"fp32": 40, "bf16": 20, "bnb-int8": 15})


def _valid_text(agent: str) -> str:
    spec = get_spec(agent)
    legacy = load_agent_map().legacy[agent].target
    return json.dumps(spec.validate_output(run_heuristic(legacy, spec.example), spec.example).model_dump(mode="json"))


def _pool(name: str, *, dead: bool = False, error: Exception | None = None, calls: list | None = None):
    """A fake pool: answers with a valid reply for the agent the model id names, or fails."""

    async def call(model_id: str, body: dict) -> dict:
        if calls is not None:
            calls.append((name, model_id))
        if dead:
            raise ActorDiedError()
        if error is not None:
            raise error
        agent = body["agent"]
        return {"text": _valid_text(agent), "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 2,
                "adapter": model_id or None, "base": BASE.ref}

    return call


def test_unavailability_is_recognised_through_ray_wrappers():
    class Wrapped(Exception):
        def __init__(self, cause):
            self.cause = cause
    assert is_pool_unavailable(ActorDiedError()) and is_pool_unavailable(Wrapped(ActorDiedError()))
    assert not is_pool_unavailable(AdapterLoadFailedError("bad checksum"))


def test_the_next_pool_answers_only_when_the_first_is_unavailable():
    calls: list = []
    router = PoolRouter([("BaseLLM-fp32", _pool("BaseLLM-fp32", dead=True, calls=calls)),
                         ("BaseLLM-bnb-int8", _pool("BaseLLM-bnb-int8", calls=calls))])
    reply = asyncio.run(router("synthesizer/x@v1", {"agent": "synthesizer"}))
    # the dead pool is tried twice (another replica could have taken it), then the next pool answers
    assert reply["pool"] == "BaseLLM-bnb-int8"
    assert [c[0] for c in calls] == ["BaseLLM-fp32", "BaseLLM-fp32", "BaseLLM-bnb-int8"]
    stats = router.stats()
    assert set(stats.pop("last_unavailable_at")) == {"BaseLLM-fp32"}  # /healthz reads it
    assert stats == {"route": ["BaseLLM-fp32", "BaseLLM-bnb-int8"], "answered": {"BaseLLM-bnb-int8": 1},
                     "unavailable": {"BaseLLM-fp32": 2}, "retried": {"BaseLLM-fp32": 1}}
    failing = PoolRouter([("A", _pool("A", error=AdapterLoadFailedError("corrupt"))), ("B", _pool("B"))])
    with pytest.raises(AdapterLoadFailedError):  # another pool would not fix a bad adapter
        asyncio.run(failing("synthesizer/x@v1", {"agent": "synthesizer"}))
    with pytest.raises(PoolUnavailableError, match=r"no pool of the route \['A'\] is available \(A: ActorDiedError; A: "):
        asyncio.run(PoolRouter([("A", _pool("A", dead=True))])("", {"agent": "critic"}))


def _agents_over(pools: dict[str, dict]) -> dict[str, AgentServer]:
    """Every llm agent of the shipped map on the routes assign_pools gives it (CPU: fp32 + bnb-int8)."""
    agent_map = load_agent_map()
    needs = [AgentNeed(agent=n, variant_preference=tuple(e.variant_preference), allow_quantized=e.allow_quantized)
             for n, e in agent_map.agents.items() if e.kind == "llm" and e.served]
    layout = assign_pools(needs, BASE, device="cpu")
    assert {p.name for p in layout.pools} == set(pools)
    servers = {}
    for need in needs:
        router = PoolRouter([(p, _pool(p, **pools[p])) for p in layout.routes[need.agent]])

        async def llm(model_id, body, router=router, agent=need.agent):
            return await router(model_id, {**body, "agent": agent})

        servers[need.agent] = AgentServer(need.agent, agent_map, llm=llm)
    return servers


def test_each_agent_is_answered_by_the_pool_its_preferences_require():
    servers = _agents_over({"BaseLLM-fp32": {}, "BaseLLM-bnb-int8": {}})
    for agent, server in servers.items():
        reply = asyncio.run(server.answer(get_spec(agent).example))
        assert reply.step == "adapter"
        assert reply.pool == ("BaseLLM-bnb-int8" if agent in ("analyst", "re_ranker") else "BaseLLM-fp32")


def test_with_the_full_precision_pool_dead_never_quantized_agents_fall_back_and_never_reach_int8():
    servers = _agents_over({"BaseLLM-fp32": {"dead": True}, "BaseLLM-bnb-int8": {}})
    for agent, server in servers.items():
        reply = asyncio.run(server.answer(get_spec(agent).example))
        assert reply.unavailable_pools == ["BaseLLM-fp32"] or agent in ("analyst", "re_ranker")
        if load_agent_map().agents[agent].allow_quantized:
            assert (reply.step, reply.pool) == ("adapter", "BaseLLM-bnb-int8")
        else:  # its route has only its own pool: adapter and bare base fail there, the legacy step answers
            assert (reply.step, reply.pool, reply.fallback) == ("legacy", None, True)
            assert [f.route.split(":")[0] for f in reply.failures] == ["adapter", "base"]
            assert all("PoolUnavailableError" in f.reason for f in reply.failures)


def test_a_dead_replica_is_retried_on_the_same_pool_before_the_next():
    attempts: list = []

    async def one_dead_replica(model_id: str, body: dict) -> dict:
        attempts.append(model_id)
        if len(attempts) == 1:  # the in-flight request on the replica that died
            raise ActorDiedError()
        return {"text": "{}", "finish_reason": "stop"}

    router = PoolRouter([("BaseLLM-fp32", one_dead_replica), ("BaseLLM-bnb-int8", _pool("BaseLLM-bnb-int8"))])
    reply = asyncio.run(router("critic/x@v1", {"agent": "critic"}))
    assert reply["pool"] == "BaseLLM-fp32" and len(attempts) == 2
    assert reply["unavailable_pools"] == ["BaseLLM-fp32"]  # the ingress turns /healthz degraded on it
    assert router.stats()["retried"] == {"BaseLLM-fp32": 1}


def test_a_hung_pool_costs_the_deadline_then_the_legacy_step_answers():
    async def hung(model_id: str, body: dict) -> dict:
        await asyncio.sleep(3600)

    server = AgentServer("critic", load_agent_map(), llm=hung, deadline_s=0.2)
    reply = asyncio.run(server.answer(get_spec("critic").example))
    assert (reply.step, reply.fallback) == ("legacy", True)
    assert [f.route.split(":")[0] for f in reply.failures] == ["adapter", "base"]
    assert "DeadlineExceededError" in reply.failures[0].reason and "0.2s deadline" in reply.failures[0].reason
    assert "passed before this step" in reply.failures[1].reason  # the adapter step used it all
    with pytest.raises(ValueError, match=r"deadline_s \(0\) must be > 0"):
        AgentServer("critic", load_agent_map(), llm=hung, deadline_s=0)
