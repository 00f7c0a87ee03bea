"""``modelstore``: the operator's command line for the store.

Refs name the text base (``base_models@<version>``), a named base (``base_models/<name>@<version>``,
e.g. the vision-language one) or an adapter (``<agent>/<adapter>@<version>``); list, verify, promote,
rollback and gc take any of them.

Every command takes ``--root`` (default ``$MODEL_STORE_ROOT``) and ``--json`` for scripts. Exit codes:
0 success, 1 a check or verification found problems, 2 a refused or invalid request.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import ManifestError, ModelStoreError
from .manifest import ModelMetadata
from .sources import HuggingFaceSource, LocalDirSource
from .store import ModelStore, default_root

__all__ = ["main", "build_parser"]


def _emit(args, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _store(args) -> ModelStore:
    return ModelStore(args.root, progress=sys.stderr.isatty() and not args.json)


def cmd_publish(args) -> int:
    store = _store(args)
    if args.kind == "base":
        meta = ModelMetadata.model_validate_json(Path(args.metadata).read_text()) if args.metadata else None
        if bool(args.from_dir) == bool(args.hf_repo):
            raise ModelStoreError("give exactly one of --from-dir or --hf-repo")
        src = (LocalDirSource(args.from_dir) if args.from_dir
               else HuggingFaceSource(args.hf_repo, args.revision)).materialise()
        manifest = store.publish_base(src.directory, args.version, source=src.source, metadata=meta,
                                      force=args.force, promote=not args.no_promote, include=src.include,
                                      name=args.name)
    else:
        summary = json.loads(Path(args.training_summary).read_text()) if args.training_summary else None
        src = LocalDirSource(args.from_dir).materialise()
        manifest = store.publish_adapter(args.agent, args.name, src.directory, args.version, base_ref=args.base_ref,
                                         source=src.source, training_summary=summary, force=args.force,
                                         promote=not args.no_promote)
    ref = f"{manifest.namespace}@{manifest.version}"
    _emit(args, json.loads(manifest.model_dump_json()), f"published {ref} ({len(manifest.files)} files, "
          f"{manifest.total_bytes} bytes){'' if args.no_promote else ' and made it current'}")
    return 0


def cmd_list(args) -> int:
    rows = _store(args).list()
    lines = [f"{r['namespace']:<40} current={r['current'] or '-':<24} versions={','.join(r['versions'])}" for r in rows]
    _emit(args, rows, "\n".join(lines) or "(empty store)")
    return 0


def cmd_show(args) -> int:
    resolved = _store(args).resolve(args.ref)
    data = json.loads(resolved.manifest.model_dump_json())
    data["ref"], data["path"] = str(resolved.ref), str(resolved.path)
    _emit(args, data, json.dumps(data, indent=2))
    return 0


def cmd_verify(args) -> int:
    from .health import version_names

    store = _store(args)
    refs = [args.ref] if args.ref else [r.with_version(v) for r in store.namespaces() for v in version_names(store, r)]
    results, failed = [], False
    for ref in refs:
        try:
            report = store.verify(ref)
            ref, ok, bad = report.ref, report.ok, report.bad_files
        except ManifestError as exc:  # an unreadable manifest is this version's finding, not the end
            ok, bad = False, {"manifest.json": str(exc)}
        failed |= not ok
        results.append({"ref": str(ref), "ok": ok, "bad_files": bad})
    text = "\n".join(
        f"{'OK ' if r['ok'] else 'BAD'} {r['ref']}" + "".join(f"\n    {p}: {why}" for p, why in r["bad_files"].items())
        for r in results)
    _emit(args, results, text or "(nothing to verify)")
    return 1 if failed else 0


def cmd_promote(args) -> int:
    ref = _store(args).promote(args.ref)
    _emit(args, {"current": str(ref)}, f"current -> {ref}")
    return 0


def cmd_rollback(args) -> int:
    ref = _store(args).rollback(args.ref)
    _emit(args, {"current": str(ref)}, f"rolled back: current -> {ref}")
    return 0


def cmd_gc(args) -> int:
    if not args.ref and not args.staging:
        raise ModelStoreError("gc needs a REF (old versions), --staging (leftovers of interrupted publishes), or both")
    store, data, lines = _store(args), {}, []
    if args.staging:
        data["staging_removed"] = store.clean_staging(timeout=args.lock_timeout)
        lines.append(f"removed {len(data['staging_removed'])} staging leftover(s): "
                     f"{', '.join(data['staging_removed']) or '-'}")
    if args.ref:
        data["removed"] = store.gc(args.ref, args.keep)
        lines.append(f"removed {len(data['removed'])} version(s): {', '.join(data['removed']) or '-'}")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_check(args) -> int:
    problems = _store(args).check(checksums=not args.fast)
    _emit(args, {"ok": not problems, "problems": problems},
          "store OK" if not problems else "\n".join(f"FAIL {p}" for p in problems))
    return 1 if problems else 0


def cmd_seed(args) -> int:
    from .seed import seed_default_store

    store = _store(args)
    published = seed_default_store(store, adapters=not args.base_only, vision=not args.no_vision,
                                   log=lambda m: print(m, file=sys.stderr))
    _emit(args, {"published": published, "root": str(store.root)},
          f"seeded {store.root}: {len(published)} new ({', '.join(published) or 'already complete'})")
    return 0


def cmd_resolve(args) -> int:
    from .loading import plan_base

    store = _store(args)
    resolved = store.resolve(args.ref)
    data: dict[str, Any] = {"ref": str(resolved.ref), "path": str(resolved.path), "kind": resolved.manifest.kind}
    if resolved.manifest.kind == "base":
        plan = plan_base(store, resolved.ref, args.variant, allow_quantized=not args.no_quantized)
        data.update(variant=plan.variant, fallback_reason=plan.fallback_reason)
    _emit(args, data, " ".join(f"{k}={v}" for k, v in data.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelstore", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None, help=f"store root (default $MODEL_STORE_ROOT or {default_root()})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)

    pub = sub.add_parser("publish", help="publish a base or an adapter version")
    pub.add_argument("kind", choices=["base", "adapter"])
    pub.add_argument("--version", required=True)
    pub.add_argument("--from-dir", help="local directory to publish")
    pub.add_argument("--hf-repo", help="Hugging Face repo id (base only)")
    pub.add_argument("--revision", default="main", help="HF revision to pin (resolved to a commit)")
    pub.add_argument("--metadata", help="JSON metadata file (base): license, approx_vram_mb, ...")
    pub.add_argument("--agent", help="agent namespace (adapter)")
    pub.add_argument("--name", help="adapter name (adapter); for a base, the named base base_models/NAME to "
                     "publish into (default: the text base base_models)")
    pub.add_argument("--base-ref", default="base_models@current", help="base the adapter targets")
    pub.add_argument("--training-summary", help="training_summary.json to embed (adapter)")
    pub.add_argument("--force", action="store_true", help="replace an existing version")
    pub.add_argument("--no-promote", action="store_true", help="do not move 'current'")
    pub.set_defaults(func=cmd_publish)

    sub.add_parser("list", help="namespaces and versions").set_defaults(func=cmd_list)
    for name, func, helptext in [("show", cmd_show, "print a manifest"), ("promote", cmd_promote, "make a version current"),
                                 ("rollback", cmd_rollback, "restore the previous current version")]:
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("ref")
        sp.set_defaults(func=func)
    ver = sub.add_parser("verify", help="recompute checksums (all versions when no ref)")
    ver.add_argument("ref", nargs="?")
    ver.set_defaults(func=cmd_verify)
    gc = sub.add_parser("gc", help="delete old versions (never the current one) and/or staging leftovers")
    gc.add_argument("ref", nargs="?", help="namespace whose old versions to delete")
    gc.add_argument("--keep", type=int, default=3)
    gc.add_argument("--staging", action="store_true",
                    help="remove what interrupted publishes left in .staging (waits for the store lock)")
    gc.add_argument("--lock-timeout", type=float, default=10.0,
                    help="seconds --staging waits for a running publish to release the store lock")
    gc.set_defaults(func=cmd_gc)
    chk = sub.add_parser("check", help="store-wide CI health check")
    chk.add_argument("--fast", action="store_true", help="sizes and safetensors headers, no sha256")
    chk.set_defaults(func=cmd_check)
    seed = sub.add_parser("seed", help="build the embedded offline default")
    seed.add_argument("--base-only", action="store_true", help="the bases only, no adapters")
    seed.add_argument("--no-vision", action="store_true", help="without the tiny vision-language base")
    seed.set_defaults(func=cmd_seed)
    res = sub.add_parser("resolve", help="resolve a ref (and base variant) without reading weights")
    res.add_argument("ref")
    res.add_argument("--variant")
    res.add_argument("--no-quantized", action="store_true")
    res.set_defaults(func=cmd_resolve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModelStoreError as exc:
        if args.json:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        print(f"modelstore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
