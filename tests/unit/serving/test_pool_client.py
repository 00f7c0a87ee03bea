"""pool_call: a base replica that goes silent is given up on within ``silence_s`` and its stream cancelled,
and PoolRouter takes that for an unavailable pool (retried, then the next pool)."""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments.agent.pool_router import PoolRouter, is_pool_unavailable
from deployments.base_llm.client import ReplicaSilentError, pool_call


class _Stream:
    """What ``handle.options(stream=True).generate_stream.remote`` returns: an async iterator with cancel."""

    def __init__(self, script):
        self._script = iter(script)
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        step = next(self._script, None)
        if step is None:
            raise StopAsyncIteration
        delay, message = step
        await asyncio.sleep(delay)
        if isinstance(message, Exception):
            raise message
        return message

    def cancel(self):
        self.cancelled = True


class _Handle:
    """A fake pool handle: each call plays the next script; records the options and the streams."""

    def __init__(self, *scripts):
        self._scripts = list(scripts)
        self.streams: list[_Stream] = []
        self.calls: list[tuple[dict, dict, float]] = []
        self.generate_stream = self

    def options(self, **options):
        self._options = options
        return self

    def remote(self, body, heartbeat_s):
        self.calls.append((self._options, body, heartbeat_s))
        stream = _Stream(self._scripts.pop(0))
        self.streams.append(stream)
        return stream


ANSWER = {"text": "{}", "finish_reason": "stop"}


def test_heartbeats_keep_a_slow_answer_alive():
    """Beats 0.15 s apart keep a 0.6 s answer going under a 0.3 s silence limit; nothing is cancelled."""
    handle = _Handle([(0, {"heartbeat": 0})] + [(0.15, {"heartbeat": i}) for i in range(1, 4)] +
                     [(0.15, {"result": ANSWER})])
    reply = asyncio.run(pool_call(handle, silence_s=0.3, heartbeat_s=0.1)("critic/a@v1", {"prompt": "x"}))
    assert reply == ANSWER
    options, body, heartbeat_s = handle.calls[0]
    assert options == {"multiplexed_model_id": "critic/a@v1", "stream": True} and heartbeat_s == 0.1
    assert not handle.streams[0].cancelled


@pytest.mark.parametrize("script", [
    [(0, {"heartbeat": 0}), (5, {"result": ANSWER})],  # took the request, then died mid-decode
    [(5, {"heartbeat": 0})],                              # never took it (dead before it arrived)
], ids=["mid-request", "before-first-beat"])
def test_a_silent_replica_is_given_up_on_within_the_limit_and_cancelled(script):
    handle = _Handle(script)
    started = time.monotonic()
    with pytest.raises(ReplicaSilentError, match="nothing for 0.2s") as caught:
        asyncio.run(pool_call(handle, silence_s=0.2)("critic/a@v1", {"prompt": "x"}))
    assert time.monotonic() - started < 1.0
    assert handle.streams[0].cancelled
    assert is_pool_unavailable(caught.value)


def test_a_stream_that_ends_without_an_answer_is_unavailable_and_a_replica_error_passes_through():
    with pytest.raises(ReplicaSilentError, match="ended without an answer"):
        asyncio.run(pool_call(_Handle([(0, {"heartbeat": 0})]))("", {}))
    handle = _Handle([(0, {"heartbeat": 0}), (0, ValueError("bad request"))])
    with pytest.raises(ValueError, match="bad request"):
        asyncio.run(pool_call(handle)("", {}))


def test_the_router_retries_a_silent_replica_then_moves_to_the_next_pool():
    """Silent twice on the own pool (first try, retry), answered by the next pool: the reply says so."""
    own = _Handle([(1, {"heartbeat": 0})], [(0, {"heartbeat": 0}), (1, {"result": ANSWER})])
    other = _Handle([(0, {"heartbeat": 0}), (0, {"result": ANSWER})])
    router = PoolRouter([("BaseLLM-fp32", pool_call(own, silence_s=0.1)),
                         ("BaseLLM-bf16", pool_call(other, silence_s=0.1))])
    reply = asyncio.run(router("critic/a@v1", {"prompt": "x"}))
    assert reply["pool"] == "BaseLLM-bf16" and reply["unavailable_pools"] == ["BaseLLM-fp32"]
    assert [s.cancelled for s in own.streams] == [True, True]
    assert router.stats()["retried"] == {"BaseLLM-fp32": 1}


def test_the_heartbeat_must_be_shorter_than_the_silence():
    with pytest.raises(ValueError, match="heartbeat_s"):
        pool_call(_Handle(), silence_s=1.0, heartbeat_s=1.0)
    assert pool_call(_Handle(), silence_s=0.4) is not None  # default beat: an eighth of the silence
