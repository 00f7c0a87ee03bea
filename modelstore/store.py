"""The ModelStore: versioned, checksummed, atomically published model directories.

Layout (``root`` from ``MODEL_STORE_ROOT``)::

    <root>/base_models/versions/<version>/{manifest.json, config.json, *.safetensors, tokenizer...}
    <root>/base_models/current -> versions/<version>
    <root>/base_models/<name>/versions/<version>/{manifest.json, config.json, processor files...}
    <root>/base_models/<name>/current -> versions/<version>      (a named base, e.g. a vision-language one)
    <root>/<agent>/adapters/<adapter>/versions/<version>/{manifest.json, adapter_config.json, ...}
    <root>/<agent>/adapters/<adapter>/current -> versions/<version>
    <root>/.staging/   in-flight publishes (leftovers: ``modelstore gc --staging`` or the next publish)
    <root>/.lock       one writer at a time: held from a publish's staging to its flip

A publish copies into ``.staging`` while hashing, fsyncs every file and directory, renames the staged
directory into ``versions/`` and only then flips ``current``. A publisher killed at any point leaves
either the old store or the new version, never a half-written version under ``versions/``; re-running
the same publish completes it (same files: ``current`` is flipped, nothing is copied).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock, Timeout
from pydantic import ValidationError

from . import validate
from .crashpoints import crash_point
from .errors import ChecksumError, ManifestError, ModelStoreError, NotFoundError
from .fsutil import atomic_symlink, fsync_dir
from .history import append_event, read_events, replay
from .integrity import file_problems
from .manifest import AdapterInfo, FileEntry, Manifest, ModelMetadata, Source
from .refs import (BASE_NAMESPACE, CURRENT, RESERVED_BASE_NAMES, AdapterRef, BaseRef, ModelRef, parse_ref,
                   validate_version)
from .publish import MANIFEST, STAGING, publish_version, remove_leftovers

__all__ = ["DEFAULT_ROOT", "default_root", "Resolved", "VerifyReport", "ModelStore"]

DEFAULT_ROOT = Path.home() / ".local" / "share" / "justnews" / "model_store"


def default_root() -> Path:
    """``$MODEL_STORE_ROOT`` if set, else ``~/.local/share/justnews/model_store``."""
    env = os.environ.get("MODEL_STORE_ROOT")
    return Path(env).expanduser() if env else DEFAULT_ROOT


@dataclass(frozen=True)
class Resolved:
    """A ref pinned to a concrete version, its directory and its manifest."""

    ref: ModelRef
    path: Path
    manifest: Manifest


@dataclass
class VerifyReport:
    ref: ModelRef
    ok: bool
    bad_files: dict[str, str]  # relative path -> what is wrong
    checked_bytes: int


class ModelStore:
    """A store rooted at one directory. Safe for concurrent readers and concurrent publishers."""

    def __init__(self, root: str | os.PathLike | None = None, *, progress: bool = False):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.progress = progress

    # ---------------------------------------------------------------- paths (only ever from refs)
    def namespace_dir(self, ref: ModelRef | str) -> Path:
        ref = parse_ref(ref)
        if isinstance(ref, BaseRef):
            return self.root / BASE_NAMESPACE if ref.name is None else self.root / BASE_NAMESPACE / ref.name
        return self.root / ref.agent / "adapters" / ref.name

    def _lock(self, timeout: float = -1) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".lock"), timeout=timeout)

    def current_version(self, ref: ModelRef | str) -> str | None:
        link = self.namespace_dir(ref) / CURRENT
        if not link.is_symlink():
            return None
        target = os.readlink(link)
        version = Path(target).name
        return version if (self.namespace_dir(ref) / "versions" / version).is_dir() else None

    def versions(self, ref: ModelRef | str) -> list[str]:
        """Published versions of the ref's namespace, oldest first (by manifest created_at)."""
        vdir = self.namespace_dir(ref) / "versions"
        if not vdir.is_dir():
            return []
        found = []
        for d in vdir.iterdir():
            if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).is_file():
                try:
                    created = self._read_manifest(d).created_at
                except ManifestError:
                    created = datetime.fromtimestamp(d.stat().st_mtime, timezone.utc)
                found.append((created, d.name))
        return [name for _, name in sorted(found)]

    def pin(self, ref: ModelRef | str) -> ModelRef:
        """Replace ``@current`` by the version it points at; check the version exists."""
        ref = parse_ref(ref)
        ns = self.namespace_dir(ref)
        if not ns.is_dir():
            raise NotFoundError(f"{ref}: the store at {self.root} has no namespace {ref.namespace!r}")
        version = ref.version
        if version == CURRENT:
            version = self.current_version(ref)
            if version is None:
                raise NotFoundError(f"{ref}: namespace {ref.namespace!r} has no current version")
        if (ns / "versions" / version).is_dir() and not (ns / "versions" / version / MANIFEST).is_file():
            raise ManifestError(f"{ref.with_version(version)}: {ns / 'versions' / version / MANIFEST} is missing "
                                "(re-publish the version with --force, or gc it)")
        if not (ns / "versions" / version / MANIFEST).is_file():
            known = ", ".join(self.versions(ref)) or "none"
            raise NotFoundError(f"{ref}: version {version!r} not found (published: {known})")
        return ref.with_version(version)

    def resolve(self, ref: ModelRef | str) -> Resolved:
        """Pin a ref and read its manifest. Reads no weight file."""
        pinned = self.pin(ref)
        path = self.namespace_dir(pinned) / "versions" / pinned.version
        return Resolved(pinned, path, self._read_manifest(path))

    def manifest(self, ref: ModelRef | str) -> Manifest:
        return self.resolve(ref).manifest

    def adapter_path(self, ref: AdapterRef | str) -> Path:
        """Directory of a published adapter version, ready for ``PeftModel.from_pretrained``."""
        resolved = self.resolve(ref)
        if resolved.manifest.kind != "adapter":
            raise ModelStoreError(f"{resolved.ref} is a {resolved.manifest.kind}, not an adapter")
        return resolved.path

    def _read_manifest(self, version_dir: Path) -> Manifest:
        path = version_dir / MANIFEST
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except FileNotFoundError as exc:
            raise ManifestError(f"{path} is missing") from exc
        except ValidationError as exc:  # one line per manifest: check prints one problem per line
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()[:5])
            raise ManifestError(f"{path} does not validate ({exc.error_count()} error(s)): {detail}") from exc

    def namespaces(self) -> Iterator[ModelRef]:
        """Every namespace that has a versions/ directory: the text base first, then the named bases and
        the adapters, each sorted."""
        bases = self.root / BASE_NAMESPACE
        if (bases / "versions").is_dir():
            yield BaseRef()
        if not self.root.is_dir():
            return
        for d in sorted(p for p in bases.iterdir() if p.is_dir()) if bases.is_dir() else []:
            if d.name not in RESERVED_BASE_NAMES and (d / "versions").is_dir():
                try:
                    yield BaseRef(name=d.name)
                except ModelStoreError:
                    continue  # not a legal base name: not ours
        for agent_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if agent_dir.name == BASE_NAMESPACE or not (agent_dir / "adapters").is_dir():
                continue
            for ad in sorted((agent_dir / "adapters").iterdir()):
                if (ad / "versions").is_dir():
                    try:
                        yield parse_ref(f"{agent_dir.name}/{ad.name}")
                    except ModelStoreError:
                        continue  # a stray directory that is not a legal ref is not ours

    def list(self) -> list[dict[str, Any]]:
        """One row per namespace: ref, current version, versions."""
        return [
            {"namespace": r.namespace, "kind": r.kind, "current": self.current_version(r), "versions": self.versions(r)}
            for r in self.namespaces()
        ]

    # ---------------------------------------------------------------- publish
    def publish_base(self, source_dir: str | os.PathLike, version: str, *, source: Source | None = None,
                     metadata: ModelMetadata | None = None, force: bool = False, promote: bool = True,
                     measure: Callable[[Path], dict[str, int]] | None = None,
                     include: list[str] | None = None, name: str | None = None) -> Manifest:
        """Publish a base model directory (config.json + safetensors + tokenizer) as ``base_models@version``,
        or as the named base ``base_models/<name>@version``.

        Args:
            source_dir: directory to copy from.
            version: the version tag.
            source: provenance; defaults to the local directory.
            metadata: operator metadata (license, VRAM per variant, ...); see ``ModelMetadata``.
            force: replace an existing version of the same tag.
            promote: point ``current`` at the new version.
            measure: optional callback ``(staged_dir) -> {variant: MiB}`` run on the staged copy; its
                figures override ``metadata.approx_vram_mb`` (the embedded default is measured this way).
            include: relative paths to publish (a source's selection); default every file.
            name: the named base to publish into (its own versions, current and history); None: the text base.
        """
        meta = metadata or ModelMetadata()
        ref = BaseRef(validate_version(version), name)

        def build(staged: Path, files: list[FileEntry]) -> Manifest:
            validate.check_base_files([f.path for f in files])
            vram = dict(meta.approx_vram_mb)
            if measure is not None:
                vram.update(measure(staged))
            if not vram:
                raise ManifestError("base metadata must give approx_vram_mb for at least one variant")
            config = json.loads((staged / "config.json").read_text())
            if meta.vision is not None:
                problems = validate.vision_problems([f.path for f in files], config, meta.vision)
                if problems:
                    raise ManifestError(f"{ref}: the vision metadata does not fit the files: {'; '.join(problems)}")
            return Manifest(
                kind="base", namespace=ref.namespace, version=version,
                model_id=meta.model_id or config.get("_name_or_path") or "unnamed",
                architecture=meta.architecture or (config.get("architectures") or [None])[0],
                source=source or Source(type="local", path=str(Path(source_dir).resolve())),
                license=meta.license or "unknown", created_at=datetime.now(timezone.utc), files=files,
                approx_vram_mb=vram,
                quantized_variants=meta.quantized_variants or [v for v in vram if v.startswith("bnb-")],
                peft_support=True if meta.peft_support is None else meta.peft_support,
                variant_preference=meta.variant_preference, tokenizer=meta.tokenizer,
                vision=meta.vision, vram_notes=meta.vram_notes, notes=meta.notes,
            )

        return publish_version(self, ref, Path(source_dir), build, force=force, promote=promote, include=include)

    def publish_adapter(self, agent: str, name: str, source_dir: str | os.PathLike, version: str, *,
                        base_ref: str = "base_models@current", source: Source | None = None,
                        license: str | None = None, training_summary: dict[str, Any] | None = None,
                        notes: str | None = None, force: bool = False, promote: bool = True) -> Manifest:
        """Publish a PEFT LoRA adapter as ``<agent>/<name>@<version>`` after validating it against its base."""
        ref = parse_ref(f"{agent}/{name}@{version}")
        base = self.resolve(base_ref)  # pinned: the manifest records the exact base version validated against
        if base.manifest.kind != "base":
            raise ModelStoreError(f"{base_ref} is not a base model")
        if not base.manifest.peft_support:
            raise ModelStoreError(f"{base.ref} does not allow PEFT adapters (peft_support=false)")

        def build(staged: Path, files: list[FileEntry]) -> Manifest:
            validate.check_adapter_files([f.path for f in files])
            facts = validate.validate_adapter_against_base(staged, base.path)
            weights = next(f for f in files if f.path == validate.ADAPTER_WEIGHTS)
            # Adapter weights are stored at training precision; resident cost is its size in fp16 at most.
            mb = max(1, -(-weights.size // (1024 * 1024)))
            return Manifest(
                kind="adapter", namespace=ref.namespace, version=ref.version,
                model_id=f"{ref.agent}/{ref.name}", architecture="PeftModel",
                source=source or Source(type="local", path=str(Path(source_dir).resolve())),
                license=license or base.manifest.license, created_at=datetime.now(timezone.utc), files=files,
                approx_vram_mb={"fp16": mb}, peft_support=False,
                adapter=AdapterInfo(base_ref=str(base.ref), size_bytes=weights.size, **facts),
                training_summary=training_summary, notes=notes,
            )

        return publish_version(self, ref, Path(source_dir), build, force=force, promote=promote, base_ref=str(base.ref))

    def _bar(self, total: int, desc: str):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)

    def clean_staging(self, *, timeout: float = 10.0) -> list[str]:
        """Remove what killed publishers and gc runs left in ``.staging``; return the names removed.

        Every writer holds the store lock from creating its staging directory until it is renamed away,
        so once this holds the lock nothing in ``.staging`` belongs to a live publisher.

        Raises:
            ModelStoreError: the lock stayed held for ``timeout`` seconds (a publish is running).
        """
        try:
            with self._lock(timeout):
                return remove_leftovers(self.root / STAGING)
        except Timeout as exc:
            raise ModelStoreError(f"the store lock {self.root / '.lock'} is still held after {timeout:g} s: a publish, "
                                  "promote or gc is running and its staging is live; retry when it finishes") from exc

    # ---------------------------------------------------------------- current / history
    def _stack(self, ref: ModelRef) -> list[str]:
        stack = replay(read_events(self.namespace_dir(ref)))
        current = self.current_version(ref)
        if current and (not stack or stack[-1] != current):
            stack.append(current)  # the pointer is the truth if a crash fell between flip and log
        return stack

    def _set_current(self, ref: ModelRef, version: str, action: str) -> None:
        """Flip ``current`` and log it; idempotent, so a re-run after a crash logs the flip once."""
        ns = self.namespace_dir(ref)
        previous = self.current_version(ref)
        if previous != version:
            atomic_symlink(ns / CURRENT, f"versions/{version}")
            crash_point("flip")
        events = read_events(ns)
        logged = replay(events)
        if logged and logged[-1] == version:
            return  # already current and logged: a second entry would make rollback a no-op
        if previous == version:  # the flip happened, its event did not
            previous = logged[-1] if logged else None
        append_event(ns, events, action, version, previous)

    def promote(self, ref: ModelRef | str) -> ModelRef:
        """Point ``current`` at the ref's (explicit) version."""
        ref = parse_ref(ref)
        if ref.version == CURRENT:
            raise ModelStoreError(f"promote needs an explicit version, got {ref}")
        with self._lock():
            pinned = self.pin(ref)
            self._read_manifest(self.namespace_dir(pinned) / "versions" / pinned.version)
            self._set_current(pinned, pinned.version, action="promote")
        return pinned

    def rollback(self, ref: ModelRef | str) -> ModelRef:
        """Point ``current`` back at the version that was current before the present one."""
        ref = parse_ref(ref)
        with self._lock():
            stack = self._stack(ref)
            existing = set(self.versions(ref))
            while len(stack) >= 2 and stack[-2] not in existing:
                del stack[-2]  # a garbage-collected version cannot be rolled back to
            if len(stack) < 2:
                raise ModelStoreError(f"{ref.namespace}: nothing to roll back to (history: {stack or 'empty'})")
            target = stack[-2]
            ns = self.namespace_dir(ref)
            atomic_symlink(ns / CURRENT, f"versions/{target}")
            append_event(ns, read_events(ns), "rollback", target, stack[-1])
        return ref.with_version(target)

    def gc(self, ref: ModelRef | str, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions; the current version, and the two versions of a
        running canary, are never deleted."""
        if keep < 1:
            raise ModelStoreError(f"keep ({keep}) must be >= 1")
        ref = parse_ref(ref)
        with self._lock():
            versions = self.versions(ref)
            current = self.current_version(ref)
            keep_set = set(versions[-keep:]) | ({current} if current else set()) | self._canary_versions(ref)
            removed = [v for v in versions if v not in keep_set]
            ns = self.namespace_dir(ref)
            for v in removed:
                trash = self.root / STAGING / f"gc-{uuid.uuid4().hex}"
                trash.parent.mkdir(exist_ok=True)
                os.rename(ns / "versions" / v, trash)  # atomic disappearance, then slow delete
                shutil.rmtree(trash, ignore_errors=True)
            if removed:
                fsync_dir(ns / "versions")
        return removed

    def _canary_versions(self, ref: ModelRef) -> set[str]:
        """Versions a running canary of ``ref``'s namespace serves (``rollout.state`` writes the file)."""
        if not isinstance(ref, AdapterRef):
            return set()
        try:
            state = json.loads((self.root / ".canary" / ref.agent / ref.name / "state.json").read_text())
        except (OSError, ValueError):
            return set()
        if state.get("status") != "running":
            return set()
        return {v for v in (state.get("baseline"), state.get("candidate")) if isinstance(v, str)}

    # ---------------------------------------------------------------- verification
    def verify(self, ref: ModelRef | str, *, dry_run: bool | None = None, headers: bool | None = None) -> VerifyReport:
        """Check every file of a version and list files the manifest does not; report every damaged file.

        Args:
            ref: the version to check.
            dry_run: skip sha256, check presence and sizes (default ``$MODEL_STORE_DRY_RUN``).
            headers: parse every safetensors header, a few KiB each (default: unless
                ``$MODEL_STORE_DRY_RUN`` is set, which promises that no weight file is opened).

        Raises:
            ModelStoreError: the version cannot be resolved (unknown ref, missing or invalid manifest).
        """
        env_dry = _env_flag("MODEL_STORE_DRY_RUN")
        dry = env_dry if dry_run is None else dry_run
        resolved = self.resolve(ref)
        bar = None if dry else self._bar(resolved.manifest.total_bytes, f"verify {resolved.ref}")
        try:
            bad, checked = file_problems(resolved.path, resolved.manifest.files, checksums=not dry,
                                         headers=not env_dry if headers is None else headers,
                                         progress=bar.update if bar else None, skip=[MANIFEST])
        finally:
            if bar:
                bar.close()
        return VerifyReport(resolved.ref, not bad, bad, checked)

    def verify_or_raise(self, ref: ModelRef | str) -> Resolved:
        report = self.verify(ref)
        if not report.ok:
            detail = "; ".join(f"{p}: {why}" for p, why in sorted(report.bad_files.items()))
            raise ChecksumError(f"{report.ref} failed verification: {detail}", sorted(report.bad_files))
        return self.resolve(report.ref)

    def check(self, *, checksums: bool = True) -> list[str]:
        """Store-wide health check for CI; returns a list of problems (empty when healthy)."""
        from .health import check_store

        return check_store(self, checksums=checksums)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
