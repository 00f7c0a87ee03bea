"""Where the review queue lives and how to reach it: URL, engine, schema migrations.

The embedded default is a SQLite file beside the ModelStore, ``<store_root>/.hitl/hitl.db``; any SQLAlchemy
URL (``postgresql+psycopg://...`` for a multi-node cluster) comes through ``$JUSTNEWS_HITL_DB``. SQLite is
opened in WAL mode with a busy timeout and every transaction ``BEGIN IMMEDIATE``, so writers from several
replica processes queue on the file lock instead of failing on a read-to-write upgrade. The schema is
Alembic's (``hitl/migrations``), applied programmatically by :func:`migrate` (at start-up, and by
``justnews hitl migrate``); concurrent migrators serialise on the database itself.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

__all__ = ["DB_ENV", "default_url", "resolve_url", "make_engine", "migrate", "current_revision", "head_revision",
           "redact"]

DB_ENV = "JUSTNEWS_HITL_DB"
_MIGRATIONS = Path(__file__).with_name("migrations")
# Alembic's `context` is one module-level proxy: two migrations in one process must not overlap (processes and
# nodes serialise on the database itself, see migrations/env.py).
_MIGRATING = threading.Lock()


def default_url(store_root: str | Path | None = None) -> str:
    """``sqlite:///<store_root>/.hitl/hitl.db``; the store root defaults as the ModelStore's does."""
    if store_root is None:
        from modelstore import ModelStore

        store_root = ModelStore(None).root
    return f"sqlite:///{Path(store_root).expanduser().resolve() / '.hitl' / 'hitl.db'}"


def resolve_url(url: str | None = None, store_root: str | Path | None = None) -> str:
    """The database URL: ``url`` if given, else ``$JUSTNEWS_HITL_DB``, else the SQLite file beside the store."""
    return url or os.environ.get(DB_ENV) or default_url(store_root)


def redact(url: str) -> str:
    """The URL with any password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    """An engine for ``url``; for SQLite, the parent directory is created and WAL + IMMEDIATE are set up.

    Args:
        url: a SQLAlchemy URL.
        busy_timeout_s: how long a SQLite connection waits for the file lock before failing.
    """
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, future=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # noqa: ANN001 - DB-API objects
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below), pysqlite stays out of it
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine, revision: str = "head") -> str | None:
    """Upgrade the schema to ``revision`` (idempotent); returns the revision the database is at."""
    from alembic import command

    with _MIGRATING:
        command.upgrade(_config(engine), revision)
    return current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest revision the package ships."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(None)).get_current_head()  # type: ignore[arg-type]
