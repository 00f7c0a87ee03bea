"""``justnews hitl migrate|export|list|stats``: the review queue from the shell (also ``python -m hitl``).

    justnews hitl migrate                          # create / upgrade the schema (Alembic), print the revision
    justnews hitl export --agent critic --since 7d --out critic-hitl.jsonl
    justnews hitl list --agent critic --state pending
    justnews hitl stats

The database is ``--db`` or ``$JUSTNEWS_HITL_DB``, else ``<store root>/.hitl/hitl.db`` (``--store-root`` or
``$MODEL_STORE_ROOT``). Exit status: 0 done, 2 bad arguments or an unknown agent.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="justnews hitl", description=__doc__.split("\n")[0])
    parser.add_argument("--db", help="SQLAlchemy URL (default $JUSTNEWS_HITL_DB, else the SQLite file beside the store)")
    parser.add_argument("--store-root", help="ModelStore root the SQLite default sits beside")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create or upgrade the review queue's schema to the newest revision")
    e = sub.add_parser("export", help="decided items as training JSONL (approved answers, corrections as targets)")
    e.add_argument("--agent", required=True)
    e.add_argument("--since", help="decided at or after: ISO time (UTC) or a span back from now (24h, 7d)")
    e.add_argument("--out", help="output file (default: stdout)")
    ls = sub.add_parser("list", help="items, oldest first")
    ls.add_argument("--agent")
    ls.add_argument("--reason")
    ls.add_argument("--state", action="append", help="repeatable; default every state")
    ls.add_argument("--limit", type=int, default=50)
    sub.add_parser("stats", help="items per state; queue depth and oldest pending age per agent")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .db import redact
    from .store import ReviewStore

    store = ReviewStore(args.db, store_root=args.store_root)
    try:
        if args.command == "migrate":
            rev = store.migrate()
            print(f"{redact(store.url)}: schema at revision {rev}")
        elif args.command == "export":
            from agent_graph import get_spec

            from .export import export_training, parse_since

            get_spec(args.agent)  # UnknownAgent names the known ones
            res = export_training(store, args.agent, args.out or sys.stdout, parse_since(args.since))
            print(f"{args.agent}: wrote {res.written} records ({res.approved} approved, {res.corrected} corrected) "
                  f"to {res.path}; skipped {res.rejected_skipped} rejected"
                  + (f", {len(res.invalid_skipped)} off-contract (ids {res.invalid_skipped})" if res.invalid_skipped
                     else ""), file=sys.stderr)
        elif args.command == "list":
            for it in store.list(agent=args.agent, reason=args.reason, states=args.state, limit=args.limit):
                print(json.dumps({"id": it.id, "agent": it.agent, "state": it.state, "reasons": it.reasons,
                                  "answered_by": it.answered_by, "created_at": it.created_at.isoformat() + "Z",
                                  "claimed_by": it.claimed_by, "decided_by": it.decided_by}))
        else:
            print(json.dumps({"states": store.counts(), "queue": store.queue_stats()}, indent=2))
    except (LookupError, ValueError) as exc:
        print(f"justnews hitl {args.command}: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0
