"""Domain errors of the placement planner.

Every message names the value and the limit it broke, so an operator can act on the message alone
("min_replicas (5) of 'BaseLLM' needs 5 x 11,003 MiB but only 4 fit ...").
"""

from __future__ import annotations

__all__ = ["PlanningError", "InventoryError", "DemandError", "NoVariantFitsError", "CapacityError"]


class PlanningError(ValueError):
    """Base class of every planner error (a ``ValueError``: the inputs, not the code, are wrong)."""


class InventoryError(PlanningError):
    """The GPU / node inventory is malformed, empty, or cannot be discovered."""


class DemandError(PlanningError):
    """A deployment demand is malformed or names something the store does not hold."""


class NoVariantFitsError(PlanningError):
    """No allowed variant of a base fits one replica (weights + KV cache + adapters + context) on a GPU/node."""


class CapacityError(PlanningError):
    """The inventory cannot hold what the operator asked for (e.g. every deployment's min_replicas at once)."""
