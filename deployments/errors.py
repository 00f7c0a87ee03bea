"""Domain errors of the Serve layer, each carrying the HTTP status the ingress should answer with.

A replica raises these (never a bare engine or store error) so a caller behind a
``DeploymentHandle`` can tell its own mistakes from ours: Ray re-raises a replica's exception in the
caller as a ``RayTaskError`` that is also an instance of the original class, so
``except AdapterNotFoundError`` works across the handle. Every constructor takes one message string,
which keeps the exceptions picklable.

:func:`to_serve_error` converts ModelStore and engine errors at the edge of the replica;
:func:`error_body` is the JSON body the HTTP paths return.
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
    "SchemaCompileTimeoutError",
    "AdapterLoadFailedError",
    "OverloadedError",
    "InternalError",
    "to_serve_error",
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


def to_serve_error(exc: BaseException) -> ServeError:
    """Map a ModelStore or engine exception to the Serve error a caller should see.

    Args:
        exc: any exception raised while serving a request.

    Returns:
        ``exc`` itself when it already is a :class:`ServeError`, else a new one whose message is
        ``str(exc)``; the caller should raise it ``from exc``.
    """
    if isinstance(exc, ServeError):
        return exc
    # Imported here so this module stays importable without torch (the engine pulls it in).
    from modelstore import errors as store_errors

    from deployments.engine import errors as engine_errors

    message = str(exc) or type(exc).__name__
    if is_oom(exc):  # retryable: another replica, or this one once the batch drained, may have the memory
        return OverloadedError(f"out of memory: {message.splitlines()[0][:300]}")
    table: list[tuple[type[BaseException], type[ServeError]]] = [
        (store_errors.RefError, InvalidRequestError),
        (store_errors.NotFoundError, AdapterNotFoundError),
        (store_errors.ModelStoreError, AdapterLoadFailedError),
        (engine_errors.GrammarCompileTimeout, SchemaCompileTimeoutError),
        (engine_errors.GrammarCompileBusy, OverloadedError),
        (engine_errors.RequestTooLarge, RequestTooLargeError),
        (engine_errors.BatchTooLarge, RequestTooLargeError),
        (engine_errors.InvalidSchema, InvalidRequestError),
        (engine_errors.InvalidRequest, InvalidRequestError),
        (engine_errors.AdapterLoadError, AdapterLoadFailedError),
        (engine_errors.TooManyAdapters, OverloadedError),
        (engine_errors.AdapterNotLoaded, OverloadedError),
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
