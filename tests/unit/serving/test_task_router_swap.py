"""A multi-adapter agent (the synthesizer's task router: one adapter per task) swaps one task's adapter
while both tasks are served: the other task keeps its version and its resident adapter (never reloaded),
requests already running finish on the old version, and no adapter fails to load. Real engine, real store.

The seeded adapters are random, so their replies rarely fit the contract and the agent then falls back to
the base; which adapter version each request's first step used is what this test is about."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter

from agent_graph import default_map_path, get_spec, load_agent_map
from agent_graph.schema import RECOMMENDED_FILE
from deployments.agent.server import AgentServer
from deployments.base_llm.server import BaseLLMServer
from deployments.base_llm.settings import BaseLLMSettings
from tests.store_helpers import publish_copy

SUMMARY, SYNTHESIS = "synthesizer/mistral_summary_v1", "synthesizer/mistral_synthesis_v1"


def _task_router_map(tmp_path):
    data = json.loads(default_map_path().read_text())
    data["agents"]["synthesizer"]["task_adapters"] = {"summary": f"{SUMMARY}@current",
                                                      "synthesis": f"{SYNTHESIS}@current"}
    path = tmp_path / "AGENT_MODEL_MAP.json"
    path.write_text(json.dumps(data))
    shutil.copy(default_map_path().with_name(RECOMMENDED_FILE), tmp_path / RECOMMENDED_FILE)
    return load_agent_map(path)


def _publish(store, tmp_path, name: str, version: str) -> None:
    publish_copy(store, "synthesizer/mistral_synthesizer_v1@seed-1", f"synthesizer/{name}", version, tmp_path)


def test_swapping_one_task_adapter_leaves_the_other_task_alone(store, tmp_path):
    _publish(store, tmp_path, "mistral_summary_v1", "s1")
    _publish(store, tmp_path, "mistral_synthesis_v1", "y1")
    llm_server = BaseLLMServer(BaseLLMSettings(store_root=str(store.root), runtime={"max_batch_size": 8}))

    calls: list[str] = []
    cache: dict[str, object] = {}  # what Serve's multiplexer does: keep each model id's handle

    async def llm(model_id: str, body: dict) -> dict:
        calls.append(model_id)
        if model_id and model_id not in cache:  # '' is the bare base
            cache[model_id] = await llm_server.acquire_adapter(model_id)
        return (await llm_server.generate(body, cache.get(model_id), model_id)).model_dump()

    agent = AgentServer("synthesizer", _task_router_map(tmp_path), llm=llm, pin=lambda ref: str(store.pin(ref)))
    spec = get_spec("synthesizer")
    synthesis = spec.example.model_dump(mode="json")
    summary = {"task": "summary", "articles": synthesis["articles"][:1]}
    assert spec.task_of(spec.load_input(synthesis)) == "synthesis"

    async def round_of(n: int, swap_to: str | None = None):
        tasks = [asyncio.create_task(agent.answer(body)) for _ in range(n) for body in (summary, synthesis)]
        if swap_to is not None:
            await asyncio.sleep(0)  # every request has started (and pinned its versions)
            _publish(store, tmp_path, "mistral_summary_v1", swap_to)  # promoted: the hot swap
        return await asyncio.gather(*tasks)

    async def run():
        rounds = []
        for swap_to in (None, "s2", None):
            calls.clear()
            replies = await round_of(3, swap_to)
            rounds.append((replies, Counter(c for c in calls if c.startswith("synthesizer/"))))
        return rounds

    rounds = asyncio.run(run())
    for (replies, used), summary_version in zip(rounds, ("s1", "s1", "s2")):
        # in flight at the swap: finished on s1; the other task never moved
        assert used == {f"{SUMMARY}@{summary_version}": 3, f"{SYNTHESIS}@y1": 3}
        for reply in replies:  # a fallback, if any, is the random adapter's reply, never a failed load
            assert all("ContractError" in f.reason for f in reply.failures), reply.failures
    loads = llm_server.adapters.engine_loads
    assert loads[f"{SYNTHESIS}@y1"] == 1  # resident throughout: the swap did not reload or evict it
    assert loads[f"{SUMMARY}@s2"] == 1
    assert llm_server.metrics.totals["adapter_swaps"] == {f"{SUMMARY}@s2": 1}
