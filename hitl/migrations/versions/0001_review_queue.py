"""The review queue: items and their audit trail.

Revision ID: 0001_review_queue
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_review_queue"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hitl_items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("output", sa.JSON(), nullable=False),
        sa.Column("answered_by", sa.String(300), nullable=True),
        sa.Column("step", sa.String(16), nullable=True),
        sa.Column("pool", sa.String(128), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("reason_tags", sa.String(300), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claim_expires_at", sa.DateTime(), nullable=True),
        sa.Column("decided_by", sa.String(64), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("correction", sa.JSON(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_hitl_items_agent", "hitl_items", ["agent"])
    op.create_index("ix_hitl_items_state", "hitl_items", ["state"])
    op.create_index("ix_hitl_items_created_at", "hitl_items", ["created_at"])
    op.create_index("ix_hitl_items_decided_at", "hitl_items", ["decided_at"])
    op.create_index("ix_hitl_items_agent_state_created", "hitl_items", ["agent", "state", "created_at"])
    op.create_table(
        "hitl_audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("hitl_items.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_hitl_audit_item_id", "hitl_audit", ["item_id"])


def downgrade() -> None:
    op.drop_table("hitl_audit")
    op.drop_table("hitl_items")
