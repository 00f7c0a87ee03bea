"""The inference engine: one base model, resident LoRA adapters, batched mixed-adapter generation.

Plain classes, no Ray: ``deployments/base_llm*.py`` wraps them in Serve, tests use them directly.
"""

from .adapters import AdapterRegistry
from .config import EngineConfig
from .engine import InferenceEngine
from .errors import (
    AdapterLoadError,
    AdapterNotLoaded,
    BatchTooLarge,
    EngineError,
    InvalidRequest,
    InvalidSchema,
    RequestTooLarge,
    TooManyAdapters,
)
from .loader import AdapterLoader
from .params import GenerationRequest, GenerationResult, SamplingParams

__all__ = [
    "EngineConfig",
    "SamplingParams",
    "GenerationRequest",
    "GenerationResult",
    "InferenceEngine",
    "AdapterLoader",
    "AdapterRegistry",
    "EngineError",
    "RequestTooLarge",
    "BatchTooLarge",
    "AdapterNotLoaded",
    "AdapterLoadError",
    "TooManyAdapters",
    "InvalidSchema",
    "InvalidRequest",
]
