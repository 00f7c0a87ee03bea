"""Which steps of a newsroom pipeline run hold the article for review.

The pipeline applies each step's agent review rules to the step's answer -- the deterministic ones: a blocking
verdict, an unverified claim, low confidence, a fallback answer; sampling for quality control holds nothing --
and holds the article until the items of those steps (which the agents queued themselves) are decided
(:meth:`hitl.store.ReviewStore.hold`, :meth:`~hitl.store.ReviewStore.article`).
"""

from __future__ import annotations

from typing import Any, Iterable

from .store import HeldStep

__all__ = ["held_steps"]


def held_steps(agent_map: Any, records: Iterable[Any], fell_back: Iterable[str] = ()) -> list[HeldStep]:
    """The steps of a pipeline run that hold its article.

    Args:
        agent_map: the agent map (its entries' ``review`` rules).
        records: the run's step records (``agent_graph.StepRecord``: step, agent, skipped, input, output).
        fell_back: agents whose answer came from a later fallback step.
    """
    fell_back = set(fell_back)
    out = []
    for rec in records:
        entry = agent_map.agents.get(rec.agent)
        rules = getattr(entry, "review", None)
        if rec.skipped or rules is None or rec.output is None:
            continue
        reasons = rules.reasons(rec.output, fallback=rec.agent in fell_back)  # draw=1.0: never 'sampled'
        if reasons:
            out.append(HeldStep(rec.step, rec.agent, rec.input or {}, rec.output, tuple(reasons)))
    return out
