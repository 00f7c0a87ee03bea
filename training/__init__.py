"""LoRA / QLoRA adapter training for the agents, and publishing into the ModelStore.

The prompt of every training example is the agent's own (``agent_graph`` renders it through the base's
chat template) and the answer is the agent's compact JSON contract, so training and serving cannot drift.
``training.cli`` is the command line (``justnews-train``); ``training.defaults`` trains the embedded
default's adapters from the synthetic tasks in ``training.synthetic``.
"""

from .config import TrainConfig
from .errors import DataError, ResumeError, TrainingError

__all__ = ["TrainConfig", "TrainingError", "DataError", "ResumeError"]
