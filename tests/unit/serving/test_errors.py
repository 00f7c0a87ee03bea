"""One error hierarchy, one mapping: every exception a request can meet answers with one status, decided in
deployments/errors.py (the engine and the store know nothing of HTTP)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from agent_graph.errors import InvalidAgentInput, UnknownAgent
from engine import errors as engine
from deployments.errors import ServeError, error_body, to_serve_error
from modelstore import errors as store


class _Body(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Body.model_validate({"n": "x"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


class BackPressureError(Exception):
    """Stands in for ray.serve.exceptions.BackPressureError, matched by name (the real one needs a replica)."""


@pytest.mark.parametrize("exc, status, error_type", [
    (engine.RequestTooLarge("prompt of 5000 tokens > max_prompt_tokens (2048)"), 413, "request_too_large"),
    (engine.BatchTooLarge("33 > 32"), 413, "request_too_large"),
    (engine.InvalidSchema("bad schema"), 400, "invalid_request"),
    (engine.InvalidRequest("bad"), 400, "invalid_request"),
    (engine.AdapterNotLoaded("slot_3"), 503, "overloaded"),  # evicted under us: retry elsewhere
    (engine.TooManyAdapters("9 > 8"), 503, "overloaded"),
    (engine.AdapterLoadError("shape mismatch"), 500, "adapter_load_failed"),
    (engine.GrammarCompileTimeout("10 s"), 400, "schema_compile_timeout"),
    (engine.GrammarCompileBusy("busy"), 503, "overloaded"),
    (engine.QueueFull("256 requests already wait"), 503, "overloaded"),  # the continuous loop's bound
    (engine.EngineClosed("closed"), 503, "overloaded"),
    (store.RefError("bad ref"), 400, "invalid_request"),
    (store.NotFoundError("no such adapter"), 404, "adapter_not_found"),
    (UnknownAgent("oracle", ["critic"]), 404, "unknown_agent"),
    (InvalidAgentInput("critic", "text: field required"), 400, "invalid_request"),
    (_validation_error(), 400, "invalid_request"),
    (BackPressureError("queue full"), 503, "overloaded"),
    (MemoryError("host"), 503, "overloaded"),
    (KeyError("a bug of ours"), 500, "internal_error"),
])
def test_each_exception_has_one_status(exc, status, error_type):
    error = to_serve_error(exc)
    assert isinstance(error, ServeError)
    assert (error.status_code, error.error_type) == (status, error_type)
    assert error_body(error)["error"]["status"] == status


def test_the_engine_carries_no_http_status():
    assert not any(hasattr(cls, "http_status") for cls in vars(engine).values() if isinstance(cls, type))


def test_a_wrapped_downstream_error_keeps_its_class():
    class RayTaskErrorLike(Exception):
        def __init__(self, cause):
            super().__init__("Traceback ...")
            self.cause = cause

    inner = to_serve_error(engine.RequestTooLarge("too long"))
    assert to_serve_error(RayTaskErrorLike(inner)) is inner
