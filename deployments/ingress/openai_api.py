"""The OpenAI-compatible surface: model ids, ``/v1/models``, ``/v1/chat/completions`` and ``/v1/embeddings`` bodies.

One surface: ``/v1/models`` lists exactly the ids the two endpoints accept, each naming its ``endpoint``.

A chat ``model`` is an llm agent's name (its adapter ref from the map), ``base`` (the bare base) or
``base:<agent>/<adapter>[@<version>]`` (any adapter the store holds; no version means ``@current``). Like an
agent's adapter step, a chat pins ``@current`` to the version current when it starts and takes the same
canary split (:func:`rollout.router.pin_and_choose`): an agent's name always, a ``base:`` ref when it follows
``@current`` (a caller naming a version gets that version). ``system_fingerprint`` is the pinned ref that
answered. Chat completions do not walk the agent's fallback chain: a client that names a model gets that
model or an error saying why.

Images: a served multimodal agent (the newsreader, on its vision-language base) and its adapters
(``base:newsreader/...``) take ``image_url`` content parts with ``data:`` URLs, in the first user turn, as the
vision base places them; remote URLs are refused (400), and so are image parts sent to a model that reads
text only. The ingress admits every image (``deployments.vision``) before anything is generated, so a bad one
is a 4xx; ``/v1/models`` lists what each id reads (``modalities``). A multimodal agent the application does
not serve, and its adapters, are neither listed nor accepted.

An embeddings ``model`` is an embedding agent (scout, memory) or the embeddings model's name; all go to the
one embeddings deployment, whose ``max_texts`` / ``max_chars`` bound the inputs (413).

Streaming: the BaseLLM engine decodes a whole batch in one call and reports no per-row tokens, so a
streamed reply is generated completely first and then sent as ``chat.completion.chunk`` server-sent
events (a role chunk, content pieces, the finish chunk, optionally usage, then ``[DONE]``). Errors are
therefore always a proper HTTP status, never a broken stream.
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from agent_graph import AgentMap
from deployments.errors import InvalidRequestError, ModelNotFoundError, to_serve_error
from deployments.limits import LIMITS, AdmissionLimits, check_image_count, check_json_schema, check_prompt
from deployments.ingress.openai_protocol import (CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, ChatCompletionChunk,
                                         ChatCompletionRequest, ChatCompletionResponse, EmbeddingData,
                                         EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, ModelCard, ModelList,
                                         Usage, completion_id)

__all__ = ["BASE_MODEL", "ADAPTER_PREFIX", "ChatTarget", "resolve_model", "store_pin", "generate_body", "chat_images",
           "completion_response", "sse_events", "embedding_models", "resolve_embedding_model", "embed_body",
           "embedding_response", "model_list"]

BASE_MODEL = "base"
ADAPTER_PREFIX = "base:"
_PIECE = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class ChatTarget:
    """What a chat ``model`` names.

    Attributes:
        model_id: the BaseLLM multiplexed id before pinning (``""``: the bare base).
        canary: whether the agents' canary split applies (an agent, or a ``base:`` ref on ``@current``).
        images: whether the model reads image parts (a multimodal agent's, on its vision base).
    """

    model_id: str
    canary: bool
    images: bool = False


def _embedding_agents(agent_map: AgentMap) -> list[str]:
    return sorted(n for n, e in agent_map.agents.items() if e.served and e.kind == "embedding")


def _llm_agents(agent_map: AgentMap) -> list[str]:
    return sorted(n for n, e in agent_map.agents.items() if e.served and e.kind == "llm")


def _vision_agents(agent_map: AgentMap) -> list[str]:
    """Served multimodal agents on a base with an adapter: what chat completions route to a vision base."""
    return sorted(n for n, e in agent_map.agents.items()
                  if e.served and e.kind == "multimodal" and e.base is not None and e.adapter is not None)


def _chat_agents(agent_map: AgentMap) -> list[str]:
    return sorted(_llm_agents(agent_map) + _vision_agents(agent_map))


def _adapter_reads_images(agent: str, agent_map: AgentMap) -> bool | None:
    """Whether adapters of ``agent`` read images; None when chat completions do not take them: a multimodal
    (or embedding) agent the application does not serve on a base has no pool to load them into. Text adapters
    load into the shared text base whether their agent is served or not."""
    entry = agent_map.agents.get(agent)
    if entry is None or entry.kind == "llm":
        return False
    return True if agent in _vision_agents(agent_map) else None


def resolve_model(model: str, agent_map: AgentMap) -> ChatTarget:
    """What a chat ``model`` names.

    Raises:
        ModelNotFoundError: not an agent, ``base`` or ``base:<adapter ref>`` (404), or an adapter of an agent
            the application does not serve.
        InvalidRequestError: an embedding agent, or ``base:`` with a malformed or non-adapter ref (400).
    """
    if model == BASE_MODEL:
        return ChatTarget("", canary=False)
    if model.startswith(ADAPTER_PREFIX):
        from modelstore.errors import RefError
        from modelstore.refs import CURRENT, AdapterRef, parse_ref

        raw = model[len(ADAPTER_PREFIX):]
        try:
            ref = parse_ref(raw)
        except RefError as exc:
            raise InvalidRequestError(f"model {model!r}: {exc}") from None
        if not isinstance(ref, AdapterRef):
            raise InvalidRequestError(f"model {model!r}: 'base:' takes an adapter ref "
                                      f"('<agent>/<adapter>@<version>'); use '{BASE_MODEL}' for the bare base")
        images = _adapter_reads_images(ref.agent, agent_map)
        if images is None:
            raise ModelNotFoundError(f"model {model!r} is an adapter of agent {ref.agent!r}, which this application "
                                     f"does not serve (GET /v1/models lists what it serves)")
        return ChatTarget(str(ref), canary=ref.version == CURRENT, images=images)
    entry = agent_map.agents.get(model)
    if entry is None or not entry.served:
        raise ModelNotFoundError(f"model {model!r} is not served by {CHAT_ENDPOINT}; use an agent "
                                 f"({', '.join(_chat_agents(agent_map))}), '{BASE_MODEL}' or "
                                 f"'{ADAPTER_PREFIX}<agent>/<adapter>@<version>' (GET /v1/models lists them)")
    if entry.kind == "embedding":
        raise InvalidRequestError(f"model {model!r} is an embedding model; call POST {EMBEDDINGS_ENDPOINT}")
    if entry.kind == "llm":
        return ChatTarget(entry.adapter_for(None) or "", canary=True)
    if model not in _vision_agents(agent_map):
        raise InvalidRequestError(f"model {model!r} is a {entry.kind} agent without an adapter on a base; call "
                                  f"POST /agents/{model} instead")
    return ChatTarget(entry.adapter_for(None), canary=True, images=True)


def store_pin(store: Any) -> Callable[[str], str]:
    """The chat path's ``pin``: ``@current`` to the version current now, store errors as HTTP errors.

    The callable raises AdapterNotFoundError (404: namespace or version not in the store), InvalidRequestError
    (400: malformed ref) or AdapterLoadFailedError (500: the store's copy is broken).
    """
    from modelstore.errors import ModelStoreError

    def pin(ref: str) -> str:
        try:
            return str(store.pin(ref))
        except ModelStoreError as exc:  # the one mapping: RefError 400, NotFoundError 404, the rest 500
            raise to_serve_error(exc) from None

    return pin


def chat_images(req: ChatCompletionRequest, images: bool = False,
                limits: AdmissionLimits = LIMITS) -> list[tuple[str, str]]:
    """``(field, url)`` of every image part of a chat, in order, after the rules that need no decoding.

    Args:
        req: the chat request.
        images: whether the requested model reads images (:attr:`ChatTarget.images`).
        limits: the admission limits (the image count).

    Raises:
        InvalidRequestError: image parts for a model that reads text only, or outside the first user turn
            (a vision base opens the first user turn with the request's images) (400).
        RequestTooLargeError: more than ``max_images_per_request`` images (413).
    """
    found = [(i, f"messages[{i}].content[{j}]", url) for i, m in enumerate(req.messages) for j, url in m.image_urls()]
    if not found:
        return []
    if not images:
        raise InvalidRequestError(f"model {req.model!r} reads text only, but {found[0][1]} is an image_url part; "
                                  f"send images to a model that reads them (GET /v1/models: modalities)")
    first_user = next((i for i, m in enumerate(req.messages) if m.role == "user"), None)
    elsewhere = [part for i, part, _ in found if i != first_user]
    if elsewhere:
        raise InvalidRequestError(f"{elsewhere[0]}: image parts go in the first user message (the vision base "
                                  f"opens that turn with the request's images)")
    check_image_count(len(found), limits)
    return [(f"{part}.image_url.url", url) for _, part, url in found]


def generate_body(req: ChatCompletionRequest, default_max_tokens: int, images: bool = False,
                  limits: AdmissionLimits = LIMITS) -> dict[str, Any]:
    """The BaseLLM ``GenerateRequest`` body of a chat completion, after the admission limits the body's type
    cannot express (sizes: 413; schema shape: 400), so a refused request costs the replicas nothing.

    A message's content parts become its text (text parts joined by newlines); image parts become the body's
    ``images``, in order (:func:`chat_images`: the caller decodes them before sending the body).

    Raises:
        LimitExceededError, RequestTooLargeError, SchemaTooLargeError: see ``deployments.limits``.
        InvalidRequestError: image parts the model cannot take (:func:`chat_images`).
    """
    image_parts = chat_images(req, images, limits)
    check_prompt(None, [m.text() for m in req.messages], limits)
    schema = req.response_format.schema_dict() if req.response_format is not None else None
    if schema is not None:
        check_json_schema(schema, field="response_format.json_schema.schema")
    body: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.text()} for m in req.messages],
        "max_new_tokens": req.new_tokens(default_max_tokens),
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "stop": req.stop or [],
        "seed": req.seed,
    }
    if req.response_format is not None:
        body["json_schema"] = schema
    if image_parts:
        body["images"] = [url for _, url in image_parts]
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


def embedding_models(agent_map: AgentMap, embedding_model: str | None) -> list[str]:
    """The ``model`` ids ``/v1/embeddings`` accepts (none without an embeddings deployment)."""
    return [*_embedding_agents(agent_map), embedding_model] if embedding_model else []


def resolve_embedding_model(model: str, agent_map: AgentMap, embedding_model: str | None) -> None:
    """Check an embeddings ``model``.

    Raises:
        NotServedError: the application has no embeddings deployment (404).
        InvalidRequestError: a chat model (400).
        ModelNotFoundError: anything else (404).
    """
    from deployments.errors import NotServedError

    accepted = embedding_models(agent_map, embedding_model)
    if not accepted:
        raise NotServedError("this application runs no embeddings deployment")
    if model in accepted:
        return
    if model == BASE_MODEL or model.startswith(ADAPTER_PREFIX) or model in _chat_agents(agent_map):
        raise InvalidRequestError(f"model {model!r} is a chat model; call POST {CHAT_ENDPOINT}")
    raise ModelNotFoundError(f"model {model!r} is not served by {EMBEDDINGS_ENDPOINT}; use one of "
                             f"{', '.join(accepted)}")


def embed_body(req: EmbeddingRequest) -> dict[str, Any]:
    """The embeddings deployment's ``EmbedRequest`` body (it refuses too many or too long texts: 413)."""
    return {"texts": req.texts(), "normalize": True, "dimensions": req.dimensions, "count_tokens": True}


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embedding_response(req: EmbeddingRequest, reply: dict[str, Any]) -> EmbeddingResponse:
    """OpenAI's embeddings list from an ``EmbedResponse`` dict."""
    encode = _b64 if req.encoding_format == "base64" else (lambda v: v)
    tokens = int(reply.get("tokens") or 0)
    return EmbeddingResponse(model=req.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
                             data=[EmbeddingData(index=i, embedding=encode(v)) for i, v in enumerate(reply["vectors"])])


def model_list(agent_map: AgentMap, store: Any, embedding_model: str | None = None) -> ModelList:
    """``/v1/models``: exactly the ids the two endpoints accept, each with its ``endpoint``.

    Chat: the base, every served llm and multimodal agent, every adapter version the store holds and each
    adapter's ``@current`` (``base:<ref>``), except adapters of agents the application does not serve; a
    multimodal agent and its adapters read images too (``modalities``). Embeddings (only with an embeddings
    deployment): the embedding agents and the embeddings model.

    Args:
        agent_map: the map (agents and their adapter refs).
        store: a ``modelstore.ModelStore``; refs are pinned to versions as of now.
        embedding_model: name of the embeddings deployment's model (None: no embeddings deployment).
    """
    chat = {"endpoint": CHAT_ENDPOINT}
    base_ref = str(store.resolve("base_models@current").ref)
    cards = [ModelCard(id=BASE_MODEL, kind="base", ref=base_ref, **chat)]
    text, both = ["text"], ["text", "image"]
    for name in _chat_agents(agent_map):
        entry = agent_map.agents[name]
        adapter = entry.adapter_for(None)
        ref = str(store.resolve(adapter).ref) if adapter else base_ref
        cards.append(ModelCard(id=name, kind="agent", ref=ref, modalities=both if entry.kind == "multimodal" else text,
                               **chat))
    for ns in store.namespaces():
        if getattr(ns, "kind", None) != "adapter":
            continue
        namespace = str(ns).split("@", 1)[0]
        images = _adapter_reads_images(namespace.split("/", 1)[0], agent_map)
        if images is None:
            continue
        modalities = both if images else text
        for version in store.versions(ns):
            ref = f"{namespace}@{version}"
            cards.append(ModelCard(id=ADAPTER_PREFIX + ref, kind="adapter", ref=ref, modalities=modalities, **chat))
        current = store.current_version(ns)
        if current is not None:
            cards.append(ModelCard(id=f"{ADAPTER_PREFIX}{namespace}@current", kind="adapter",
                                   ref=f"{namespace}@{current}", modalities=modalities, **chat))
    if embedding_model:
        for name in _embedding_agents(agent_map):
            cards.append(ModelCard(id=name, kind="agent", ref=embedding_model, endpoint=EMBEDDINGS_ENDPOINT))
        cards.append(ModelCard(id=embedding_model, kind="embedding", ref=embedding_model, endpoint=EMBEDDINGS_ENDPOINT))
    return ModelList(data=cards)
