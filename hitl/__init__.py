"""Human-in-the-loop review: a durable review queue (SQLAlchemy + Alembic), routing rules applied to agent
answers, claims so two reviewers never decide one item, contract-checked corrections, and the export of
decisions as training records. No Ray imports: ``deployments/`` wires it into the cluster.
"""

from .db import DB_ENV, default_url, make_engine, migrate, resolve_url
from .errors import ClaimConflict, HitlError, InvalidDecision, ItemNotFound, ReviewerConfigError
from .export import ExportResult, export_training, parse_since, record_of
from .models import DECIDED, STATES, AuditEvent, Item, utcnow
from .routing import ReviewRouter
from .store import REASONS, HeldStep, NewItem, ReviewStore
from .writer import QueueWriter

__all__ = [
    "DB_ENV", "default_url", "make_engine", "migrate", "resolve_url",
    "ClaimConflict", "HitlError", "InvalidDecision", "ItemNotFound", "ReviewerConfigError",
    "ExportResult", "export_training", "parse_since", "record_of",
    "DECIDED", "STATES", "AuditEvent", "Item", "utcnow",
    "ReviewRouter", "REASONS", "HeldStep", "NewItem", "ReviewStore", "QueueWriter",
]
