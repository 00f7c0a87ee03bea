"""Calling a base pool: a streamed call with heartbeats, so a silent replica is found in seconds.

A replica that dies mid-request is reported to its callers by Ray only once the death reaches them, which
under load took ~9 s on the 2-core test cluster (bench/RESULTS.md, issue 15). The base deployment's
``generate_stream`` therefore sends a heartbeat as soon as it takes a request and then every
``heartbeat_s`` until the answer; :func:`pool_call` waits at most ``silence_s`` for each message. A replica
that says nothing for that long is dead or hung: the call is cancelled and :class:`ReplicaSilentError`
raised, which :class:`~deployments.agent.pool_router.PoolRouter` treats as "unavailable" and retries on the
pool's other replica (Serve's router no longer picks one that does not answer its probes) or the next pool.

The first message also covers the time Serve's router holds a request while every replica of the pool is at
``max_ongoing_requests``: a pool that full for ``silence_s`` counts as unavailable too, and the caller spills
to its next pool or its fallback chain rather than queueing behind it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from deployments.agent.pool_router import PoolCall

__all__ = ["DEFAULT_HEARTBEAT_S", "DEFAULT_SILENCE_S", "ReplicaSilentError", "pool_call"]

DEFAULT_HEARTBEAT_S = 0.25
DEFAULT_SILENCE_S = 2.0


class ReplicaSilentError(RuntimeError):
    """A base replica sent nothing, not even a heartbeat, for ``silence_s`` seconds (dead, hung or full)."""


def pool_call(handle: Any, silence_s: float = DEFAULT_SILENCE_S, heartbeat_s: float | None = None) -> PoolCall:
    """A :data:`~deployments.agent.pool_router.PoolCall` over one base pool's Serve handle.

    Args:
        handle: the pool deployment's handle.
        silence_s: the longest wait for any message of the stream (the first included).
        heartbeat_s: how often the replica says it is still working; well under ``silence_s`` (default:
            ``DEFAULT_HEARTBEAT_S`` or an eighth of ``silence_s``, whichever is shorter).
    """
    if heartbeat_s is None:
        heartbeat_s = min(DEFAULT_HEARTBEAT_S, silence_s / 8)
    if not 0 < heartbeat_s < silence_s:
        raise ValueError(f"heartbeat_s ({heartbeat_s}) must be > 0 and below silence_s ({silence_s})")

    async def call(model_id: str, body: dict[str, Any]) -> dict[str, Any]:
        stream = handle.options(multiplexed_model_id=model_id, stream=True).generate_stream.remote(body, heartbeat_s)
        finished = False
        try:
            while True:
                try:
                    message = await asyncio.wait_for(anext(stream), silence_s)
                except asyncio.TimeoutError:
                    raise ReplicaSilentError(f"the replica sent nothing for {silence_s:g}s") from None
                except StopAsyncIteration:
                    finished = True
                    raise ReplicaSilentError("the replica's stream ended without an answer") from None
                if "result" in message:
                    finished = True
                    return message["result"]
        finally:
            if not finished:
                stream.cancel()  # stop the work on a replica that may still be alive

    return call
