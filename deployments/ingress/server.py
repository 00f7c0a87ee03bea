"""IngressServer: what the HTTP routes do, as a plain class over injected calls. No Serve, no FastAPI.

It holds the ingress' own guards (bearer tokens in two scopes, :mod:`deployments.ingress.auth`; the in-flight
limit) and turns each route into calls on the agent and BaseLLM deployments; ``deployments/ingress/http_app.py`` maps
routes onto it and ``deployments/ingress.py`` wires it to Serve handles. It refuses to be built without tokens
when the HTTP proxy binds anything but loopback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field

from agent_graph import Answer, AgentMap, Article, PipelineResult, Route, arun_pipeline, get_spec, newsroom
from deployments.agent.server import EmbedCall, LLMCall, is_caller_error
from deployments.errors import InvalidRequestError, NotServedError, OverloadedError, UnknownAgentError, to_serve_error
from deployments.ingress.auth import TokenGuard, scope_of
from deployments.ingress.openai_api import (chat_images, embed_body, embedding_response, generate_body, model_list,
                                            resolve_embedding_model, resolve_model)
from deployments.limits import LIMITS, AdmissionLimits, check_image_count
from deployments.vision.images import admit_image_async, image_bytes
from deployments.ingress.openai_protocol import ChatCompletionRequest, EmbeddingRequest, EmbeddingResponse, ModelList
from hitl.pipeline import held_steps
from hitl.store import HeldStep
from rollout.router import CanaryRouter, Choice, pin_and_choose

__all__ = ["IngressSettings", "PipelineResponse", "IngressServer", "AgentCall"]

log = logging.getLogger(__name__)

# (agent, input body, strict) -> AgentResponse dict
AgentCall = Callable[[str, dict[str, Any], bool], Awaitable[dict[str, Any]]]


class IngressSettings(BaseModel):
    """Settings of the HTTP ingress."""

    model_config = ConfigDict(extra="forbid")

    max_in_flight: int = Field(64, ge=1, description="Requests one ingress replica works on at once; more get 503.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with every 503.")
    api_token_env: str = Field("JUSTNEWS_API_TOKEN", min_length=1,
                               description="Environment variable holding the bearer token that calls agents (every "
                               "route but the admin ones). Unset or empty with no admin token either: no "
                               "authentication, allowed only while the HTTP proxy binds loopback.")
    admin_token_env: str = Field("JUSTNEWS_ADMIN_TOKEN", min_length=1,
                                 description="Environment variable holding the admin bearer token: /stats, /canary "
                                 "and /hitl routes take only it (it also calls agents). Unset: the API token stands "
                                 "in for it, allowed only while the HTTP proxy binds loopback.")
    http_host: str | None = Field(None, description="The address Serve's HTTP proxy binds (http_options.host), as "
                                  "the serve config says. The ingress also asks the Serve controller; if either is "
                                  "not loopback, both tokens are required or the ingress refuses to start.")
    chat_default_max_tokens: int = Field(256, ge=1, description="max_tokens of a chat completion that names none.")
    stream_piece_chars: int = Field(16, ge=1, description="Characters per streamed content chunk (whole words).")
    replica_silence_s: float = Field(2.0, gt=0, le=60, description="Seconds a base replica may send nothing (not "
                                     "even a heartbeat) to a chat completion before it moves to another replica "
                                     "or pool.")
    num_replicas: int = Field(1, ge=1, description="Ingress replicas.")
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0},
                                              description="Ray actor options per ingress replica.")


class PipelineResponse(PipelineResult):
    """``POST /pipeline/article``: every step's record, plus the steps that fell back."""

    fallback_steps: list[str] = Field(default_factory=list, description="Steps answered by a later fallback step.")
    held: bool = Field(False, description="True when a step's answer went to human review under the agent map's "
                       "rules: hold the article until its items are decided (GET /hitl/articles/{id}).")
    review: dict[str, list[str]] = Field(default_factory=dict, description="Step -> why it went to review.")


class IngressServer:
    """The ingress' logic.

    Args:
        settings: ingress settings.
        agent_map: the agent map (which agents exist, their adapters).
        store: the ``modelstore.ModelStore`` behind ``/v1/models``.
        llm: calls the BaseLLM deployment.
        agent: calls an agent deployment.
        embedding_model: the embeddings model name, listed by ``/v1/models`` (with ``embed``).
        embed: calls the embeddings deployment (``/v1/embeddings``; None: not served).
        pin: pins ``@current`` refs of chat completions per request (None: sent unpinned); raises ServeErrors.
        canary: the canary split and recording of chat completions (as the agents' adapter steps).
        status: returns ``{deployment: status}`` for ``/healthz`` (None: not reported).
        agent_stats: returns every agent's totals for ``/stats``.
        pool_stats: returns each base pool's loaded variant/device/bytes and plan for ``/stats``.
        canary_status: returns the canary controller's view for ``/canary`` (None: not served).
        http_host: the address Serve's HTTP proxy binds, as the Serve controller reports it (None: unknown to
            the caller; ``settings.http_host`` is checked either way).
        limits: the admission limits images are checked against here (chat completions, pipeline articles,
            image upload sizes) before any model is called.

    Raises:
        InsecureBindingError: a non-loopback binding without both tokens (see :mod:`deployments.ingress.auth`).
    """

    def __init__(self, settings: IngressSettings, agent_map: AgentMap, store: Any, *, llm: LLMCall, agent: AgentCall,
                 embedding_model: str | None = None, status: Callable[[], Awaitable[dict[str, str]]] | None = None,
                 agent_stats: Callable[[], Awaitable[dict[str, Any]]] | None = None,
                 canary_status: Callable[[], Awaitable[dict[str, Any]]] | None = None, http_host: str | None = None,
                 pool_stats: Callable[[], Awaitable[dict[str, Any]]] | None = None, embed: EmbedCall | None = None,
                 pin: Callable[[str], str] | None = None, canary: CanaryRouter | None = None,
                 limits: AdmissionLimits = LIMITS):
        self.settings = settings
        self.limits = limits
        self.map = agent_map
        self.store = store
        self._llm, self._agent, self._embed = llm, agent, embed
        self.embedding_model = embedding_model if embed is not None else None
        self._pin, self._canary = pin, canary
        self._shadows: set[asyncio.Task] = set()
        self._status, self._agent_stats, self._canary_status = status, agent_stats, canary_status
        self._pool_stats = pool_stats
        self.guard = TokenGuard.from_env(settings.api_token_env, settings.admin_token_env)
        self.guard.check_binding([settings.http_host, http_host])
        self.in_flight = 0
        self.rejected = 0
        # (article id, held steps) -> None: records a pipeline's review hold (set by deployments.review.routes).
        self.on_held: Callable[[str, list[HeldStep]], None] | None = None
        self.served_agents = sorted(n for n, e in agent_map.agents.items() if e.served)

    # -- guards -----------------------------------------------------------------------------------

    def authorize(self, header: str | None, path: str = "/", method: str = "GET") -> None:
        """Check ``Authorization: Bearer <token>`` for the scope ``path`` needs (nothing when no token is set).

        Raises:
            UnauthorizedError: missing or wrong token (401).
            ForbiddenError: the API token on an admin route (403).
        """
        self.guard.authorize(header, scope_of(path, method), path)

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count a request in flight for its whole life.

        Raises:
            OverloadedError: ``max_in_flight`` requests are already in flight (503 with Retry-After).
        """
        if self.in_flight >= self.settings.max_in_flight:
            self.rejected += 1
            raise OverloadedError(f"{self.in_flight} requests in flight, max_in_flight is "
                                  f"{self.settings.max_in_flight}; retry after {self.settings.retry_after_s}s")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    # -- routes -----------------------------------------------------------------------------------

    def check_agent(self, name: str) -> None:
        """Raise :class:`UnknownAgentError` (404) unless ``name`` is a served agent."""
        if name not in self.served_agents:
            raise UnknownAgentError(f"unknown agent {name!r}; served agents: {', '.join(self.served_agents)}")

    async def agent(self, name: str, body: dict[str, Any], strict: bool = False) -> dict[str, Any]:
        """``POST /agents/{name}``: an ``AgentResponse`` dict."""
        self.check_agent(name)
        return await self._agent(name, body, strict)

    async def chat(self, req: ChatCompletionRequest) -> dict[str, Any]:
        """``POST /v1/chat/completions``: the BaseLLM ``GenerateResponse`` dict of the completion, on the ref
        pinned now and through the canary split, as an agent's adapter step (the observation is recorded).

        Image parts (for a model that reads them) are admitted here first: a bad image is a 4xx and the
        replicas never see it."""
        target = resolve_model(req.model, self.map)
        images = chat_images(req, target.images, self.limits)
        body = generate_body(req, self.settings.chat_default_max_tokens, images=target.images, limits=self.limits)
        await _admit(images, self.limits)
        choice = pin_and_choose(target.model_id, self._pin, self._canary if target.canary else None)
        if choice.mirror_model_id is not None:
            task = asyncio.get_running_loop().create_task(self._mirror(choice, body))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        return await self._observed(choice, choice.model_id, body)

    async def _observed(self, choice: Choice, model_id: str, body: dict[str, Any], mirrored: bool = False) -> dict:
        started = time.monotonic()
        try:
            reply = await self._llm(model_id, body)
        except Exception as exc:
            if not is_caller_error(exc):
                self._record(choice, time.monotonic() - started, "error", mirrored)
            raise
        self._record(choice, time.monotonic() - started, "ok", mirrored)
        return reply

    def _record(self, choice: Choice, seconds: float, outcome: str, mirrored: bool) -> None:
        if self._canary is not None:
            self._canary.record(choice, seconds, outcome, role="candidate" if mirrored else None, mirrored=mirrored)

    async def _mirror(self, choice: Choice, body: dict[str, Any]) -> None:
        """A mirroring canary: the candidate gets the baseline's chat too; its answer is only measured."""
        try:
            await self._observed(choice, choice.mirror_model_id, body, mirrored=True)
        except Exception:  # noqa: BLE001 - a shadow call never reaches the caller; _observed recorded it
            pass

    def flush(self) -> None:
        """Write out pending canary observations (on shutdown)."""
        if self._canary is not None:
            self._canary.flush()

    async def embeddings(self, req: EmbeddingRequest) -> EmbeddingResponse:
        """``POST /v1/embeddings`` through the embeddings deployment."""
        resolve_embedding_model(req.model, self.map, self.embedding_model)
        return embedding_response(req, await self._embed(embed_body(req)))

    def models(self) -> ModelList:
        """``GET /v1/models``: exactly what chat completions and embeddings accept."""
        return model_list(self.map, self.store, self.embedding_model)

    async def pipeline(self, article: dict[str, Any]) -> PipelineResponse:
        """``POST /pipeline/article``: the newsroom pipeline, every step through its agent deployment.

        An article's images are counted (413 over ``max_images_per_request``) and checked for what needs no
        decoding (size, remote URLs, base64) before any step; the newsreader agent admits each fully, and
        an image it refuses fails the request with its 4xx, naming the image (``images[1]: ...``).

        Raises:
            InvalidRequestError: images, but the application does not serve the agent that reads them (400).
        """
        fell_back: list[str] = []
        images = self._check_images(Article.model_validate(article))

        async def call(agent: str, inp: BaseModel) -> Answer:
            try:
                reply = await self.agent(agent, inp.model_dump(mode="json"))
            except Exception as exc:
                sources = get_spec(agent).images_of(inp)
                error = to_serve_error(exc)
                if not sources or error.status_code >= 500:
                    raise
                raise type(error)(f"images[{images.index(sources[0][1])}]: {error}") from exc
            if reply["fallback"]:
                fell_back.append(agent)
            output = get_spec(agent).output_model.model_validate(reply["output"])
            failures = tuple((f["route"], f["reason"]) for f in reply["failures"])
            return Answer(agent, output, Route(agent, reply["step"], reply["answered_by"]), failures)

        result = await arun_pipeline(article, call)
        held = held_steps(self.map, result.steps, fell_back)
        if held and self.on_held is not None:
            try:
                self.on_held(result.article_id, held)  # a background write (hitl): never blocks the answer
            except Exception as exc:  # noqa: BLE001 - the hold record is best effort, the answer is not
                log.warning("hitl: could not record the hold of article %r: %s", result.article_id, exc)
        return PipelineResponse(**result.model_dump(), fallback_steps=fell_back, held=bool(held),
                                review={h.step: list(h.reasons) for h in held})

    def _check_images(self, article: Article) -> list[str]:
        if not article.images:
            return []
        readers = {s.agent for s in newsroom(article) if get_spec(s.agent).image_fields}
        missing = sorted(readers - set(self.served_agents))
        if missing:
            raise InvalidRequestError(f"images: this application does not serve {', '.join(missing)}, which reads "
                                      f"them; send the article without images")
        check_image_count(len(article.images), self.limits)
        for i, source in enumerate(article.images):
            image_bytes(source, self.limits, field=f"images[{i}]")
        return list(article.images)

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``ok`` while every deployment is healthy, with each one's status."""
        deployments = await self._status() if self._status is not None else {}
        healthy = all(s == "HEALTHY" for s in deployments.values())
        return {"status": "ok" if healthy else "degraded", "deployments": deployments, "in_flight": self.in_flight}

    async def canary(self) -> dict[str, Any]:
        """``GET /canary``: every canary's state, per-version figures side by side, and decisions.

        Raises:
            NotServedError: the application was built without a canary controller (404).
        """
        if self._canary_status is None:
            raise NotServedError("this application runs no canary controller")
        return await self._canary_status()

    async def stats(self) -> dict[str, Any]:
        """``GET /stats``: ingress counters, every agent's request and fallback totals (and pool route), and
        what one replica of each base pool loaded against its plan."""
        agents = await self._agent_stats() if self._agent_stats is not None else {}
        pools = await self._pool_stats() if self._pool_stats is not None else {}
        return {"ingress": {"in_flight": self.in_flight, "rejected_overload": self.rejected}, "agents": agents,
                "pools": pools}


async def _admit(images: list[tuple[str, str]], limits: AdmissionLimits) -> None:
    """Admit every ``(field, source)`` image (decoded in worker threads); the first refusal is raised (4xx)."""
    if images:
        await asyncio.gather(*(admit_image_async(source, limits, field=field) for field, source in images))
