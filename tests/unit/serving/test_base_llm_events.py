"""BaseLLMServer's operational events on a real store and engine: hot swaps and failed hot swaps, out of
memory while generating, and pool rejections -- each answered correctly and counted for the alerts."""

from __future__ import annotations

import asyncio

import pytest
import torch

from deployments.errors import AdapterLoadFailedError, OverloadedError
from deployments.base_llm.server import BaseLLMServer
from deployments.base_llm.settings import BaseLLMSettings
from tests.store_helpers import corrupt_weights, publish_copy

NS = "critic/mistral_critic_v1"
BODY = {"prompt": "[INST] Judge the draft [/INST]", "max_new_tokens": 3}


@pytest.fixture
def server(store):
    return BaseLLMServer(BaseLLMSettings(store_root=str(store.root)))


def _publish(store, tmp_path, version: str, corrupt: bool = False) -> None:
    publish_copy(store, f"{NS}@seed-1", NS, version, tmp_path)
    if corrupt:
        corrupt_weights(store, f"{NS}@{version}")


def test_a_new_version_loaded_where_another_served_is_a_hot_swap_and_a_failed_one_is_counted(server, store, tmp_path):
    async def run():
        first = await server.acquire_adapter(f"{NS}@seed-1")
        await server.generate(BODY, first)
        _publish(store, tmp_path, "v2")
        await server.generate(BODY, await server.acquire_adapter(f"{NS}@v2"))
        _publish(store, tmp_path, "v3", corrupt=True)
        with pytest.raises(AdapterLoadFailedError):
            await server.acquire_adapter(f"{NS}@v3")

    asyncio.run(run())
    totals = server.metrics.totals
    assert dict(totals["adapter_swaps"]) == {f"{NS}@v2": 1}
    assert dict(totals["hotswap_failures"]) == {f"{NS}@v3:load_error": 1}
    assert not totals["oom_events"]


def test_out_of_memory_is_a_retryable_503_counted_per_variant_and_rows_are_retried_alone(store, monkeypatch):
    # The static batcher's recovery: a batch that ran out of memory is retried row by row.
    server = BaseLLMServer(BaseLLMSettings(store_root=str(store.root), runtime={"scheduling": "static"}))
    real = server.engine.generate
    calls: list[int] = []

    def generate(items):
        calls.append(len(items))
        if len(items) > 1 or items[0].params.max_new_tokens > 3:  # the big ones do not fit
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(items)

    monkeypatch.setattr(server.engine, "generate", generate)

    async def run():
        small = server.generate(BODY)
        big = server.generate({**BODY, "max_new_tokens": 8})
        return await asyncio.gather(small, big, return_exceptions=True)

    small, big = asyncio.run(run())
    assert small.text is not None  # answered once retried on its own
    assert isinstance(big, OverloadedError) and big.status_code == 503 and "out of memory" in str(big)
    variant = server.variant
    assert server.metrics.totals["oom_events"][f"{variant}:generate"] >= 2
    assert server.metrics.totals["pool_rejections"] == {f"{variant}:oom": 1}
    assert server.in_flight == 0
    assert 2 in calls  # the two shared a batch first
