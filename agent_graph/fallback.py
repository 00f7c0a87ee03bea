"""Walking an agent's fallback chain: adapter, then the bare base, then the legacy last resort.

The chain comes from the agent map; running a model is injected (``execute``), so this module has no
serving code and tests drive it with fakes. A step fails on any exception or on a reply that breaks
the contract; the next step is tried and every failure is kept for the caller and the logs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import BaseModel

from .contracts import AgentSpec, get_spec
from .errors import FallbackExhausted
from .heuristics import run_heuristic
from .schema import AgentEntry, AgentMap

__all__ = ["Route", "Answer", "Execute", "routes", "generation_request", "answer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """One step of a chain, made concrete.

    Attributes:
        agent: the agent.
        step: ``adapter``, ``base`` or ``legacy``.
        model_id: the adapter ref, the base ref (or specialised model id), or the legacy ref.
    """

    agent: str
    step: Literal["adapter", "base", "legacy"]
    model_id: str

    @property
    def multiplexed_model_id(self) -> str:
        """The Serve multiplexed id for the base deployment: the adapter ref, or ``""`` for the bare base."""
        return self.model_id if self.step == "adapter" else ""

    def __str__(self) -> str:
        return f"{self.step}:{self.model_id}" if self.step != "legacy" else self.model_id


@dataclass(frozen=True)
class Answer:
    """An agent's validated output and which model gave it.

    Attributes:
        agent: the agent.
        output: the output model instance.
        route: the step that answered.
        failures: ``(route, reason)`` for each step that failed before it.
    """

    agent: str
    output: BaseModel
    route: Route
    failures: tuple[tuple[str, str], ...] = field(default=())

    @property
    def answered_by(self) -> str:
        """The ref or legacy id that produced the output."""
        return self.route.model_id


# execute(route, spec, input, entry) -> reply text (parsed under the contract) or an output instance.
Execute = Callable[[Route, AgentSpec, BaseModel, AgentEntry], Any]


def routes(agent_map: AgentMap, agent: str, task: str | None = None) -> list[Route]:
    """The agent's fallback chain as concrete routes, in order; ``task`` picks a task adapter."""
    entry = agent_map.entry(agent)
    out = []
    for step in entry.fallback:
        if step == "adapter":
            out.append(Route(agent, step, entry.adapter_for(task)))
        elif step == "base":
            out.append(Route(agent, step, entry.base or entry.model))
        else:
            out.append(Route(agent, step, agent_map.legacy[agent].ref))
    return out


def generation_request(spec: AgentSpec, inp: BaseModel, entry: AgentEntry) -> dict[str, Any]:
    """The body of a base-LLM generation for ``inp``: chat messages, the narrowed schema, the defaults.

    ``max_new_tokens`` is the entry's, which :meth:`AgentMap.store_problems` checks at load against the
    agent's largest valid reply counted with the served base's tokenizer (``agent_graph.budget``): the
    grammar ends a reply as soon as its JSON is complete, so one ceiling sized for the largest input serves
    every smaller one, and narrowing it per request would save nothing.
    """
    return {"messages": spec.build_messages(inp), "json_schema": spec.json_schema(inp),
            "max_new_tokens": entry.max_new_tokens, "temperature": entry.temperature}


def answer(agent_map: AgentMap, agent: str, inp: Any, execute: Execute) -> Answer:
    """Answer ``inp`` with the first step of the agent's chain that yields a valid output.

    Args:
        agent_map: the loaded map.
        agent: agent name.
        inp: the input (model instance, dict or JSON text); validated first.
        execute: runs a model route (heuristic routes run here, without it).

    Raises:
        UnknownAgent: no such agent.
        InvalidAgentInput: ``inp`` does not validate (the caller's mistake; no step is tried).
        FallbackExhausted: every step failed; lists each failure.
    """
    spec = get_spec(agent)
    entry = agent_map.entry(agent)
    inp = spec.load_input(inp)
    failures: list[tuple[str, str]] = []
    for route in routes(agent_map, agent, spec.task_of(inp)):
        try:
            if route.step == "legacy" and route.model_id.startswith("heuristic:"):
                output = spec.validate_output(run_heuristic(route.model_id.split(":", 1)[1], inp), inp)
            else:
                reply = execute(route, spec, inp, entry)
                output = spec.parse(reply, inp) if isinstance(reply, str) else spec.validate_output(reply, inp)
        except Exception as exc:  # noqa: BLE001 - any failure of a step means: try the next one
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("agent %s: %s failed, falling back: %s", agent, route, reason)
            failures.append((str(route), reason))
            continue
        return Answer(agent, output, route, tuple(failures))
    raise FallbackExhausted(agent, failures)
