"""The review queue's few error types; the HTTP layer maps them to status codes (404, 409, 400)."""

from __future__ import annotations

__all__ = ["HitlError", "ItemNotFound", "ClaimConflict", "InvalidDecision", "ReviewerConfigError"]


class HitlError(Exception):
    """Base of every review-queue error."""


class ItemNotFound(HitlError, LookupError):
    """No item of that id."""

    def __init__(self, item_id: int):
        self.item_id = item_id
        super().__init__(f"no review item {item_id}")


class ClaimConflict(HitlError):
    """Another reviewer holds the item's claim, or the item is already decided."""


class InvalidDecision(HitlError, ValueError):
    """A decision the store refuses: unknown action, or a correction that breaks the agent's contract."""


class ReviewerConfigError(HitlError, ValueError):
    """``JUSTNEWS_HITL_REVIEWERS`` is malformed (the message names the entry, never a token)."""
