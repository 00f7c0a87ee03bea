"""The ingress deployment: FastAPI on Serve over the agent and base pool handles. Thin wiring.

The FastAPI app is built on the replica, after the constructor (Serve's late-bound ingress,
``__serve_build_asgi_app__``), so it can be generated from the agent map the replica loaded: one typed
route per agent. Routes and their logic live in :mod:`deployments.ingress.http_app` and
:mod:`deployments.ingress.server`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve
from ray.serve import Application

from agent_graph import load_agent_map
from deployments.review.routes import install_hitl
from deployments.ingress.http_app import build_http_app
from deployments.agent.pool_router import PoolRouter
from deployments.base_llm.client import pool_call
from deployments.ingress.server import IngressServer, IngressSettings

__all__ = ["IngressDeployment", "build_ingress", "default_route"]

log = logging.getLogger(__name__)

STATUS_REFRESH_S = 0.5   # how often the ingress reads deployment statuses for /healthz
STATUS_STALE_S = 15.0    # older than this, /healthz says the status is stale (degraded)
DEATH_HOLD_S = 10.0      # a replica death callers saw keeps its pool degraded this long (or until Serve says so)


@serve.ingress()
class IngressDeployment:
    """Serve-facing ingress.

    Args:
        settings: :class:`~deployments.ingress.server.IngressSettings` as a dict.
        map_path: the agent map file (None: packaged).
        store_root: the ModelStore root (for ``/v1/models``).
        pools: base pool name -> BaseLLM pool handle.
        routes: agent on a base -> its pool names, own pool first (chat completions for an agent and its adapters
            follow its route; the bare base and other adapters take :func:`default_route`).
        agents: agent name -> agent deployment handle.
        embedding_model: the embeddings model name, listed by ``/v1/models``.
        canary: the canary controller handle (``GET /canary``), or None.
        embeddings: the embeddings deployment handle (``/v1/embeddings``), or None.
    """

    def __init__(self, settings: dict[str, Any], map_path: str | None, store_root: str, pools: dict[str, Any],
                 routes: dict[str, list[str]], agents: dict[str, Any], embedding_model: str | None = None,
                 canary: Any = None, embeddings: Any = None):
        from modelstore import ModelStore
        from deployments.ingress.openai_api import store_pin
        from rollout import CanaryRouter

        self._pool_handles, self._agent_handles, self._canary_handle = pools, agents, canary
        self._embed_handle = embeddings
        store = ModelStore(store_root)
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (tests): any stable name will do
            replica = f"local-{id(self):x}"
        settings = IngressSettings.model_validate(settings)
        silence = settings.replica_silence_s
        self._routers = {agent: PoolRouter([(p, pool_call(pools[p], silence)) for p in route])
                         for agent, route in routes.items()}
        self._default_router = PoolRouter([(p, pool_call(pools[p], silence)) for p in default_route(list(pools))])
        self._server = IngressServer(
            settings, load_agent_map(map_path), store,
            llm=self._generate, agent=self._answer, embedding_model=embedding_model, status=self._status,
            agent_stats=self._agent_stats, canary_status=self._canary_status if canary is not None else None,
            http_host=_serve_http_host(), pool_stats=self._pool_stats,
            # Chat completions pin '@current' and take the canary split as the agents' adapter steps do.
            embed=self._embed if embeddings is not None else None, pin=store_pin(store),
            canary=CanaryRouter(store.root, f"ingress-{replica}"))
        from deployments.review.metrics import ingress_service

        self._hitl = ingress_service(store_root, self._server.served_agents)  # /hitl: review queue and pages

    def __serve_build_asgi_app__(self):  # noqa: N807 - Serve's hook name
        app = build_http_app(self._server)
        install_hitl(app, self._hitl)
        return app

    async def _generate(self, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
        # An adapter ref names its agent first ('critic/...'): that agent's route, so a never-quantised
        # agent's chat completions stay off int8 pools too.
        agent = model_id.split("/", 1)[0] if "/" in model_id else None
        return await self._routers.get(agent, self._default_router)(model_id, body)

    async def _pool_stats(self) -> dict[str, Any]:
        names = list(self._pool_handles)
        replies = await asyncio.gather(*(asyncio.wait_for(self._pool_handles[n].stats.remote(), timeout=10)
                                         for n in names), return_exceptions=True)
        keep = ("replica_id", "base", "variant", "device", "loaded", "resident_adapters", "queue_depth")
        return {n: ({k: r.get(k) for k in keep} if not isinstance(r, BaseException)
                    else {"error": (str(r).splitlines() or [type(r).__name__])[0]})
                for n, r in zip(names, replies)}

    async def _embed(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._embed_handle.embed.remote(body)

    def __del__(self) -> None:
        """On shutdown: write out the chat completions' canary observations not yet flushed."""
        server = getattr(self, "_server", None)
        if server is not None:
            server.flush()

    async def _answer(self, agent: str, body: dict[str, Any], strict: bool) -> dict[str, Any]:
        reply = await self._agent_handles[agent].answer.remote(body, strict)
        for pool in reply.get("unavailable_pools") or ():  # a replica died under this request: /healthz now
            self._deaths = {**getattr(self, "_deaths", {}), pool: time.time()}
        return reply

    async def _canary_status(self) -> dict[str, Any]:
        return await self._canary_handle.status.remote()

    async def _agent_stats(self) -> dict[str, Any]:
        names = sorted(self._agent_handles)
        replies = await asyncio.gather(*(self._agent_handles[n].stats.remote() for n in names), return_exceptions=True)
        return {n: (r if not isinstance(r, BaseException) else {"error": str(r).splitlines()[0]})
                for n, r in zip(names, replies)}

    async def _status(self) -> dict[str, str]:
        """Each deployment's status as the Serve controller last reported it (read every ``STATUS_REFRESH_S``
        by a background task, so /healthz answers at once however busy the controller is), with a pool whose
        replica a caller just found dead marked unhealthy before the controller notices.

        The callers' signal arrives two ways, neither polled: agent responses name the pools they found
        unavailable (:meth:`_answer`), and the ingress' own chat routes keep theirs in their PoolRouters.
        """
        if getattr(self, "_status_task", None) is None:
            self._status_cache: tuple[float, dict[str, str]] = (0.0, {"serve_status": "starting"})
            self._status_task = asyncio.get_running_loop().create_task(self._watch_status())
            await asyncio.sleep(0)
        read_at, status = self._status_cache
        status = dict(status)
        deaths = dict(getattr(self, "_deaths", {}))
        for router in [*self._routers.values(), self._default_router]:
            for pool, at in router.last_unavailable_at.items():
                deaths[pool] = max(at, deaths.get(pool, 0.0))
        now = time.time()
        for pool, died_at in deaths.items():
            if status.get(pool) == "HEALTHY" and now - died_at < DEATH_HOLD_S:  # the controller has not noticed
                status[pool] = f"UNHEALTHY: a replica died {now - died_at:.1f}s ago"
        if read_at and time.monotonic() - read_at > STATUS_STALE_S:
            status["serve_status"] = f"stale: last read {time.monotonic() - read_at:.0f}s ago"
        return status

    async def _watch_status(self) -> None:
        app = serve.get_replica_context().app_name

        def read() -> dict[str, str]:
            status = serve.status().applications.get(app)
            return {name: str(d.status.value if hasattr(d.status, "value") else d.status)
                    for name, d in (status.deployments.items() if status else [])}

        while True:
            try:
                self._status_cache = (time.monotonic(), await asyncio.wait_for(asyncio.to_thread(read), timeout=10))
            except Exception as exc:  # noqa: BLE001 - health must answer; say what could not be read
                log.warning("could not read serve status: %s", exc)
                self._status_cache = (time.monotonic(), {"serve_status": f"unavailable: {type(exc).__name__}"})
            await asyncio.sleep(STATUS_REFRESH_S)


def default_route(pools: list[str]) -> list[str]:
    """The route of a chat for the bare base or an adapter no agent's route names: the text base's pools
    (``BaseLLM-<variant>``) in order, never a named base's (a vision base loads no text adapter); every pool
    when there is no text pool."""
    from typing import get_args

    from cluster.pools import POOL_PREFIX
    from modelstore.manifest import Variant

    text = [p for p in pools if p.startswith(POOL_PREFIX) and p[len(POOL_PREFIX):] in get_args(Variant)]
    return text or list(pools)


def _serve_http_host() -> str | None:
    """The address Serve's HTTP proxy binds, from the controller (None: no proxy). Unreadable counts as exposed."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception as exc:  # noqa: BLE001 - fail closed: the ingress then needs its tokens
        log.warning("could not read Serve's HTTP options from the controller: %s", exc)
        return f"<unknown: {type(exc).__name__}>"


def build_ingress(settings: IngressSettings | dict | None, *, map_path: str | None, store_root: str,
                  pools: dict[str, Application], routes: dict[str, list[str]], agents: dict[str, Application],
                  embedding_model: str | None = None, canary: Application | None = None,
                  embeddings: Application | None = None) -> Application:
    """Bind the ingress to the base pools, agent, canary controller and embeddings applications."""
    settings = IngressSettings.model_validate(settings or {})
    deployment = serve.deployment(
        IngressDeployment, name="Ingress", num_replicas=settings.num_replicas,
        # Serve must let requests through to the ingress' own limit, which answers 503 with a JSON body.
        max_ongoing_requests=settings.max_in_flight + 16, ray_actor_options=settings.ray_actor_options)
    return deployment.bind(settings.model_dump(), map_path, store_root, pools, routes, agents, embedding_model,
                           canary, embeddings)
