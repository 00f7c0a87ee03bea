"""``justnews canary start|status|rollback|promote|gate``: canaries of an agent's adapter, from the shell.

The commands read and write the canary state beside the ModelStore (``rollout.state``); the agents of a
running cluster pick a change up within about a second, and the cluster's canary controller gates it.
``gate`` runs the same gate by hand (once, or every ``--watch`` seconds) where no controller runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any, Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="justnews canary", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser, agent_required: bool = True) -> None:
        p.add_argument("--agent", required=agent_required, help="the agent whose adapter is on trial")
        p.add_argument("--adapter", help="adapter name (default: the agent's adapter in the agent map)")
        p.add_argument("--task", help="the task adapter of a multi-adapter agent (the map's task_adapters)")
        p.add_argument("--store-root", help="ModelStore root (default: $MODEL_STORE_ROOT or the default)")
        p.add_argument("--map", dest="map_path", help="AGENT_MODEL_MAP.json (default: the packaged one)")

    p = sub.add_parser("start", help="route a share of the agent's traffic to a candidate version")
    common(p)
    p.add_argument("--version", required=True, help="the candidate version (published, not current)")
    p.add_argument("--fraction", type=float, default=0.05, help="the first stage's traffic share (default 0.05)")
    p.add_argument("--stages", help="comma-separated shares, e.g. 0.05,0.25 (default: FRACTION then 0.25); "
                                    "passing the last one promotes to 100%%")
    p.add_argument("--window", type=float, default=1800.0, help="observation window per stage, seconds (1800)")
    p.add_argument("--mirror", action="store_true", help="also send the rest of the traffic to the candidate, "
                                                           "without returning its answers")
    p.add_argument("--p95-tolerance", type=float, default=0.05, help="allowed p95 increase, fraction (0.05)")
    p.add_argument("--p95-slack", type=float, default=0.0, help="extra absolute p95 allowance, seconds (0)")
    p.add_argument("--error-tolerance", type=float, default=0.05,
                   help="allowed error-rate increase, absolute (0.05 = 5 points)")
    p.add_argument("--min-requests", type=int, default=20, help="requests per version before a decision (20)")

    p = sub.add_parser("status", help="canaries with both versions' figures side by side")
    common(p, agent_required=False)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("rollback", help="end the agent's canary now; all traffic back to the baseline")
    common(p)
    p.add_argument("--reason", default="rolled back by hand")

    p = sub.add_parser("promote", help="promote the agent's canary candidate now (current flips to it)")
    common(p)
    p.add_argument("--reason", default="promoted by hand")

    p = sub.add_parser("gate", help="run the canary gate over every running canary (once, or --watch)")
    p.add_argument("--store-root", help="ModelStore root")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="repeat every SECONDS until interrupted")
    return parser


def _namespace(args: argparse.Namespace) -> str:
    """The adapter namespace ``agent/name`` the command is about."""
    from agent_graph import load_agent_map
    from modelstore.refs import AdapterRef, parse_ref

    if args.adapter:
        return f"{args.agent}/{args.adapter}"
    entry = load_agent_map(args.map_path).entry(args.agent)
    raw = entry.adapter_for(args.task) if args.task else entry.adapter
    if args.task and args.task not in (entry.task_adapters or {}):
        raise LookupError(f"agent {args.agent!r} has no task adapter {args.task!r} "
                          f"(task_adapters: {sorted(entry.task_adapters or {})})")
    if not raw:
        raise LookupError(f"agent {args.agent!r} has no adapter in the agent map; name one with --adapter")
    ref = parse_ref(raw)
    assert isinstance(ref, AdapterRef)
    return ref.namespace


def _controller(store_root: str | None):
    from modelstore import ModelStore
    from rollout import CanaryController

    return CanaryController(ModelStore(store_root))


def _ts(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def format_status(entries: list[dict[str, Any]], now: float) -> str:
    """Human-readable ``status``: one block per canary, versions side by side."""
    if not entries:
        return "no canaries"
    blocks = []
    for e in entries:
        s = e["state"]
        head = (f"{s['adapter']}  canary {s['id']}  {s['status'].replace('_', ' ')}  "
                f"candidate {s['candidate']} vs baseline {s['baseline']}  traffic {e['fraction']:.0%}")
        if s["status"] == "running":
            left = max(0.0, s["stage_started_at"] + s["window_s"] - now)
            head += (f"  stage {s['stage'] + 1}/{len(s['stages'])} of {', '.join(f'{f:.0%}' for f in s['stages'])}"
                     f"  window {s['window_s']:.0f} s ({left:.0f} s left){'  mirroring' if s['mirror'] else ''}")
        rows = [f"  {'role':<10} {'version':<16} {'requests':>8} {'errors':>6} {'err %':>6} {'schema':>6} "
                f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
        for role, f in e["figures"].items():
            rate = "-" if f["error_rate"] is None else f"{f['error_rate'] * 100:.1f}"
            rows.append(f"  {role:<10} {f['version']:<16} {f['requests']:>8} {f['errors']:>6} {rate:>6} "
                        f"{f['schema_failures']:>6} {_ms(f['p50_s']):>8} {_ms(f['p95_s']):>8} {_ms(f['p99_s']):>8}")
        b = s["bounds"]
        rows.append(f"  bounds: p95 +{b['p95_tolerance']:.0%} (+{b['p95_slack_s']} s), error rate "
                    f"+{b['error_rate_tolerance']:.0%}, >= {b['min_requests']} requests per version")
        if e["gate"]:
            rows.append(f"  gate: {e['gate']['action']}: {e['gate']['reason']}")
        for d in e["decisions"]:
            rows.append(f"  {_ts(d['at'])}  {d['action']:<8} by {d['by']:<8} {d['fraction']:.0%}  {d['reason']}")
        blocks.append("\n".join([head, *rows]))
    return "\n\n".join(blocks)


def run(args: argparse.Namespace) -> int:
    from rollout import CanaryBounds

    ctl = _controller(args.store_root)
    if args.action == "start":
        stages = [float(x) for x in args.stages.split(",")] if args.stages else \
            ([args.fraction, 0.25] if args.fraction < 0.25 else [args.fraction])
        bounds = CanaryBounds(p95_tolerance=args.p95_tolerance, p95_slack_s=args.p95_slack,
                              error_rate_tolerance=args.error_tolerance, min_requests=args.min_requests)
        state = ctl.start(_namespace(args), args.version, stages=stages, window_s=args.window, mirror=args.mirror,
                          bounds=bounds)
        print(f"canary {state.id}: {state.adapter}@{state.candidate} takes {state.fraction:.0%} of "
              f"{state.agent}'s traffic (baseline {state.baseline}); stages {state.stages}, window {state.window_s:.0f} s")
    elif args.action == "status":
        entries = ctl.status(_namespace(args) if args.agent else None)
        print(json.dumps(entries, indent=2) if args.json else format_status(entries, time.time()))
    elif args.action == "rollback":
        state = ctl.rollback(_namespace(args), args.reason)
        print(f"canary {state.id} rolled back: {state.adapter} serves {state.baseline} only")
    elif args.action == "promote":
        state = ctl.promote(_namespace(args), args.reason)
        print(f"canary {state.id} promoted: {state.adapter} current is {state.candidate}")
    elif args.action == "gate":
        while True:
            for d in ctl.tick():
                print(f"{_ts(d.at)} {d.adapter} {d.action} ({d.fraction:.0%}): {d.reason}", flush=True)
            if not args.watch:
                break
            time.sleep(args.watch)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``justnews canary ...``; returns the exit code (2 with one line on stderr for a refused command)."""
    from modelstore.errors import ModelStoreError
    from rollout import CanaryError

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except (CanaryError, ModelStoreError, LookupError, ValueError, OSError) as exc:
        print(f"justnews canary {args.action}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
