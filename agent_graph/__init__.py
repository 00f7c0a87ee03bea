"""Agents as data: the agent model map, per-agent prompts and typed JSON contracts, fallback chains and the
newsroom pipeline. No Ray imports: the serving layer (``deployments/``) builds on this package.
"""

from . import agents  # noqa: F401 - registers every agent's contract
from .contracts import AGENTS, AgentSpec, Contract, agent_names, get_spec
from .errors import (AgentGraphError, AgentMapError, ContractError, InvalidAgentInput,
                     MapProblem, UnknownAgent)
from .fallback import Answer, Route, generation_request, routes
from .heuristics import HEURISTICS, run_heuristic
from .pipeline import NEWSROOM, Article, PipelineResult, Step, StepRecord, arun_pipeline, newsroom, run_pipeline
from .schema import AgentEntry, AgentMap, LegacyEntry, default_map_path, load_agent_map

__all__ = [
    "AGENTS", "AgentSpec", "Contract", "agent_names", "get_spec",
    "AgentGraphError", "AgentMapError", "ContractError", "InvalidAgentInput", "MapProblem",
    "UnknownAgent",
    "Answer", "Route", "generation_request", "routes",
    "HEURISTICS", "run_heuristic",
    "NEWSROOM", "Article", "PipelineResult", "Step", "StepRecord", "arun_pipeline", "newsroom", "run_pipeline",
    "AgentEntry", "AgentMap", "LegacyEntry", "default_map_path", "load_agent_map",
]
