"""Domain errors of the Serve layer, each carrying the HTTP status the ingress should answer with.

A replica raises these (never a bare engine or store error) so a caller behind a
``DeploymentHandle`` can tell its own mistakes from ours: Ray re-raises a replica's exception in the
caller as a ``RayTaskError`` that is also an instance of the original class, so
``except AdapterNotFoundError`` works across the handle. Every constructor takes one message string,
which keeps the exceptions picklable.

This module is the one error hierarchy of ``deployments/`` and :func:`to_serve_error` the one mapping from
any exception (ModelStore, engine, agent graph, pydantic, Ray's back-pressure) to the error a caller sees;
:func:`error_body` is its JSON body, and ``deployments.ingress.http_errors`` only turns that into HTTP
responses (headers, FastAPI handlers). The engine's and the store's errors know nothing of HTTP.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ServeError",
    "InvalidRequestError",
    "AdapterNotFoundError",
    "RequestTooLargeError",
    "LimitExceededError",
    "SchemaTooLargeError",
    "InvalidImageError",
    "UnsupportedMediaTypeError",
    "SchemaCompileTimeoutError",
    "AdapterLoadFailedError",
    "OverloadedError",
    "InternalError",
    "UnauthorizedError",
    "ForbiddenError",
    "ModelNotFoundError",
    "NotServedError",
    "UnknownAgentError",
    "AgentUnavailableError",
    "FallbackExhaustedError",
    "ReviewConflictError",
    "ReviewItemNotFoundError",
    "ReviewQueueUnavailableError",
    "CsrfError",
    "to_serve_error",
    "validation_summary",
    "error_body",
]


class ServeError(Exception):
    """Base class of every Serve-layer error.

    Attributes:
        status_code: HTTP status the ingress answers with.
        error_type: stable machine-readable name used in JSON error bodies.
    """

    status_code: int = 500
    error_type: str = "internal_error"


class InvalidRequestError(ServeError, ValueError):
    """The request body, a parameter or a multiplexed model id is malformed (400)."""

    status_code = 400
    error_type = "invalid_request"


class AdapterNotFoundError(ServeError, LookupError):
    """A well-formed adapter id names nothing the ModelStore holds (404)."""

    status_code = 404
    error_type = "adapter_not_found"


class RequestTooLargeError(ServeError, ValueError):
    """The prompt or ``max_new_tokens`` exceeds an engine limit (413)."""

    status_code = 413
    error_type = "request_too_large"


class LimitExceededError(InvalidRequestError):
    """A caller-controlled value breaks an admission limit (``deployments/limits.py``) (400)."""

    error_type = "limit_exceeded"


class SchemaTooLargeError(RequestTooLargeError):
    """A JSON schema is larger than ``max_schema_bytes`` (413)."""

    error_type = "schema_too_large"


class InvalidImageError(InvalidRequestError):
    """An image cannot be admitted: corrupt or truncated, animated, a remote URL, or bytes that contradict
    their declared media type (400)."""

    error_type = "invalid_image"


class UnsupportedMediaTypeError(ServeError, ValueError):
    """An image (or other upload) is in a format this service does not decode; the message names the
    supported ones (415)."""

    status_code = 415
    error_type = "unsupported_media_type"


class SchemaCompileTimeoutError(InvalidRequestError):
    """A JSON schema's own grammar compile ran past ``grammar_compile_timeout_s`` (400: simplify the schema)."""

    error_type = "schema_compile_timeout"


class AdapterLoadFailedError(ServeError):
    """A published adapter failed verification or does not load into this base (500: not the caller's fault)."""

    status_code = 500
    error_type = "adapter_load_failed"


class OverloadedError(ServeError):
    """The replica is shutting down or out of adapter capacity; retrying elsewhere may work (503)."""

    status_code = 503
    error_type = "overloaded"


class InternalError(ServeError):
    """Anything unexpected inside the replica (500)."""

    status_code = 500
    error_type = "internal_error"


class UnauthorizedError(ServeError):
    """A bearer token is configured and the request lacks it or sends another one (401)."""

    status_code = 401
    error_type = "unauthorized"


class ForbiddenError(ServeError):
    """The bearer token is valid but not for this route: an API token on an admin route (403)."""

    status_code = 403
    error_type = "forbidden"


class CsrfError(ServeError):
    """A reviewer's form post without the session's CSRF token (403)."""

    status_code = 403
    error_type = "csrf_failed"


class ModelNotFoundError(ServeError, LookupError):
    """``model`` of an OpenAI request names no agent, base or adapter (404)."""

    status_code = 404
    error_type = "model_not_found"


class NotServedError(ServeError, LookupError):
    """The route's component is not part of this application (404)."""

    status_code = 404
    error_type = "not_served"


class UnknownAgentError(ServeError, LookupError):
    """``/agents/{agent}`` names no served agent (404)."""

    status_code = 404
    error_type = "unknown_agent"


class AgentUnavailableError(ServeError):
    """Strict mode: the agent's first step failed and falling back is forbidden (503)."""

    status_code = 503
    error_type = "agent_unavailable"


class FallbackExhaustedError(ServeError):
    """Every step of the agent's fallback chain failed (502: the models behind the agent misbehaved)."""

    status_code = 502
    error_type = "fallback_exhausted"


class ReviewConflictError(ServeError):
    """Another reviewer holds the item's claim, or it is already decided (409)."""

    status_code = 409
    error_type = "review_conflict"


class ReviewItemNotFoundError(ServeError, LookupError):
    """No review item of that id (404)."""

    status_code = 404
    error_type = "review_item_not_found"


class ReviewQueueUnavailableError(ServeError):
    """The review database cannot be reached (503); agents keep answering."""

    status_code = 503
    error_type = "review_queue_unavailable"


def validation_summary(errors: list[dict[str, Any]], limit: int = 5) -> str:
    """``field: problem; field: problem`` for the first ``limit`` pydantic/FastAPI errors."""
    parts = []
    for err in errors[:limit]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    more = len(errors) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def to_serve_error(exc: BaseException) -> ServeError:
    """Map any exception to the Serve error a caller should see (the one mapping of ``deployments/``).

    Args:
        exc: any exception raised while serving a request.

    Returns:
        ``exc`` itself when it already is a :class:`ServeError`, else a new one whose message is
        ``str(exc)``; the caller should raise it ``from exc``.
    """
    if isinstance(exc, ServeError):
        return exc
    cause = getattr(exc, "cause", None)  # a RayTaskError wrapping a downstream replica's error keeps its class
    if isinstance(cause, ServeError):
        return cause
    if type(exc).__name__ == "BackPressureError":  # ray.serve.exceptions: a downstream queue is full
        return OverloadedError(f"a downstream deployment is at its queue limit: {exc}")
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return InvalidRequestError(validation_summary(exc.errors()))
    # Imported here so this module stays importable without torch (the engine pulls it in).
    from agent_graph import errors as graph_errors
    from modelstore import errors as store_errors

    from engine import errors as engine_errors

    message = str(exc) or type(exc).__name__
    if is_oom(exc):  # retryable: another replica, or this one once the batch drained, may have the memory
        return OverloadedError(f"out of memory: {message.splitlines()[0][:300]}")
    table: list[tuple[type[BaseException], type[ServeError]]] = [
        (store_errors.RefError, InvalidRequestError),
        (store_errors.NotFoundError, AdapterNotFoundError),
        (store_errors.ModelStoreError, AdapterLoadFailedError),
        (engine_errors.GrammarCompileTimeout, SchemaCompileTimeoutError),
        (engine_errors.GrammarCompileBusy, OverloadedError),
        (engine_errors.QueueFull, OverloadedError),
        (engine_errors.EngineClosed, OverloadedError),
        (engine_errors.RequestTooLarge, RequestTooLargeError),
        (engine_errors.BatchTooLarge, RequestTooLargeError),
        (engine_errors.InvalidSchema, InvalidRequestError),
        (engine_errors.InvalidRequest, InvalidRequestError),
        (engine_errors.AdapterLoadError, AdapterLoadFailedError),
        (engine_errors.TooManyAdapters, OverloadedError),
        (engine_errors.AdapterNotLoaded, OverloadedError),
        (graph_errors.UnknownAgent, UnknownAgentError),
        (graph_errors.InvalidAgentInput, InvalidRequestError),
    ]
    for source, target in table:
        if isinstance(exc, source):
            return target(message)
    return InternalError(f"{type(exc).__name__}: {message}")


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error: torch's (CUDA or other accelerators) or the host's MemoryError."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return isinstance(exc, MemoryError) or (oom_type is not None and isinstance(exc, oom_type))


def error_body(exc: ServeError) -> dict[str, Any]:
    """The JSON body of an error response: ``{"error": {"type", "message", "status"}}``."""
    return {"error": {"type": exc.error_type, "message": str(exc), "status": exc.status_code}}
