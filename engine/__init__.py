"""The inference engine: one base model, resident LoRA adapters, batched mixed-adapter generation.

Plain classes, no Ray: ``deployments/base_llm/`` wraps them in Serve; training, benchmarks and tests use them
directly. Two ways in: ``InferenceEngine.generate`` runs one fixed batch to completion;
``InferenceEngine.submit`` / ``generate_async`` feed the continuous-batching loop (``scheduler.py``) whose
rows join and leave at step boundaries over a KV cache allocated once (``kv_slots.py``).
"""

from .adapters import AdapterRegistry
from .config import EngineConfig
from .engine import InferenceEngine
from .errors import (
    AdapterLoadError,
    AdapterNotLoaded,
    BatchTooLarge,
    EngineClosed,
    EngineError,
    InvalidRequest,
    InvalidSchema,
    QueueFull,
    RequestTooLarge,
    TooManyAdapters,
)
from .loader import AdapterLoader
from .kv_slots import SlotKVCache
from .params import GenerationRequest, GenerationResult, SamplingParams
from .scheduler import RowHandle

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
    "QueueFull",
    "EngineClosed",
    "RowHandle",
    "SlotKVCache",
]
