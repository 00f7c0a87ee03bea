"""An agent's fallback chain as data: adapter, then the bare base, then the legacy last resort.

:func:`routes` turns the map's chain into concrete steps and :func:`generation_request` builds a model
step's request; :class:`Answer` records who answered. The one walker of the chain is
:class:`deployments.agent.server.AgentServer` (async, with deadlines, pools and canaries); this module has
no serving code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from .contracts import AgentSpec
from .schema import AgentEntry, AgentMap

__all__ = ["Route", "Answer", "routes", "generation_request"]

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

    A multimodal agent's request also carries ``images``: each image of the input as the caller sent it
    (base64 or a ``data:`` URL), in order; the base replica admits and decodes them again, as it would any
    caller's, and opens the first user turn with their image tokens (``AgentSpec.prompt``).
    """
    body = {"messages": spec.build_messages(inp), "json_schema": spec.json_schema(inp),
            "max_new_tokens": entry.max_new_tokens, "temperature": entry.temperature}
    if spec.image_fields:
        body["images"] = [source for _, source in spec.images_of(inp)]
    return body
