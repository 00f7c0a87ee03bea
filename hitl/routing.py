"""ReviewRouter: apply an agent's review rules to its answers and hand the doubtful ones to the writer.

The rules are data (``AGENT_MODEL_MAP.json``, ``review`` per agent: :class:`agent_graph.schema.ReviewRules`);
this applies them to an answer (the ``AgentResponse`` as a dict: ``output``, ``answered_by``, ``step``,
``pool``, ``fallback``) and submits an item when any holds. Deciding is cheap and synchronous; writing is
the :class:`~hitl.writer.QueueWriter`'s, off the request path. Nothing here raises into the caller.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable

from agent_graph import get_spec
from agent_graph.schema import ReviewRules

from .store import NewItem
from .writer import QueueWriter

__all__ = ["ReviewRouter"]

log = logging.getLogger(__name__)


class ReviewRouter:
    """One agent's rules over a writer.

    Args:
        agent: the agent.
        rules: its review rules.
        writer: where items go.
        draw: uniform random numbers for the sampling rule (tests pass a fixed one).
    """

    def __init__(self, agent: str, rules: ReviewRules, writer: QueueWriter, draw: Callable[[], float] = random.random):
        self.agent, self.rules, self.writer, self._draw = agent, rules, writer, draw
        self.offered = 0
        self.routed = 0

    def reasons(self, response: dict[str, Any]) -> list[str]:
        """Why ``response`` goes to review (empty: it does not)."""
        return self.rules.reasons(response.get("output") or {}, fallback=bool(response.get("fallback")),
                                  draw=self._draw() if self.rules.sample else 1.0)

    def offer(self, inp: dict[str, Any], response: dict[str, Any]) -> list[str]:
        """Queue ``response`` to ``inp`` if a rule says so; returns the reasons. Never raises."""
        try:
            self.offered += 1
            reasons = self.reasons(response)
            if reasons:
                self.routed += 1
                inp = get_spec(self.agent).load_input(inp).model_dump(mode="json")  # as the contract writes it
                self.writer.submit(NewItem(agent=self.agent, input=inp, output=response["output"],
                                           reasons=tuple(reasons), answered_by=response.get("answered_by"),
                                           step=response.get("step"), pool=response.get("pool")))
            return reasons
        except Exception as exc:  # noqa: BLE001 - review is best effort, the answer is not
            log.warning("hitl: review routing of a %s answer failed: %s", self.agent, exc)
            return []
