"""Domain errors of the inference engine.

Every error names the offending value and, where there is one, the limit it broke, so the ingress can
return the message as is. The engine knows nothing of HTTP: ``deployments.errors.to_serve_error`` is the one
place that decides which status each of these answers with.
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
    "QueueFull",
    "EngineClosed",
]


class EngineError(Exception):
    """Base class of every engine error."""


class RequestTooLarge(EngineError, ValueError):
    """A prompt is longer than ``max_prompt_tokens`` or asks for more than ``max_new_tokens_limit``."""


class BatchTooLarge(EngineError, ValueError):
    """One ``generate`` call holds more requests than ``max_batch_size``."""


class AdapterNotLoaded(EngineError, LookupError):
    """A request names an adapter that is not resident (never loaded, or already unloaded)."""


class AdapterLoadError(EngineError):
    """An adapter directory is missing, unsafe (pickle weights) or does not fit the base."""


class TooManyAdapters(EngineError):
    """Loading one more adapter would exceed ``max_loaded_adapters``; the caller must evict first."""


class InvalidSchema(EngineError, ValueError):
    """A request's ``json_schema`` cannot be compiled into a grammar."""


class InvalidRequest(EngineError, ValueError):
    """A request is malformed in a way its type cannot express (e.g. a prompt with no tokens)."""


class GrammarCompileTimeout(EngineError, ValueError):
    """A schema's own grammar compile ran longer than ``grammar_compile_timeout_s`` (or did so before)."""


class GrammarCompileBusy(EngineError):
    """The compile pool is full, or a compile waited in its queue past the timeout; retrying may work."""



class QueueFull(EngineError):
    """``max_waiting_requests`` rows already wait for a KV slot; retrying shortly may work."""


class EngineClosed(EngineError):
    """The engine was closed: it takes no new rows, and rows still waiting when it stopped get this."""
