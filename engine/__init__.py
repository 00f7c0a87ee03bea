"""The inference engine: one base model, resident LoRA adapters, batched mixed-adapter generation.

Plain classes, no Ray: ``deployments/base_llm/`` wraps them in Serve; training, benchmarks and tests use them
directly. Two ways in: ``InferenceEngine.generate`` runs one fixed batch to completion;
``InferenceEngine.submit`` / ``generate_async`` feed the continuous-batching loop (``scheduler.py``) whose
rows join and leave at step boundaries over a KV cache allocated once (``kv_slots.py``).
"""

from . import errors
from .adapters import AdapterRegistry
from .config import EngineConfig
from .engine import InferenceEngine
from .errors import *  # noqa: F403 -- every engine error, listed once in errors.__all__
from .kv_slots import SlotKVCache
from .params import GenerationRequest, GenerationResult, SamplingParams
from .scheduler import RowHandle

__all__ = ["EngineConfig", "SamplingParams", "GenerationRequest", "GenerationResult", "InferenceEngine",
           "AdapterRegistry", "RowHandle", "SlotKVCache", *errors.__all__]
