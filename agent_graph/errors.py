"""Domain errors of the agent graph.

Each error carries the offending names as attributes so the ingress can map it to an HTTP status
(``UnknownAgent`` -> 404, ``InvalidAgentInput`` -> 400; a ``ContractError`` fails a fallback step, and the
serving layer's ``FallbackExhaustedError`` is 502) with a JSON body that says what was wrong, and the message alone is enough for an operator.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AgentGraphError",
    "MapProblem",
    "AgentMapError",
    "UnknownAgent",
    "InvalidAgentInput",
    "ContractError",
]


class AgentGraphError(Exception):
    """Base class of every agent-graph error."""


@dataclass(frozen=True)
class MapProblem:
    """One thing wrong with the agent map.

    Attributes:
        agent: the agent the problem belongs to, or None for a problem of the file as a whole.
        field: the field inside the entry (``"adapter"``, ``"fallback"``, ...), or None.
        message: what is wrong, naming the offending value and the limit.
    """

    agent: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.agent is not None:
            where.append(f"agent {self.agent!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class AgentMapError(AgentGraphError, ValueError):
    """``AGENT_MODEL_MAP.json`` (or its legacy companion) is wrong, or names models the store lacks.

    Every problem found is reported at once, one per line, so an operator fixes the file in one pass.

    Attributes:
        source: the file (or ``"ModelStore <root>"``) the problems were found in.
        problems: each problem with its agent and field.
    """

    def __init__(self, source: str, problems: list[MapProblem]):
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {p}" for p in self.problems] or [f"{source}: invalid"]
        super().__init__("\n".join(lines))


class UnknownAgent(AgentGraphError, LookupError):
    """An agent name that has no contract (or no map entry).

    Attributes:
        name: the requested name.
        known: the names that do exist, sorted.
    """

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown agent {name!r}; known agents: {', '.join(self.known) or 'none'}")


class InvalidAgentInput(AgentGraphError, ValueError):
    """A request body does not validate against the agent's input model (a caller mistake: HTTP 400)."""

    def __init__(self, agent: str, message: str):
        self.agent = agent
        super().__init__(f"agent {agent!r}: invalid input: {message}")


class ContractError(AgentGraphError, ValueError):
    """A model's reply is not JSON, or is JSON that does not validate against the agent's output model.

    Attributes:
        agent: the agent whose contract was broken.
        text: the raw reply, kept whole for logs and debugging.
        reason: why it was refused.
    """

    def __init__(self, agent: str, text: str, reason: str):
        self.agent = agent
        self.text = text
        self.reason = reason
        shown = text if len(text) <= 300 else text[:300] + "..."
        super().__init__(f"agent {agent!r}: reply breaks the output contract: {reason}; reply was {shown!r}")
