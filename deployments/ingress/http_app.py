"""The FastAPI app of the ingress: routes, typed per-agent bodies, guards and JSON errors.

Routes (behind the bearer tokens of :mod:`deployments.ingress.auth` when any is set; ``/stats``, ``/canary`` and
``/hitl/...`` need the admin token):

* ``POST /agents/{agent}``: the agent's input model in, ``AgentResponse`` with its output model out;
  ``?strict=true`` forbids falling back for this request. An agent that reads images (the newsreader) takes
  its input as JSON or as a ``multipart/form-data`` upload (the image as a file), read under a size cap
  (:mod:`deployments.ingress.uploads`).
* ``POST /pipeline/article``: an ``Article`` through the newsroom pipeline.
* ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/embeddings``: OpenAI-compatible (see
  :mod:`deployments.ingress.openai_api`).
* ``GET /healthz``: every deployment's status; ``GET /stats``: request and fallback totals.

Each agent gets its own route (``/agents/critic``...) so OpenAPI shows its typed request and response;
``/agents/{agent}`` after them answers 404 for names the map does not serve.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import Body, FastAPI, Query, Request
from pydantic import create_model
from starlette.responses import JSONResponse, StreamingResponse

from agent_graph import Article, get_spec
from deployments.agent.server import AgentResponse
from deployments.ingress.http_errors import error_response, install_error_handlers
from deployments.ingress.server import IngressServer, PipelineResponse
from deployments.ingress.openai_api import completion_response, sse_events
from deployments.ingress.openai_protocol import (ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest,
                                         EmbeddingResponse, ModelList)
from deployments.ingress.uploads import agent_body, openapi_request_body

__all__ = ["build_http_app", "agent_response_model"]

_UNGUARDED_BY_LIMIT = {"/healthz"}  # probes must answer even when the ingress is saturated


def _app_path(request: Request) -> str:
    """The path inside the application (without Serve's route prefix), which decides the token's scope."""
    path, root = request.scope.get("path", "/"), request.scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


def agent_response_model(agent: str) -> type[AgentResponse]:
    """``AgentResponse`` with ``output`` typed as the agent's output model (for validation and OpenAPI)."""
    spec = get_spec(agent)
    camel = "".join(part.title() for part in agent.split("_"))
    return create_model(f"{camel}Response", __base__=AgentResponse, output=(spec.output_model, ...))


def _agent_route(app: FastAPI, server: IngressServer, agent: str) -> None:
    spec = get_spec(agent)
    response_model = agent_response_model(agent)

    async def endpoint(body: Any, strict: bool = False) -> Any:
        return await server.agent(agent, body.model_dump(mode="json"), strict)

    # FastAPI reads the body type from the signature; set it per agent.
    endpoint.__signature__ = inspect.Signature([
        inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=spec.input_model,
                          default=Body(...)),
        inspect.Parameter("strict", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=bool,
                          default=Query(False, description="Forbid falling back for this request.")),
    ])
    app.add_api_route(f"/agents/{agent}", endpoint, methods=["POST"], response_model=response_model,
                      name=f"agent_{agent}", summary=f"{agent}: {spec.output_model.__doc__ or ''}".strip(),
                      tags=["agents"])


def _image_agent_route(app: FastAPI, server: IngressServer, agent: str) -> None:
    """The route of an agent that reads images: its body (JSON or a form upload) is read here, under a cap."""
    spec = get_spec(agent)

    async def endpoint(request: Request, strict: bool = Query(False, description="Forbid falling back for this "
                                                                               "request.")) -> Any:
        return await server.agent(agent, await agent_body(request, spec, server.limits), strict)

    app.add_api_route(f"/agents/{agent}", endpoint, methods=["POST"], response_model=agent_response_model(agent),
                      name=f"agent_{agent}", summary=f"{agent}: {spec.output_model.__doc__ or ''}".strip(),
                      tags=["agents"], openapi_extra={"requestBody": openapi_request_body(spec)})


def build_http_app(server: IngressServer) -> FastAPI:
    """The ingress FastAPI app over ``server``."""
    app = FastAPI(title="JustNews Serve", version="0.1.0",
                  description="Newsroom agents on one shared base model with per-agent LoRA adapters.")
    install_error_handlers(app, server.settings.retry_after_s)
    app.state.ingress = server  # routes installed later (deployments.review.routes.install_hitl) reach the server

    @app.middleware("http")
    async def guards(request: Request, call_next):  # noqa: ANN001 - Starlette's signature
        try:
            server.authorize(request.headers.get("authorization"), _app_path(request), request.method)
            if request.url.path in _UNGUARDED_BY_LIMIT:
                return await call_next(request)
            with server.admit():
                return await call_next(request)
        except Exception as exc:  # noqa: BLE001 - a guard refused: answer JSON (handlers do not see middleware)
            return error_response(exc, server.settings.retry_after_s)

    for agent in server.served_agents:
        (_image_agent_route if get_spec(agent).image_fields else _agent_route)(app, server, agent)

    @app.post("/agents/{agent}", tags=["agents"], summary="Any other name: 404 listing the served agents.")
    async def unknown_agent(agent: str) -> JSONResponse:
        server.check_agent(agent)  # raises: every served agent has its own route above
        raise AssertionError("unreachable")

    @app.post("/pipeline/article", response_model=PipelineResponse, tags=["pipeline"])
    async def pipeline(article: Article) -> PipelineResponse:
        return await server.pipeline(article.model_dump(mode="json"))

    @app.get("/v1/models", response_model=ModelList, tags=["openai"])
    async def models() -> ModelList:
        return server.models()

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, tags=["openai"])
    async def chat(req: ChatCompletionRequest) -> Any:
        reply = await server.chat(req)
        if req.stream:
            return StreamingResponse(sse_events(req, reply, server.settings.stream_piece_chars),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return completion_response(req, reply)

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, tags=["openai"])
    async def embeddings(req: EmbeddingRequest) -> EmbeddingResponse:
        return await server.embeddings(req)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        return await server.health()

    @app.get("/canary", tags=["ops"])
    async def canary() -> dict[str, Any]:
        return await server.canary()

    @app.get("/stats", tags=["ops"])
    async def stats() -> dict[str, Any]:
        return await server.stats()

    return app
