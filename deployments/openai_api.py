"""The OpenAI-compatible surface: model ids, ``/v1/models`` and ``/v1/chat/completions`` bodies.

A chat ``model`` is an llm agent's name (its adapter ref from the map, as pinned now), ``base`` (the bare
base) or ``base:<agent>/<adapter>@<version>`` (any adapter the store holds). Chat completions do not walk
the agent's fallback chain: a client that names a model gets that model or an error saying why.

Streaming: the BaseLLM engine decodes a whole batch in one call and reports no per-row tokens, so a
streamed reply is generated completely first and then sent as ``chat.completion.chunk`` server-sent
events (a role chunk, content pieces, the finish chunk, optionally usage, then ``[DONE]``). Errors are
therefore always a proper HTTP status, never a broken stream.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from agent_graph import AgentMap
from deployments.errors import InvalidRequestError
from deployments.http_errors import ModelNotFoundError
from deployments.limits import check_json_schema, check_prompt
from deployments.openai_protocol import (ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ModelCard,
                                         ModelList, Usage, completion_id)

__all__ = ["BASE_MODEL", "ADAPTER_PREFIX", "resolve_model", "generate_body", "completion_response", "sse_events",
           "model_list"]

BASE_MODEL = "base"
ADAPTER_PREFIX = "base:"
_PIECE = re.compile(r"\S+\s*|\s+")


def resolve_model(model: str, agent_map: AgentMap) -> str:
    """The BaseLLM multiplexed model id for a chat ``model``.

    Raises:
        ModelNotFoundError: not an agent, ``base`` or ``base:<adapter ref>`` (404).
        InvalidRequestError: an agent that is not a text agent (400).
    """
    if model == BASE_MODEL:
        return ""
    if model.startswith(ADAPTER_PREFIX):
        ref = model[len(ADAPTER_PREFIX):]
        if not ref:
            raise InvalidRequestError(f"model {model!r}: give an adapter ref after 'base:'")
        return ref  # the BaseLLM parses it: 400 when malformed, 404 when the store lacks it
    entry = agent_map.agents.get(model)
    if entry is None or not entry.served:
        llm = sorted(n for n, e in agent_map.agents.items() if e.kind == "llm")
        raise ModelNotFoundError(f"model {model!r} is not served; use an agent ({', '.join(llm)}), "
                                 f"'{BASE_MODEL}' or '{ADAPTER_PREFIX}<agent>/<adapter>@<version>'")
    if entry.kind != "llm":
        raise InvalidRequestError(f"model {model!r} is a {entry.kind} agent; call POST /agents/{model} instead")
    return entry.adapter_for(None) or ""


def generate_body(req: ChatCompletionRequest, default_max_tokens: int) -> dict[str, Any]:
    """The BaseLLM ``GenerateRequest`` body of a chat completion, after the admission limits the body's type
    cannot express (sizes: 413; schema shape: 400), so a refused request costs the replicas nothing.

    Raises:
        LimitExceededError, RequestTooLargeError, SchemaTooLargeError: see ``deployments.limits``.
    """
    check_prompt(None, [m.content for m in req.messages])
    schema = req.response_format.schema_dict() if req.response_format is not None else None
    if schema is not None:
        check_json_schema(schema, field="response_format.json_schema.schema")
    body: dict[str, Any] = {
        "messages": [m.model_dump(include={"role", "content"}) for m in req.messages],
        "max_new_tokens": req.new_tokens(default_max_tokens),
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "stop": req.stop or [],
        "seed": req.seed,
    }
    if req.response_format is not None:
        body["json_schema"] = schema
    return body


def _usage(reply: dict[str, Any]) -> Usage:
    return Usage(prompt_tokens=reply["prompt_tokens"], completion_tokens=reply["completion_tokens"],
                 total_tokens=reply["prompt_tokens"] + reply["completion_tokens"])


def _fingerprint(reply: dict[str, Any]) -> str:
    return reply.get("adapter") or reply.get("base") or ""


def completion_response(req: ChatCompletionRequest, reply: dict[str, Any]) -> ChatCompletionResponse:
    """A whole ``chat.completion`` from a BaseLLM ``GenerateResponse`` dict."""
    return ChatCompletionResponse(
        model=req.model, usage=_usage(reply), system_fingerprint=_fingerprint(reply),
        choices=[{"message": {"content": reply["text"]}, "finish_reason": reply["finish_reason"]}])


def sse_events(req: ChatCompletionRequest, reply: dict[str, Any], piece_chars: int = 16) -> Iterator[str]:
    """Server-sent events of a finished reply: role, content pieces (whole words), finish, usage, ``[DONE]``."""
    cid, fingerprint = completion_id(), _fingerprint(reply)

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        chunk = ChatCompletionChunk(id=cid, model=req.model, choices=choices, system_fingerprint=fingerprint, **extra)
        return f"data: {chunk.model_dump_json(exclude_none=False)}\n\n"

    yield event([{"delta": {"role": "assistant", "content": ""}}])
    piece = ""
    for word in _PIECE.findall(reply["text"]):
        piece += word
        if len(piece) >= piece_chars:
            yield event([{"delta": {"content": piece}}])
            piece = ""
    if piece:
        yield event([{"delta": {"content": piece}}])
    yield event([{"delta": {}, "finish_reason": reply["finish_reason"]}])
    if req.stream_options is not None and req.stream_options.include_usage:
        yield event([], usage=_usage(reply))
    yield "data: [DONE]\n\n"


def model_list(agent_map: AgentMap, store: Any, embedding_model: str | None = None) -> ModelList:
    """``/v1/models``: the base, every served agent and every adapter version the store holds.

    Args:
        agent_map: the map (agents and their adapter refs).
        store: a ``modelstore.ModelStore``; refs are pinned to versions as of now.
        embedding_model: name of the embeddings model, listed when given.
    """
    base_ref = str(store.resolve("base_models@current").ref)
    cards = [ModelCard(id=BASE_MODEL, kind="base", ref=base_ref)]
    for name, entry in sorted(agent_map.agents.items()):
        if not entry.served:
            continue
        if entry.kind == "llm":
            adapter = entry.adapter_for(None)
            ref = str(store.resolve(adapter).ref) if adapter else str(store.resolve(entry.base).ref)
        else:
            ref = entry.model
        cards.append(ModelCard(id=name, kind="agent", ref=ref))
    for ns in store.namespaces():
        if getattr(ns, "kind", None) != "adapter":
            continue
        namespace = str(ns).split("@", 1)[0]
        for version in store.versions(ns):
            ref = f"{namespace}@{version}"
            cards.append(ModelCard(id=ADAPTER_PREFIX + ref, kind="adapter", ref=ref))
    if embedding_model:
        cards.append(ModelCard(id=embedding_model, kind="embedding", ref=embedding_model))
    return ModelList(data=cards)

