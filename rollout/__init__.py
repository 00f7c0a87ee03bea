"""Adapter rollouts: canaries with a metric gate, and their durable state beside the ModelStore.

No Ray imports: agent replicas route through :class:`CanaryRouter`, the cluster's canary controller
deployment and the ``justnews canary`` commands drive :class:`CanaryController`.
"""

from .controller import DEFAULT_STAGES, DEFAULT_WINDOW_S, CanaryController, Verdict, judge
from .router import CanaryRouter, Choice
from .state import CanaryBook, CanaryBounds, CanaryDecision, CanaryError, CanaryState, VersionFigures

__all__ = ["CanaryController", "Verdict", "judge", "DEFAULT_STAGES", "DEFAULT_WINDOW_S", "CanaryRouter", "Choice",
           "CanaryBook", "CanaryBounds", "CanaryDecision", "CanaryError", "CanaryState", "VersionFigures"]
