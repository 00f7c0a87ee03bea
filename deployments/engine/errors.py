"""Domain errors of the inference engine.

Every error names the offending value and, where there is one, the limit it broke, so the ingress can
return the message as is. ``http_status`` is a hint for that mapping (the engine itself knows nothing
about HTTP): 400 bad input, 404 unknown adapter, 413 too large, 503 out of capacity, 500 our fault.
"""

from __future__ import annotations

__all__ = [
    "EngineError",
    "RequestTooLarge",
    "BatchTooLarge",
    "AdapterNotLoaded",
    "AdapterLoadError",
    "TooManyAdapters",
    "InvalidSchema",
    "InvalidRequest",
    "GrammarCompileTimeout",
    "GrammarCompileBusy",
]


class EngineError(Exception):
    """Base class of every engine error."""

    http_status: int = 500


class RequestTooLarge(EngineError, ValueError):
    """A prompt is longer than ``max_prompt_tokens`` or asks for more than ``max_new_tokens_limit``."""

    http_status = 413


class BatchTooLarge(EngineError, ValueError):
    """One ``generate`` call holds more requests than ``max_batch_size``."""

    http_status = 413


class AdapterNotLoaded(EngineError, LookupError):
    """A request names an adapter that is not resident (never loaded, or already unloaded)."""

    http_status = 404


class AdapterLoadError(EngineError):
    """An adapter directory is missing, unsafe (pickle weights) or does not fit the base."""

    http_status = 500


class TooManyAdapters(EngineError):
    """Loading one more adapter would exceed ``max_loaded_adapters``; the caller must evict first."""

    http_status = 503


class InvalidSchema(EngineError, ValueError):
    """A request's ``json_schema`` cannot be compiled into a grammar."""

    http_status = 400


class InvalidRequest(EngineError, ValueError):
    """A request is malformed in a way its type cannot express (e.g. a prompt with no tokens)."""

    http_status = 400


class GrammarCompileTimeout(EngineError, ValueError):
    """A schema's own grammar compile ran longer than ``grammar_compile_timeout_s`` (or did so before)."""

    http_status = 400


class GrammarCompileBusy(EngineError):
    """The compile pool is full, or a compile waited in its queue past the timeout; retrying may work."""

    http_status = 503
