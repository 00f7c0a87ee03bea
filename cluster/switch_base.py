"""``justnews switch-base``: from the embedded default to Mistral-7B-Instruct-v0.3 (or any base), in one walk.

The steps, in order (each printed as it is done, or, in a dry run, as it would be done):

1. **Publish the base** from a local snapshot (``--from-dir``) or a pinned Hugging Face revision
   (``--hf-repo`` + ``--revision``) with the operator's ``--metadata``, through ``ModelStore.publish_base``.
2. **Point a new agent map at it** (``--map-out``): every llm agent's ``base`` becomes the new ref, nothing
   else changes (where the preferred pools do not fit an inventory together, the planner itself puts
   every agent on one pool of a variant they all accept: :mod:`cluster.pools`, rule 4). The map is
   validated by :mod:`agent_graph.schema` before and after it is written.
3. **Re-plan the base pools** on each ``--inventory`` (:func:`cluster.pools.plan_pools`) and optionally write
   each plan as a Serve config (``--emit-serve-config``; ``{inventory}`` in the path when several).
4. **The adapters**: a LoRA adapter's tensors are shaped for the base it was trained on, and publish
   validates an adapter against its base, so the old base's adapters cannot be re-published onto the new
   one. The command lists them and prints, per agent, the ``justnews train ... --publish`` that re-trains
   its adapter for the new base. Deploy the new map only after those ran: until then its ``@current``
   adapters were validated against the old base and ``build_app`` refuses the map.

Dry run (``--dry-run`` or ``MODEL_STORE_DRY_RUN=1``): nothing is downloaded, published or written. The base
facts come from the metadata file (``approx_vram_mb`` per variant) and the model's shape (the snapshot's
``config.json`` when ``--from-dir`` has one, else :data:`MISTRAL_7B_SHAPE`); each adapter is estimated with
:func:`lora_size_bytes`: rank ``--lora-r`` (16) on all seven projections, fp32 on disk. For Mistral-7B that
is 16 x (2x4096 + 2x5120 + 3x18432) x 32 layers = 41,943,040 parameters = 160 MiB, the figure of
``cluster/demands/mistral-7b-8-agents.yaml``. After a real publish the store's ``config.json`` gives the
shape, and an adapter already validated against the new base counts at its real size.

Exit codes: 0 done, 1 an inventory cannot hold the pools (the others are still planned), 2 refused.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .demand import MIB, AdapterFacts, BaseFacts, base_facts_from_store, kv_values_per_token
from .errors import PlanningError
from .inventory import load_inventory
from .placement import AppPlacement, placement_from_plan
from .planner import Plan
from .policy import PlacementPolicy
from .pools import AgentNeed, plan_pools
from .render import format_plan, format_routes, write_serve_config

__all__ = ["MISTRAL_7B_SHAPE", "LORA_PROJECTIONS", "DRY_RUN_ENV", "SwitchRequest", "InventoryOutcome",
           "SwitchReport", "lora_size_bytes", "switch_base", "add_switch_base_command", "cmd_switch_base"]

DRY_RUN_ENV = "MODEL_STORE_DRY_RUN"
# Mistral-7B-Instruct-v0.3's config.json, the fields that size the KV cache and the adapters.
MISTRAL_7B_SHAPE = {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_size_bytes(shape: dict[str, Any], r: int = 16, projections: tuple[str, ...] = LORA_PROJECTIONS,
                    bytes_per_param: int = 4) -> int:
    """On-disk size of a LoRA adapter of rank ``r`` on ``projections`` of a Mistral/Llama-shaped decoder.

    Each adapted linear layer adds ``r x (in + out)`` parameters (A is r x in, B is out x r).

    Raises:
        PlanningError: ``shape`` (a config.json) lacks a field the estimate needs.
    """
    if missing := [k for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
                   if k not in shape]:
        raise PlanningError(f"cannot estimate the adapters' size: the base's config lacks {missing}")
    hidden, inter = int(shape["hidden_size"]), int(shape["intermediate_size"])
    heads = int(shape["num_attention_heads"])
    head_dim = int(shape.get("head_dim") or hidden // heads)
    q, kv = heads * head_dim, int(shape.get("num_key_value_heads") or heads) * head_dim
    dims = {"q_proj": hidden + q, "k_proj": hidden + kv, "v_proj": hidden + kv, "o_proj": q + hidden,
            "gate_proj": hidden + inter, "up_proj": hidden + inter, "down_proj": inter + hidden}
    return r * sum(dims[p] for p in projections) * int(shape["num_hidden_layers"]) * bytes_per_param


class SwitchRequest(BaseModel):
    """What ``justnews switch-base`` is asked to do (the command line, validated)."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, description="Store version of the new base, e.g. v20251123-mistral-v0.3.")
    metadata: Path = Field(description="Base metadata JSON (license, approx_vram_mb per variant, ...).")
    from_dir: Path | None = Field(None, description="Local snapshot directory to publish.")
    hf_repo: str | None = Field(None, description="Hugging Face repo id to publish from.")
    revision: str | None = Field(None, description="HF revision (a commit) to pin; required with hf_repo.")
    map_in: Path | None = Field(None, description="Agent map to derive from; None: the packaged one.")
    map_out: Path = Field(description="Where the new agent map is written.")
    inventories: list[str] = Field(default_factory=list, description="Inventories (files or bundled names).")
    store_root: Path | None = Field(None, description="ModelStore root; None: $MODEL_STORE_ROOT.")
    emit_serve_config: str | None = Field(None, description="Serve config path; '{inventory}' in it when several.")
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank of the re-trained adapters (and the estimate).")
    train_dir: str = Field("data", min_length=1, description="Where the printed train commands read JSONL from.")
    force: bool = Field(False, description="Replace an existing base version.")
    promote: bool = Field(True, description="Make the new base base_models@current.")
    dry_run: bool = Field(False, description="Resolve and print only; download, publish and write nothing.")

    @model_validator(mode="after")
    def _rules(self) -> "SwitchRequest":
        if (self.from_dir is None) == (self.hf_repo is None):
            raise ValueError(f"give exactly one of --from-dir ({self.from_dir}) or --hf-repo ({self.hf_repo})")
        if self.hf_repo and not self.revision:
            raise ValueError(f"--hf-repo {self.hf_repo} needs --revision <commit>: a base is pinned to a commit")
        if self.emit_serve_config:
            n = len(self.inventories)
            if n == 0:
                raise ValueError(f"--emit-serve-config {self.emit_serve_config!r} needs at least one --inventory")
            if n > 1 and "{inventory}" not in self.emit_serve_config:
                raise ValueError(f"--emit-serve-config {self.emit_serve_config!r} names one file but {n} "
                                 "inventories are planned: put '{inventory}' in the path")
        return self

    @property
    def base_ref(self) -> str:
        """The pinned ref the new map names."""
        return f"base_models@{self.version}"


@dataclass
class InventoryOutcome:
    """The plan of the new map's pools on one inventory, or why the inventory cannot hold them."""

    inventory: str
    summary: str
    plan: Plan | None = None
    placement: AppPlacement | None = None
    refused: str | None = None
    serve_config: Path | None = None


@dataclass
class SwitchReport:
    """Everything :func:`switch_base` did (or, dry, would do)."""

    dry_run: bool
    base_ref: str
    base: BaseFacts
    adapter_estimate_bytes: int
    new_map: dict[str, Any]
    published: bool = False
    map_written: bool = False
    outcomes: list[InventoryOutcome] = field(default_factory=list)
    train_commands: dict[str, list[str]] = field(default_factory=dict)
    old_adapters: dict[str, str] = field(default_factory=dict)


def _publish(req: SwitchRequest, store: Any, meta: Any, say: Callable[[str], None]) -> None:
    from modelstore.sources import HuggingFaceSource, LocalDirSource

    src = (LocalDirSource(req.from_dir) if req.from_dir else HuggingFaceSource(req.hf_repo, req.revision)).materialise()
    manifest = store.publish_base(src.directory, req.version, source=src.source, metadata=meta, force=req.force,
                                  promote=req.promote, include=src.include)
    say(f"  published {req.base_ref} ({len(manifest.files)} files, {manifest.total_bytes} bytes)"
        + (" and made it base_models@current" if req.promote else ""))


def _describe_source(req: SwitchRequest, store: Any, say: Callable[[str], None]) -> None:
    if req.hf_repo:
        say(f"  would download {req.hf_repo} at revision {req.revision} (safetensors, JSON, tokenizer; "
            "consolidated.* skipped) from the HF cache or the network")
    else:
        if not req.from_dir.is_dir():
            raise PlanningError(f"--from-dir {str(req.from_dir)!r} is not a directory")
        files = sorted(p for p in req.from_dir.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        say(f"  would copy {len(files)} files ({size} bytes) from {req.from_dir}")
    exists = req.version in store.versions("base_models")
    if exists and not req.force:
        raise PlanningError(f"{req.base_ref} is already published in {store.root}; pick another --version or --force")
    say(f"  would publish {req.base_ref} into {store.root}" + (" (replacing it: --force)" if exists else "")
        + (" and make it base_models@current" if req.promote else ""))


def _new_map(req: SwitchRequest, agent_map: Any, base: BaseFacts) -> dict[str, Any]:
    from agent_graph import default_map_path
    from agent_graph.schema import AgentMap

    data = json.loads(Path(req.map_in or default_map_path()).read_text())
    for name, entry in data["agents"].items():
        if entry.get("kind") != "llm":
            continue
        entry["base"] = req.base_ref
    try:  # the schema of agent_graph's loader, on the data before anything is written
        AgentMap.model_validate({**data, "legacy": agent_map.legacy})
    except ValidationError as exc:
        raise PlanningError(f"the new agent map is invalid: {exc}") from exc
    return data


def _write_map(req: SwitchRequest, data: dict[str, Any], say: Callable[[str], None]) -> None:
    from agent_graph import default_map_path, load_agent_map
    from agent_graph.schema import RECOMMENDED_FILE

    companion = req.map_out.with_name(RECOMMENDED_FILE)
    source = Path(req.map_in or default_map_path()).with_name(RECOMMENDED_FILE)
    req.map_out.parent.mkdir(parents=True, exist_ok=True)
    if not companion.exists():  # the loader reads the legacy fallbacks beside the map
        companion.write_text(source.read_text())
        say(f"  wrote {companion} (copy of {source})")
    req.map_out.write_text(json.dumps(data, indent=2) + "\n")
    load_agent_map(req.map_out)
    say(f"  wrote {req.map_out} (validated by agent_graph.load_agent_map)")


def _needs(agent_map: Any, new_map: dict[str, Any], store: Any, base_ref: str, estimate: int,
           dry: bool) -> list[AgentNeed]:
    needs = []
    for name, entry in sorted(agent_map.agents.items()):
        if entry.kind != "llm" or not entry.served:
            continue
        facts = []
        for ref in sorted({r for r in [entry.adapter, *entry.task_adapters.values()] if r}):
            size = estimate
            if not dry:
                try:
                    res = store.resolve(ref)
                    if res.manifest.adapter is not None and res.manifest.adapter.base_ref == base_ref:
                        size = res.manifest.adapter.size_bytes
                except (LookupError, ValueError, OSError):
                    pass
            facts.append(AdapterFacts(ref=ref, size_bytes=size))
        needs.append(AgentNeed(agent=name, variant_preference=tuple(new_map["agents"][name]["variant_preference"]),
                               allow_quantized=entry.allow_quantized, adapters=tuple(facts)))
    return needs


def _plan_one(req: SwitchRequest, name: str, needs: list[AgentNeed], base: BaseFacts, policy: PlacementPolicy,
              store_root: Path, dry: bool, say: Callable[[str], None]) -> InventoryOutcome:
    inventory = load_inventory(name)
    outcome = InventoryOutcome(inventory=inventory.name, summary=inventory.summary())
    try:
        layout, outcome.plan = plan_pools(needs, base, inventory, policy)
    except PlanningError as exc:
        outcome.refused = str(exc)
        say(f"  {inventory.name}: REFUSED: {exc}")
        return outcome
    outcome.placement = placement_from_plan(layout, outcome.plan)
    say(format_plan(outcome.plan) + "\n\n" + format_routes(outcome.placement))
    for d in outcome.plan.deployments:
        agents = ", ".join(layout.pool(d.name).agents)
        say(f"  => {d.name}: {d.variant}, replica {d.memory.total_mb} MiB, num_gpus {d.num_gpus}, replicas "
            f"{d.min_replicas}..{d.max_replicas}, agents {agents}")
    if req.emit_serve_config:
        path = Path(req.emit_serve_config.replace("{inventory}", inventory.name))
        if dry:
            say(f"  would write serve config {path}")
        else:
            outcome.serve_config = write_serve_config(outcome.placement, path, summary=inventory.summary(),
                                                      store_root=str(store_root), map_path=str(req.map_out.resolve()))
            say(f"  wrote serve config {path}")
    return outcome


def _adapters(req: SwitchRequest, agent_map: Any, store: Any, report: SwitchReport, say: Callable[[str], None]) -> None:
    from modelstore.refs import parse_ref

    root = f" --store-root {shlex.quote(str(store.root))}"
    for name, entry in agent_map.agents.items():
        if entry.kind != "llm" or not entry.served:
            continue
        for ref in sorted({r for r in [entry.adapter, *entry.task_adapters.values()] if r}):
            try:
                old = store.resolve(ref)
                if old.manifest.adapter is not None and old.manifest.adapter.base_ref != req.base_ref:
                    report.old_adapters[str(old.ref)] = old.manifest.adapter.base_ref
            except (LookupError, ValueError, OSError):
                pass
            parsed = parse_ref(ref)
            report.train_commands.setdefault(name, []).append(
                f"justnews train --agent {name} --adapter-name {parsed.name} --adapter-version {req.version} "
                f"--base-ref {req.base_ref} --train-files {req.train_dir}/{name}.train.jsonl "
                f"--eval-files {req.train_dir}/{name}.eval.jsonl --lora-r {req.lora_r}{root} --publish")
    say(f"  adapters are tied to their base: one trained for another base cannot be re-published onto "
        f"{req.base_ref} (publish validates its tensors against the base)")
    for ref, base in sorted(report.old_adapters.items()):
        say(f"  {ref} was validated against {base}: re-train it")
    say(f"  re-train each adapter for {req.base_ref} (data: `justnews synth --agent <a> --out {req.train_dir}` "
        "or your own JSONL; a CUDA GPU, QLoRA nf4 by default there):")
    for commands in report.train_commands.values():
        for cmd in commands:
            say(f"    {cmd}")
    say(f"  deploy {req.map_out} only once every adapter above is published: until then its @current adapters "
        "belong to the old base and build_app refuses the map")


def switch_base(req: SwitchRequest, policy: PlacementPolicy | None = None,
                say: Callable[[str], None] = print) -> SwitchReport:
    """Walk the switch to a new base (module docstring); in a dry run read only, write nothing.

    Raises:
        PlanningError: a refused request (bad source, version exists, invalid map).
        modelstore.errors.ModelStoreError: the publish failed.
    """
    from agent_graph import load_agent_map
    from modelstore import ModelStore
    from modelstore.manifest import ModelMetadata

    dry = req.dry_run or os.environ.get(DRY_RUN_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    policy = policy or PlacementPolicy()
    store = ModelStore(req.store_root)
    meta = ModelMetadata.model_validate_json(req.metadata.read_text())
    agent_map = load_agent_map(req.map_in)
    say(f"switch-base to {req.base_ref}{' (DRY RUN: nothing is downloaded, published or written)' if dry else ''}")
    say(f"1. publish the base ({meta.model_id or 'unnamed'}, metadata {req.metadata})")
    if dry:
        _describe_source(req, store, say)
        config = req.from_dir / "config.json" if req.from_dir else None
        shape = json.loads(config.read_text()) if config and config.is_file() else MISTRAL_7B_SHAPE
        shape_from = str(config) if shape is not MISTRAL_7B_SHAPE else "Mistral-7B-Instruct-v0.3's shape"
        base = BaseFacts.from_manifest(meta, req.base_ref, kv_values_per_token=kv_values_per_token(shape))
    else:
        _publish(req, store, meta, say)
        resolved = store.resolve(req.base_ref)
        shape, shape_from = json.loads((resolved.path / "config.json").read_text()), f"{resolved.path}/config.json"
        base = base_facts_from_store(store, req.base_ref)
    estimate = lora_size_bytes(shape, req.lora_r)
    say(f"  base facts: approx_vram_mb {dict(base.approx_vram_mb)}; kv_values_per_token {base.kv_values_per_token} "
        f"({shape_from}); adapter estimate {estimate // MIB} MiB (rank {req.lora_r}, 7 projections, fp32)")
    data = _new_map(req, agent_map, base)
    report = SwitchReport(dry_run=dry, base_ref=req.base_ref, base=base, adapter_estimate_bytes=estimate,
                          new_map=data, published=not dry)
    llm = sorted(n for n, e in data["agents"].items() if e.get("kind") == "llm")
    say(f"2. agent map {req.map_out}: base -> {req.base_ref} for {', '.join(llm)}")
    if dry:
        say(f"  would write {req.map_out} (validated: agent_graph schema)")
    else:
        _write_map(req, data, say)
        report.map_written = True
    say(f"3. plan the base pools on {len(req.inventories)} inventory(ies)")
    needs = _needs(agent_map, data, store, req.base_ref, estimate, dry)
    for name in req.inventories:
        report.outcomes.append(_plan_one(req, name, needs, base, policy, store.root, dry, say))
    say("4. adapters")
    _adapters(req, agent_map, store, report, say)
    return report


def add_switch_base_command(sub: Any) -> None:
    """Register ``switch-base`` on the ``justnews`` subparsers."""
    p = sub.add_parser("switch-base", help="publish a new base (Mistral-7B), point a new map at it, re-plan, "
                       "list the adapter re-training", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-dir", type=Path, help="local snapshot directory (config.json, safetensors, tokenizer)")
    src.add_argument("--hf-repo", help="Hugging Face repo id, e.g. mistralai/Mistral-7B-Instruct-v0.3")
    p.add_argument("--revision", help="with --hf-repo: the commit to pin")
    p.add_argument("--metadata", type=Path, required=True, help="base metadata JSON "
                   "(modelstore/metadata/mistral-7b-instruct-v0.3.json)")
    p.add_argument("--version", required=True, help="store version of the new base")
    p.add_argument("--map", dest="map_in", type=Path, help="agent map to derive from (default: the packaged one)")
    p.add_argument("--map-out", type=Path, required=True, help="where the new agent map is written")
    p.add_argument("--inventory", dest="inventories", action="append", default=[], help="plan on it (repeatable)")
    p.add_argument("--store-root", type=Path, help="ModelStore root (default $MODEL_STORE_ROOT)")
    p.add_argument("--emit-serve-config", metavar="PATH", help="write each plan as a Serve config; '{inventory}' "
                   "in PATH is replaced by the inventory name (required with several)")
    p.add_argument("--lora-r", type=int, default=16, help="rank of the re-trained adapters (default 16)")
    p.add_argument("--train-dir", default="data", help="JSONL directory named in the train commands")
    p.add_argument("--force", action="store_true", help="replace an existing base version")
    p.add_argument("--no-promote", dest="promote", action="store_false", help="leave base_models@current as is")
    p.add_argument("--dry-run", action="store_true", help=f"print every step, write nothing (also {DRY_RUN_ENV}=1)")
    p.add_argument("--policy", help="placement policy YAML/JSON")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override one policy field")
    p.set_defaults(func=cmd_switch_base)


def cmd_switch_base(args: Any) -> int:
    """Run ``justnews switch-base``; 1 when an inventory cannot hold the pools."""
    from agent_graph.errors import AgentGraphError
    from modelstore.errors import ModelStoreError

    from .cli import _policy

    fields = {k: v for k, v in vars(args).items() if k in SwitchRequest.model_fields and v is not None}
    try:
        report = switch_base(SwitchRequest(**fields), _policy(args))
    except (ValidationError, ModelStoreError, AgentGraphError) as exc:
        raise PlanningError(str(exc)) from exc
    return 1 if any(o.refused for o in report.outcomes) else 0
