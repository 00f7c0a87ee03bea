"""Articles held by the pipeline until their review items are decided.

Items get an ``input_key`` (sha256 of agent, input and answer) so a pipeline step finds the item its agent
queued; ``hitl_holds`` lists, per article, the steps that went to review.

Revision ID: 0002_article_holds
Revises: 0001_review_queue
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_article_holds"
down_revision = "0001_review_queue"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hitl_items") as batch:
        batch.add_column(sa.Column("input_key", sa.String(64), nullable=True))
        batch.create_index("ix_hitl_items_input_key", ["input_key"])
    op.create_table(
        "hitl_holds",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("article_id", sa.String(64), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("input_key", sa.String(64), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_hitl_holds_article_id", "hitl_holds", ["article_id"])


def downgrade() -> None:
    op.drop_table("hitl_holds")
    with op.batch_alter_table("hitl_items") as batch:
        batch.drop_index("ix_hitl_items_input_key")
        batch.drop_column("input_key")
