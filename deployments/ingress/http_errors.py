"""Every failure of an HTTP request as a JSON error body with the right status, never a bare 500.

The ingress's routes raise :class:`~deployments.errors.ServeError` subclasses (their own, or re-raised by
Ray from a downstream replica); :func:`deployments.errors.to_serve_error` is the one mapping of any other
exception, and :func:`install_error_handlers` turns those, FastAPI's validation errors
(422 by default, 400 here: a malformed body is a bad request), unknown routes and Serve's back-pressure
into ``{"error": {"type", "message", "status"}}``. Overload answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import sys

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from deployments.errors import (InvalidRequestError, LimitExceededError, ServeError, error_body, to_serve_error,
                                validation_summary)

__all__ = ["body_parse_error", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)


def body_parse_error(cause: BaseException | None) -> ServeError | None:
    """What a request body FastAPI could not parse (its generic 400) was: too deeply nested JSON (the parser's
    limit is Python's recursion limit) or bytes that are not UTF-8. None for anything else."""
    if isinstance(cause, RecursionError):
        return LimitExceededError(f"the JSON body is nested deeper than the parser's limit of about "
                                  f"{sys.getrecursionlimit()} levels (Python's recursion limit); no route takes a "
                                  f"body nested more than a few dozen levels")
    if isinstance(cause, UnicodeDecodeError):
        return InvalidRequestError(f"the body is not UTF-8 JSON: {cause}")
    return None


def error_response(exc: BaseException, retry_after_s: int = 1) -> JSONResponse:
    """The JSON response of an error; 503 carries ``Retry-After``, 401 and 403 ``WWW-Authenticate``."""
    error = to_serve_error(exc)
    if error.status_code >= 500 and error.status_code != 503:
        log.error("request failed: %s", exc)
    body = error_body(error)
    # A Ray-wrapped error's str() includes the remote traceback; the caller gets the message line only.
    message = body["error"]["message"]
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ServeError):
        message = str(cause)
    body["error"]["message"] = message
    headers = {}
    if error.status_code == 503:
        headers["Retry-After"] = str(retry_after_s)
    if error.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if error.status_code == 403:
        headers["WWW-Authenticate"] = 'Bearer error="insufficient_scope"'
    return JSONResponse(body, status_code=error.status_code, headers=headers)


def install_error_handlers(app: FastAPI, retry_after_s: int = 1) -> None:
    """Route every exception a request can raise to :func:`error_response`."""

    async def on_serve_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, retry_after_s)

    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidRequestError(validation_summary(list(exc.errors()))), retry_after_s)

    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        parsed = body_parse_error(exc.__cause__) if exc.status_code == 400 else None
        if parsed is not None:
            return error_response(parsed, retry_after_s)
        error = ServeError(str(exc.detail))
        error.status_code = exc.status_code
        error.error_type = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(error), status_code=exc.status_code, headers=exc.headers)

    from pydantic import ValidationError
    from ray.serve.exceptions import BackPressureError

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    # Specific classes are answered by Starlette's ExceptionMiddleware; the catch-all Exception handler
    # (a bug of ours) also answers JSON, after which Starlette re-raises it for the replica's logs.
    for kind in (ServeError, BackPressureError, ValidationError, Exception):
        app.add_exception_handler(kind, on_serve_error)
