"""Adapter training benchmark: train every default agent's adapter on its synthetic task, then score it on
the held-out split against the bare base, through one engine, as it is served (agent prompt, per-input JSON
schema, greedy). Also scores one mixed batch (rows of every agent interleaved) and the same batch with the
adapters rotated between agents -- the negative control that shows routing matters.

Writes ``bench/results/train_adapters/results.{json,csv}`` and prints a Markdown table for RESULTS.md.

    .venv/bin/python bench/train_adapters.py [--agents analyst critic] [--steps N] [--threads 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from agent_graph.contracts import get_spec
    from modelstore import ModelStore
    from modelstore.seed import seed_default_store
    from training.data import read_records
    from training.defaults import DEFAULT_AGENTS, N_EVAL, train_default_adapters
    from training.evaluate import Row, accuracy, compare, load_engine, score_rows

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", nargs="+", default=list(DEFAULT_AGENTS))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1,
                    help="train in this many worker processes at once (one thread each), as scripts/run.sh does")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/train_adapters")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        store = ModelStore(Path(tmp) / "store")
        seed_default_store(store, adapters=False)
        work = Path(tmp) / "work"
        started = time.monotonic()
        trained = train_default_adapters(store, agents=args.agents, steps=args.steps, threads=args.threads,
                                         work_dir=work, workers=args.workers, log=lambda m: print(m, file=sys.stderr))
        train_wall = time.monotonic() - started
        engine = load_engine(store, max_batch_size=256)
        rows, held = [], {}
        for rec in trained:
            agent = rec["agent"]
            held[agent] = read_records(get_spec(agent), [work / "data" / f"{agent}.eval.jsonl"])[:N_EVAL]
            scores = compare(store, agent, rec["ref"], held[agent], engine=engine)
            rows.append({**rec, "n": scores["n"], "base": scores["base"], "adapter": scores["adapter_score"]})
            print(f"{agent}: adapter {scores['adapter_score']:.3f} base {scores['base']:.3f} "
                  f"({rec['wall_time_s']} s)", file=sys.stderr)
        refs = {r["agent"]: str(store.resolve(r["ref"]).ref) for r in trained}
        agents = list(refs)
        mixed = [Row.of(a, held[a][i], refs[a]) for i in range(16) for a in agents]
        rotated = [Row.of(a, held[a][i], refs[agents[(agents.index(a) + 1) % len(agents)]])
                   for i in range(16) for a in agents]
        started = time.monotonic()
        mixed_acc = accuracy(score_rows(engine, mixed, batch_size=len(mixed)))
        mixed_s = time.monotonic() - started
        swapped_acc = accuracy(score_rows(engine, rotated, batch_size=len(rotated)))
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"workers": args.workers, "training_wall_s": round(train_wall, 1), "agents": rows,
               "mixed_batch": {"rows": len(mixed), "accuracy": mixed_acc, "seconds": round(mixed_s, 1),
                               "swapped_accuracy": swapped_acc}}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (args.out / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["agent", "n", "base", "adapter", "wall_time_s", "eval_loss", "ref"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in w.fieldnames})
    print("| agent | metric | base | adapter | training time (s) |\n|---|---|---|---|---|")
    for r in rows:
        metric = "exact match" if r["agent"] in ("synthesizer", "journalist", "reasoning") else "accuracy"
        print(f"| {r['agent']} | {metric} | {r['base']:.2f} | {r['adapter']:.2f} | {r['wall_time_s']} |")
    print(f"\ntraining wall time {train_wall:.0f} s ({args.workers} worker(s)); "
          f"sum of per-agent times {sum(r['wall_time_s'] for r in rows):.0f} s")
    print(f"mixed batch of {len(mixed)} rows: accuracy {mixed_acc:.2f}; adapters rotated: {swapped_acc:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
