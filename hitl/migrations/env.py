"""Alembic environment of the review queue: runs on the engine handed over in ``config.attributes``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from hitl.models import Base

config = context.config


def run() -> None:
    engine = config.attributes.get("engine")
    if engine is None:  # the `alembic` CLI pointed at this directory: take the URL from the environment
        from hitl.db import make_engine, resolve_url

        engine = make_engine(resolve_url(config.get_main_option("sqlalchemy.url") or None))
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, so concurrent migrators serialise
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7417201)"))
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("the review queue migrates online only (justnews hitl migrate)")
run()
