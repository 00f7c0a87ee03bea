"""PoolRouter: one caller's route over the base pools, own pool first. No Serve wiring.

An agent (or the ingress, for chat completions) holds one route: the pools the agent map allows it, in
order (see :mod:`cluster.pools`). A call goes to the first pool; only when that pool is *unavailable*
(its replicas dead or gone, the deployment missing) does it go to the next one. Any other failure (a
reply that breaks the contract, a bad adapter, the caller's own mistake) is returned as it is: another
pool would not fix it, and the agent's fallback chain decides what happens next. A route never holds a
pool its agent may not use, so a never-quantised agent cannot reach an int8 pool through here.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Awaitable, Callable, Sequence

__all__ = ["PoolCall", "PoolRouter", "PoolUnavailableError", "is_pool_unavailable"]

log = logging.getLogger(__name__)

# (multiplexed model id, GenerateRequest body) -> GenerateResponse dict
PoolCall = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]

# Ray's errors for "no replica can take this": actor death, unreachable replica, deployment gone.
_UNAVAILABLE = {"ActorDiedError", "ActorUnavailableError", "RayActorError", "DeploymentUnavailableError",
                "ReplicaUnavailableError", "NodeDiedError", "PoolUnavailableError",
                "ReplicaSilentError"}  # no heartbeat for silence_s (deployments.base_llm.client): dead or hung


class PoolUnavailableError(RuntimeError):
    """Every pool of a route was unavailable (the message names each one and why; ``pools`` lists them)."""

    def __init__(self, message: str, pools: Sequence[str] = ()):
        super().__init__(message)
        self.pools = list(pools)


def is_pool_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or the cause a ``RayTaskError`` wraps) says the pool cannot be reached."""
    for err in (exc, getattr(exc, "cause", None), exc.__cause__):
        if err is not None and any(t.__name__ in _UNAVAILABLE for t in type(err).__mro__):
            return True
    return False


class PoolRouter:
    """Call the pools of one route in order, moving on only when a pool is unavailable.

    A dead replica fails its in-flight requests at once (Ray's ``ActorDiedError``) while Serve's router
    still knows the pool's other replicas, so an unavailable answer is first retried on the same pool
    (``retries_per_pool`` times: another replica takes it) and only then on the next pool of the route.

    Args:
        route: ``(pool name, call)`` pairs, own pool first.
        retries_per_pool: extra attempts on a pool that answered "unavailable" before moving on.
    """

    def __init__(self, route: Sequence[tuple[str, PoolCall]], retries_per_pool: int = 1):
        if not route:
            raise ValueError("a pool route needs at least one pool")
        if retries_per_pool < 0:
            raise ValueError(f"retries_per_pool ({retries_per_pool}) must be >= 0")
        self.route = list(route)
        self.retries_per_pool = retries_per_pool
        self.answered: Counter[str] = Counter()
        self.unavailable: Counter[str] = Counter()
        self.retried: Counter[str] = Counter()
        self.last_unavailable_at: dict[str, float] = {}  # wall clock, per pool: /healthz holds it degraded

    @property
    def pools(self) -> list[str]:
        """The pool names of the route, in order."""
        return [name for name, _ in self.route]

    async def __call__(self, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The first available pool's reply, with ``pool`` set to the pool that gave it.

        Raises:
            PoolUnavailableError: every pool of the route was unavailable.
            Exception: whatever the answering pool raised, when it is not unavailability.
        """
        why: list[str] = []
        down: set[str] = set()
        for position, (name, call) in enumerate(self.route):
            for attempt in range(self.retries_per_pool + 1):
                try:
                    reply = await call(model_id, body)
                except Exception as exc:
                    if not is_pool_unavailable(exc):
                        raise
                    last = position == len(self.route) - 1 and attempt == self.retries_per_pool
                    self.unavailable[name] += 1
                    self.last_unavailable_at[name] = time.time()
                    down.add(name)
                    why.append(f"{name}: {type(exc).__name__}")
                    log.warning("pool %s unavailable (%s); %s", name, type(exc).__name__, "none left" if last else
                                "retrying it" if attempt < self.retries_per_pool else "trying the next pool")
                    if attempt < self.retries_per_pool:
                        self.retried[name] += 1
                    continue
                self.answered[name] += 1
                out = {**reply, "pool": name}
                if down:
                    out["unavailable_pools"] = sorted(down)
                return out
        raise PoolUnavailableError(f"no pool of the route {self.pools} is available ({'; '.join(why)})", self.pools)

    def stats(self) -> dict[str, Any]:
        """The route and, per pool, calls answered and times found unavailable."""
        return {"route": self.pools, "answered": dict(self.answered), "unavailable": dict(self.unavailable),
                "retried": dict(self.retried), "last_unavailable_at": dict(self.last_unavailable_at)}
