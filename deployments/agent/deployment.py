"""The agent deployment: one generic class, deployed once per agent of the map. Thin Serve wiring.

Each deployment wraps an :class:`~deployments.agent.server.AgentServer` and is bound to the shared
BaseLLM pools of its route (llm agents call them with ``multiplexed_model_id`` = the adapter ref of the step
they are on; :class:`~deployments.agent.pool_router.PoolRouter` moves to the next pool only when one is
unavailable) or to the embeddings handle (scout, memory). Agents hold no weights, so a replica asks for no CPU.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from agent_graph import load_agent_map
from deployments.agent.server import DEFAULT_DEADLINE_S, AgentServer
from deployments.agent.pool_router import PoolRouter
from deployments.base_llm.client import DEFAULT_SILENCE_S, pool_call

__all__ = ["AgentDeploymentSettings", "AgentDeployment", "build_agent", "deployment_name"]


class AgentDeploymentSettings(BaseModel):
    """Serve options shared by every agent deployment."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1, description="Replicas per agent (they hold no weights).")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one agent replica works on at once.")
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0},
                                              description="Ray actor options per replica.")
    deadline_s: float = Field(DEFAULT_DEADLINE_S, gt=0, le=600, description="Seconds a request may spend on model "
                              "steps (adapter, bare base); then the legacy step answers it.")
    replica_silence_s: float = Field(DEFAULT_SILENCE_S, gt=0, le=60, description="Seconds a base replica may send "
                                     "nothing (not even a heartbeat) before the call moves to another replica or "
                                     "pool: how long a dead replica can hold a request.")


def deployment_name(agent: str) -> str:
    """The Serve deployment name of an agent: ``Agent-<agent>``."""
    return f"Agent-{agent}"


class AgentDeployment:
    """Serve-facing agent: ``answer`` and ``stats`` over a handle; no HTTP of its own (the ingress has it).

    Args:
        agent: the agent's name.
        map_path: the agent map file; None is the packaged one (the builder validated it already).
        strict: never fall back.
        llm: pool name -> BaseLLM pool handle, the agent's route in order (llm agents).
        embeddings: the embeddings deployment handle (embedding agents).
    """

    def __init__(self, agent: str, map_path: str | None, strict: bool, llm: dict[str, Any] | None = None,
                 embeddings: Any = None, store_root: str | None = None, deadline_s: float = DEFAULT_DEADLINE_S,
                 replica_silence_s: float = DEFAULT_SILENCE_S):
        from modelstore import ModelStore
        from rollout import CanaryRouter

        self._embed_handle = embeddings
        # The pools of the agent's route, own pool first; the next one only when a pool is unavailable.
        self._pools = (PoolRouter([(name, pool_call(handle, replica_silence_s)) for name, handle in llm.items()])
                       if llm else None)
        store = ModelStore(store_root)
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (tests): any stable name will do
            replica = f"local-{id(self):x}"
        self._server = AgentServer(agent, load_agent_map(map_path), strict=strict,
                                   llm=self._pools,
                                   embed=self._embed if embeddings is not None else None,
                                   pin=lambda ref: str(store.pin(ref)),
                                   canary=CanaryRouter(store.root, f"{agent}-{replica}"), deadline_s=deadline_s)
        from deployments.review.metrics import HitlMetrics, review_hook

        # The map's review rules queue doubtful answers for editors, off the request path (hitl).
        self._review = review_hook(agent, self._server.entry, store_root=str(store.root), metrics=HitlMetrics())

    async def _embed(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._embed_handle.embed.remote(body)

    async def answer(self, body: dict[str, Any], strict: bool = False) -> dict[str, Any]:
        """Answer one request; returns an :class:`~deployments.agent.server.AgentResponse` as a dict."""
        reply = (await self._server.answer(body, strict=strict)).model_dump(mode="json")
        if self._review is not None:
            self._review.offer(body, reply)  # never blocks nor raises
        return reply

    async def stats(self) -> dict[str, Any]:
        """Request, fallback and failed-step totals (the same numbers as the ``justnews_agent_*`` metrics)."""
        stats = self._server.stats()
        if self._pools is not None:
            stats["pools"] = self._pools.stats()
        if self._review is not None:
            stats["review"] = self._review.stats()
        return stats

    def __del__(self) -> None:
        """On shutdown: write out the canary observations not yet flushed."""
        server = getattr(self, "_server", None)
        if server is not None:
            server.flush()


def build_agent(agent: str, *, map_path: str | None = None, strict: bool = False, llm: dict[str, Any] | None = None,
                embeddings: Any = None, settings: AgentDeploymentSettings | dict | None = None,
                store_root: str | None = None) -> Application:
    """Bind the agent deployment of ``agent`` to the BaseLLM (or embeddings) application.

    Args:
        agent: the agent's name.
        map_path: the agent map file (None: packaged).
        strict: never fall back.
        llm: pool name -> bound BaseLLM pool application, the agent's route in order (llm agents).
        embeddings: the bound embeddings application (embedding agents).
        settings: Serve options.
        store_root: the ModelStore, where ``@current`` adapter refs are pinned per request.
    """
    settings = AgentDeploymentSettings.model_validate(settings or {})
    deployment = serve.deployment(
        AgentDeployment, name=deployment_name(agent), num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests, ray_actor_options=settings.ray_actor_options)
    return deployment.bind(agent, map_path, strict, llm, embeddings, store_root, settings.deadline_s,
                           settings.replica_silence_s)
