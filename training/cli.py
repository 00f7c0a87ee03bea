"""``justnews-train``: train, evaluate and publish agent adapters.

    justnews-train train --agent synthesizer --train-files data/synth.jsonl --publish
    justnews-train train --agent newsreader --publish     # synthetic images rendered into the output dir
    justnews-train eval-adapter --agent critic [--adapter critic/mistral_critic_v1@trained-1]
    justnews-train eval-adapter --agent newsreader        # kind / headline / both / valid, adapter vs base
    justnews-train defaults          # the embedded default: train + publish missing trained adapters
    justnews-train synth --agent analyst --out data/   # write a synthetic dataset

The newsreader trains on image + text JSONL (``{"image", "text", "target"}``, images relative to the file;
``training.vision_task``) on the vision base, and the options it is not given take its default recipe
(``training.defaults.VISION_RECIPE``) rather than the seed plan's text defaults.

Exit status: 0 done, 1 training failed, 2 bad data or arguments (the message names file and line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from .config import LORA_TARGETS, TEXT_BASE_REF, TrainConfig, default_adapter_name, is_vision_agent
from .errors import DataError, TrainingError

__all__ = ["main", "build_parser"]

_REGEX_CHARS = "*|()[]^$\\?+"  # a module name holds none of these: a --target-modules value with one is a regex


def _train_args(p: argparse.ArgumentParser) -> None:
    # Hyper-parameter defaults (None here) are TrainConfig's -- the seed plan's -- for text agents, and the
    # default recipe for vision agents (training.defaults.VISION_RECIPE).
    p.add_argument("--agent", required=True)
    p.add_argument("--adapter-name", help="default mistral_<agent>_v1 (llava_<agent>_v1 for the newsreader)")
    p.add_argument("--adapter-version", help="default a UTC timestamp")
    p.add_argument("--train-files", "--data", nargs="+", type=Path,
                   help="JSONL files; required for text agents; the newsreader's default is its synthetic task, "
                        "rendered into <output-dir>/data with a held-out split")
    p.add_argument("--eval-files", nargs="*", default=[], type=Path)
    p.add_argument("--eval-fraction", type=float, default=0.1)
    p.add_argument("--output-dir", "--output_dir", type=Path, help="default output/adapters/<adapter-name>")
    p.add_argument("--base-ref", "--base", help=f"default {TEXT_BASE_REF} (the pinned vision base for the newsreader)")
    p.add_argument("--store-root", type=Path, help="default $MODEL_STORE_ROOT")
    p.add_argument("--device", default="auto")
    p.add_argument("--quantization", choices=["auto", "none", "nf4"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--lora-r", type=int, help="default 64")
    p.add_argument("--lora-alpha", type=float, help="default 16")
    p.add_argument("--lora-dropout", type=float, help="default 0.05")
    p.add_argument("--target-modules", nargs="+",
                   help=f"module names matched as suffixes (default {' '.join(LORA_TARGETS)}), or one regex matched "
                        f"against the full module path (any value holding one of {_REGEX_CHARS!r})")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", "--train-batch-size", type=int, help="default 1")
    p.add_argument("--grad-accum", "--gradient-accumulation", type=int, help="default 8")
    p.add_argument("--learning-rate", type=float, help="default 2e-4")
    p.add_argument("--lora-plus-ratio", type=float, help="LoRA+: lr of the B matrices is this times larger (default 1)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--adam-beta2", type=float, help="default 0.999")
    p.add_argument("--warmup-steps", type=int, help="default 0")
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--no-share-prefix", dest="share_prefix", action="store_false")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--max-eval-samples", type=int)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--dry-run-steps", type=int, default=3)
    p.add_argument("--publish", action="store_true")
    p.add_argument("--no-promote", dest="promote", action="store_false")
    p.add_argument("--force", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="justnews-train", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_args(sub.add_parser("train", help="train one adapter from JSONL {input, output} records"))
    ev = sub.add_parser("eval-adapter", help="held-out score of an adapter against the bare base")
    ev.add_argument("--agent", required=True)
    ev.add_argument("--adapter", help="adapter ref; default <agent>/<mistral|llava>_<agent>_v1@current")
    ev.add_argument("--eval-files", nargs="*", default=[], type=Path, help="default: the synthetic held-out split")
    ev.add_argument("--n", type=int, help="records to score (default 64; the newsreader: its whole held-out split)")
    ev.add_argument("--store-root", type=Path)
    d = sub.add_parser("defaults", help="train + publish the embedded default's missing trained adapters")
    d.add_argument("--agents", nargs="+")
    d.add_argument("--steps", type=int, help="override the per-agent step counts")
    d.add_argument("--threads", type=int, help="torch threads when training in-process (--workers 1)")
    d.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="agents trained at once, in worker processes of one thread each (default: CPU count)")
    d.add_argument("--store-root", type=Path)
    d.add_argument("--force", action="store_true", help="retrain and replace already published trained versions")
    d.add_argument("--no-progress", dest="progress", action="store_false")
    s = sub.add_parser("synth", help="write a synthetic train / held-out dataset for an agent")
    s.add_argument("--agent", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--n-train", type=int, default=2000)
    s.add_argument("--n-eval", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    return parser


def target_modules(values: list[str]) -> list[str] | str:
    """``--target-modules`` as TrainConfig takes it: module names, or one regex (a value holding a regex character).

    Raises:
        DataError: a regex given beside other values.
    """
    if any(set(v) & set(_REGEX_CHARS) for v in values):
        if len(values) != 1:
            raise DataError("--target-modules", None, f"a regex must be the only value, got {values!r}")
        return values[0]
    return list(values)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _train(args: argparse.Namespace) -> dict:
    from .trainer import run_training

    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields and v is not None}
    if fields.get("target_modules"):
        fields["target_modules"] = target_modules(fields["target_modules"])
    fields.setdefault("output_dir", Path("output/adapters") / (args.adapter_name or default_adapter_name(args.agent)))
    if is_vision_agent(args.agent):
        from .defaults import default_data, recipe

        fields = {**recipe(args.agent), **fields}
        if not args.train_files:  # the synthetic task, rendered where the run writes (not committed anywhere)
            train, held = default_data(args.agent, Path(fields["output_dir"]) / "data")
            _log(f"{args.agent}: no --data given; rendered its synthetic task into {train.parent}")
            fields["train_files"] = [train]
            fields["eval_files"] = fields.get("eval_files") or [held]
    elif not args.train_files:
        raise DataError("--train-files", None, f"required for agent {args.agent!r} (JSONL {{input, output}} records; "
                                               f"`justnews-train synth --agent {args.agent}` writes a synthetic set)")
    result = run_training(TrainConfig(**fields), log=_log)
    return {"adapter_dir": str(result.adapter_dir), "published": result.published_ref, "summary": result.summary}


def _eval(args: argparse.Namespace) -> dict:
    from agent_graph.contracts import get_spec
    from modelstore import ModelStore

    ref = args.adapter or f"{args.agent}/{default_adapter_name(args.agent)}@current"
    if is_vision_agent(args.agent):
        return _eval_vision(args, ref)

    from .data import read_records
    from .evaluate import compare
    from .synthetic import generate

    spec = get_spec(args.agent)
    n = args.n or 64
    if args.eval_files:
        records = read_records(spec, args.eval_files, n)
    else:
        from .data import Record

        records = [Record(i, o, "synthetic", k) for k, (i, o) in enumerate(generate(args.agent, n, 1_000_000), 1)]
    return compare(ModelStore(args.store_root), args.agent, ref, records)


def _eval_vision(args: argparse.Namespace, ref: str) -> dict:
    import tempfile

    from modelstore import ModelStore

    from .vision_data import read_vision_records
    from .vision_eval import compare_vision

    with tempfile.TemporaryDirectory(prefix="justnews-eval-") as tmp:
        if args.eval_files:
            files = args.eval_files
        else:  # the held-out split default training used, rebuilt (deterministic; shares no image with training)
            from .defaults import default_data

            files = [default_data(args.agent, Path(tmp))[1]]
        records = read_vision_records(files, args.n)
        return compare_vision(ModelStore(args.store_root), args.agent, ref, records)


def _defaults(args: argparse.Namespace) -> dict:
    from modelstore import ModelStore

    from .defaults import DEFAULT_AGENTS, DEFAULT_VISION_AGENTS, train_default_adapters

    agents = args.agents or (*DEFAULT_AGENTS, *DEFAULT_VISION_AGENTS)
    done = train_default_adapters(ModelStore(args.store_root), agents=agents, steps=args.steps,
                                  threads=args.threads, progress=args.progress, force=args.force, workers=args.workers,
                                  log=_log)
    return {"trained": done}


def _synth(args: argparse.Namespace) -> dict:
    if is_vision_agent(args.agent):
        from .vision_task import write_splits

        train, held = write_splits(args.out, args.n_train, args.n_eval, args.seed)
        return {"train": str(train), "eval": str(held)}
    from .synthetic import write_dataset

    train, held = write_dataset(args.agent, args.out, args.n_train, args.n_eval, args.seed)
    return {"train": str(train), "eval": str(held)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"train": _train, "eval-adapter": _eval, "defaults": _defaults, "synth": _synth}[args.command]
    try:
        out = handler(args)
    except (DataError, ValidationError, LookupError) as exc:
        _log(f"error: {exc}")
        return 2
    except TrainingError as exc:
        _log(f"error: {exc}")
        return 1
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    elif args.command == "eval-adapter" and isinstance(out["base"], dict):
        print(f"{out['agent']}: {out['adapter']} vs the bare base {out['base_ref']} on {out['n']} held-out images")
        print(f"  {'':8}" + "".join(f"{k:>10}" for k in out["base"]))
        for side, label in (("adapter_score", "adapter"), ("base", "base")):
            print(f"  {label:8}" + "".join(f"{v:>10.3f}" for v in out[side].values()))
    elif args.command == "eval-adapter":
        print(f"{out['agent']}: adapter {out['adapter_score']:.3f} vs base {out['base']:.3f} on {out['n']} held-out records")
    elif args.command == "defaults":
        for rec in out["trained"]:
            print(f"{rec['ref']}: trained in {rec['wall_time_s']} s, eval loss {rec['eval_loss']:.4f}")
        if not out["trained"]:
            print("every default agent already has a trained adapter")
    else:
        print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
