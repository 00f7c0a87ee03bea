"""``AGENT_MODEL_MAP.json``: which model answers each agent, validated before anything starts.

The map is the single source of truth for serving: per agent, the base ref, the adapter ref (and any
per-task adapters), the variant preference, whether quantized variants are acceptable, and the ordered
fallback chain. ``AGENT_MODEL_RECOMMENDED.json`` beside it only names the legacy last resort per agent.
:func:`load_agent_map` reports every mistake at once, each naming the agent and the field, so a wrong
entry stops start-up instead of half-starting a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator


from modelstore.errors import ModelStoreError, RefError
from modelstore.manifest import QUANTIZED, Variant
from modelstore.refs import AdapterRef, BaseRef, parse_ref

from .contracts import AGENTS, agent_names
from .errors import AgentMapError, MapProblem
from .heuristics import HEURISTICS

__all__ = ["MAP_FILE", "RECOMMENDED_FILE", "AgentKind", "FallbackStep", "AgentName", "AgentEntry", "LegacyEntry",
           "AgentMap", "ReviewRules", "default_map_path", "load_agent_map"]

MAP_FILE = "AGENT_MODEL_MAP.json"
RECOMMENDED_FILE = "AGENT_MODEL_RECOMMENDED.json"
AgentKind = Literal["llm", "embedding", "multimodal"]
FallbackStep = Literal["adapter", "base", "legacy"]
# Same shape as the agent part of an adapter ref, so an agent name is always a valid store namespace.
AgentName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
TaskName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class _Rules(ValueError):
    """Cross-field problems found by one validator, each with its own agent and field."""

    def __init__(self, problems: list[MapProblem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def _ref(value: str, want: type, what: str) -> str:
    ref = parse_ref(value)  # RefError quotes the value and says why
    if not isinstance(ref, want):
        raise RefError(f"invalid model ref {value!r}: {what} must be "
                       + ("'base_models@<version>' or 'base_models/<name>@<version>'" if want is BaseRef
                          else "'<agent>/<adapter>@<version>'"))
    return str(ref)


class ReviewRules(BaseModel):
    """When an agent's answer goes to human review (``hitl``); any rule that holds queues it, with its reason.

    Which rules fit an agent depends on its output contract (checked by :class:`AgentMap`): ``block_on``
    names values of the output's top-level ``verdict`` or ``decision``, ``unverified`` needs a ``verdict``
    that can be ``"unverified"``, ``min_confidence`` a ``confidence`` field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    block_on: list[str] = Field(default_factory=list, max_length=8, description="Verdict/decision values that "
                                "block the story (critic 'reject', chief_editor 'reject'/'escalate'): reason "
                                "'blocking_verdict'.")
    unverified: bool = Field(False, description="Any verdict 'unverified' in the output (fact_checker): reason "
                             "'unverified'.")
    fallback: bool = Field(False, description="Answered by a later step of the fallback chain: reason 'fallback'.")
    min_confidence: float | None = Field(None, ge=0.0, le=1.0, description="Any 'confidence' in the output below "
                                         "this: reason 'low_confidence'.")
    sample: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of every answer queued at random for quality "
                          "control: reason 'sampled'.")

    def reasons(self, output: dict[str, Any], *, fallback: bool, draw: float = 1.0) -> list[str]:
        """The reasons ``output`` goes to review (empty: it does not).

        Args:
            output: the agent's validated output, as JSON.
            fallback: whether a later fallback step answered.
            draw: a uniform random number in [0, 1) for the sampling rule.
        """
        found: list[str] = []
        top = [output.get(k) for k in _VERDICT_FIELDS if k in output]
        if self.block_on and any(v in self.block_on for v in top):
            found.append("blocking_verdict")
        if self.unverified and "unverified" in _values_of(output, "verdict"):
            found.append("unverified")
        if self.fallback and fallback:
            found.append("fallback")
        if self.min_confidence is not None:
            scores = [c for c in _values_of(output, "confidence") if isinstance(c, (int, float))]
            if scores and min(scores) < self.min_confidence:
                found.append("low_confidence")
        if self.sample and draw < self.sample:
            found.append("sampled")
        return found

    def problems(self, output_schema: dict[str, Any]) -> list[tuple[str, str]]:
        """``(field, message)`` for every rule the agent's output contract cannot satisfy."""
        out = []
        props = output_schema.get("properties", {})
        defs = output_schema.get("$defs", {})
        top = {k: _enum(props[k], defs) for k in _VERDICT_FIELDS if k in props}
        if self.block_on:
            allowed = set().union(*top.values()) if top else set()
            bad = [v for v in self.block_on if v not in allowed]
            if not top:
                out.append(("review.block_on", "the output contract has no top-level 'verdict' or 'decision'"))
            elif bad:
                out.append(("review.block_on", f"{', '.join(map(repr, bad))} not among the contract's values "
                                               f"{sorted(allowed)}"))
        if self.unverified and "unverified" not in _schema_enums(output_schema, "verdict"):
            out.append(("review.unverified", "the output contract has no verdict that can be 'unverified'"))
        if self.min_confidence is not None and not _schema_has(output_schema, "confidence"):
            out.append(("review.min_confidence", "the output contract has no 'confidence' field"))
        return out


_VERDICT_FIELDS = ("verdict", "decision")


def _values_of(node: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a JSON value."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + [x for v in node.values() for x in _values_of(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in _values_of(v, key)]
    return []


def _enum(prop: dict[str, Any], defs: dict[str, Any]) -> set[Any]:
    ref = prop.get("$ref")
    prop = defs.get(ref.rsplit("/", 1)[-1], {}) if ref else prop
    return set(prop.get("enum", [])) | {e for alt in prop.get("anyOf", []) for e in alt.get("enum", [])}


def _schema_props(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every ``(property name, property schema)`` of a JSON schema, nested objects and ``$defs`` included."""
    found = []
    for node in [schema, *schema.get("$defs", {}).values()]:
        for name, prop in node.get("properties", {}).items():
            found.append((name, prop))
    return found


def _schema_enums(schema: dict[str, Any], key: str) -> set[Any]:
    defs = schema.get("$defs", {})
    return set().union(*(_enum(p, defs) for n, p in _schema_props(schema) if n == key))


def _schema_has(schema: dict[str, Any], key: str) -> bool:
    return any(n == key for n, _ in _schema_props(schema))


class AgentEntry(BaseModel):
    """One agent's models and how to degrade when they fail."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AgentKind = Field(description="'llm' agents run on the shared base; 'multimodal' agents read images, on a "
                            "vision-language base ('base') or on weights of their own ('model'); 'embedding' "
                            "agents keep their own weights.")
    description: str = Field("", max_length=300, description="What the agent does, for operators.")
    base: str | None = Field(None, description="Base ref, 'base_models@<version>' or a named base "
                             "'base_models/<name>@<version>' (llm and multimodal agents).")
    adapter: str | None = Field(None, description="Default adapter ref, '<agent>/<adapter>@<version>' (agents on a "
                                "base).")
    task_adapters: dict[TaskName, str] = Field(
        default_factory=dict, description="Task router: task name -> adapter ref; other tasks use 'adapter'.")
    model: str | None = Field(None, max_length=200,
                              description="Specialised model id of an embedding or multimodal agent.")
    served: bool = Field(True, description="Whether this project deploys the agent; an agent not served is "
                         "neither routed nor checked against the store.")
    variant_preference: list[Variant] = Field(min_length=1, description="Acceptable load variants, best first.")
    allow_quantized: bool = Field(False, description="Whether bnb-int8 / bnb-4bit loads are acceptable.")
    fallback: list[FallbackStep] = Field(min_length=1, description="Steps tried in order until one answers.")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Generation budget of a reply: at least the agent's largest valid reply (agent_graph.budget), which the store check counts with the base's tokenizer.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Default sampling temperature; 0 is greedy.")
    review: ReviewRules | None = Field(None, description="When an answer goes to human review (hitl); None: never "
                                       "by rule (items can still be queued by hand).")

    @field_validator("base")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        return None if v is None else _ref(v, BaseRef, "a base")

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, v: str | None) -> str | None:
        return None if v is None else _ref(v, AdapterRef, "an adapter")

    @field_validator("task_adapters")
    @classmethod
    def _task_adapters(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for task, ref in v.items():
            try:
                out[task] = _ref(ref, AdapterRef, "an adapter")
            except RefError as exc:
                raise ValueError(f"task {task!r}: {exc}") from None
        return out

    @model_validator(mode="after")
    def _rules(self) -> "AgentEntry":
        problems: list[tuple[str, str]] = []
        if self.kind == "llm" or (self.kind == "multimodal" and self.base is not None):
            if self.base is None:
                problems.append(("base", "an llm agent needs a base ref"))
            if self.model is not None:
                problems.append(("model", f"{self.model!r}: a {self.kind} agent on 'base' takes no specialised "
                                          f"model"))
        else:
            for name in ("base", "adapter"):
                if getattr(self, name) is not None:
                    problems.append((name, f"a {self.kind} agent keeps its own weights; remove {name!r}"))
            if self.task_adapters:
                problems.append(("task_adapters", f"a {self.kind} agent takes no adapters"))
            if not self.model:
                problems.append(("model", f"a {self.kind} agent needs its specialised model id"
                                          + (" (or a vision base ref in 'base')" if self.kind == "multimodal" else "")))
        if self.task_adapters and self.adapter is None:
            problems.append(("adapter", "a task router needs a default adapter for tasks it does not list"))
        if "adapter" in self.fallback and self.adapter is None:
            problems.append(("fallback", "step 'adapter' but the entry has no adapter"))
        for field, values in (("fallback", self.fallback), ("variant_preference", self.variant_preference)):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                problems.append((field, f"lists {', '.join(map(repr, dupes))} more than once"))
        quantized = [v for v in self.variant_preference if v in QUANTIZED]
        if quantized and not self.allow_quantized:
            problems.append(("variant_preference",
                             f"names quantized {', '.join(map(repr, quantized))} but allow_quantized is false"))
        if problems:
            raise _Rules([MapProblem(None, f, m) for f, m in problems])
        return self

    @property
    def base_ref(self) -> BaseRef | None:
        """The typed base ref."""
        return parse_ref(self.base) if self.base else None

    def adapter_for(self, task: str | None = None) -> str | None:
        """The adapter ref for ``task``: its router entry if listed, else the default adapter."""
        return self.task_adapters.get(task, self.adapter) if task is not None else self.adapter

    def refs(self) -> dict[str, str]:
        """Every store ref of the entry, keyed by the field that names it (``task_adapters.<task>``)."""
        out = {k: v for k, v in (("base", self.base), ("adapter", self.adapter)) if v}
        out.update({f"task_adapters.{t}": r for t, r in self.task_adapters.items()})
        return out


class LegacyEntry(BaseModel):
    """The legacy last resort of one agent, from ``AGENT_MODEL_RECOMMENDED.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str = Field(pattern=r"^(heuristic|hf):[A-Za-z0-9_./-]{1,120}$",
                     description="'heuristic:<name>' (agent_graph.heuristics) or 'hf:<model id>' (a legacy model).")
    note: str = Field("", max_length=300, description="Why this fallback, for operators.")

    @property
    def scheme(self) -> Literal["heuristic", "hf"]:
        """``heuristic`` or ``hf``."""
        return self.ref.split(":", 1)[0]  # type: ignore[return-value]

    @property
    def target(self) -> str:
        """The heuristic name or model id."""
        return self.ref.split(":", 1)[1]


class AgentMap(BaseModel):
    """Every agent's entry, plus the legacy fallbacks loaded from the companion file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = Field(1, description="Map format version.")
    agents: dict[AgentName, AgentEntry] = Field(min_length=1, description="Agent name -> entry.")
    legacy: dict[AgentName, LegacyEntry] = Field(
        default_factory=dict, description="Agent name -> legacy fallback (from AGENT_MODEL_RECOMMENDED.json).")

    @model_validator(mode="after")
    def _rules(self) -> "AgentMap":
        problems: list[MapProblem] = []
        for name, entry in self.agents.items():
            for field, ref in entry.refs().items():
                ref_agent = getattr(parse_ref(ref), "agent", name)
                if ref_agent != name:
                    problems.append(MapProblem(name, field, f"{ref!r} is an adapter of agent {ref_agent!r}"))
            if "legacy" in entry.fallback and name not in self.legacy:
                problems.append(MapProblem(name, "fallback", f"step 'legacy' but {RECOMMENDED_FILE} has no entry"))
            spec = AGENTS.get(name)
            # A multimodal agent on weights of its own, not served, needs no contract; anything served does.
            if spec is None and (entry.kind != "multimodal" or entry.served or entry.base is not None):
                problems.append(MapProblem(name, "kind", f"{entry.kind} agent has no contract in agent_graph.agents "
                                                         f"(known: {', '.join(agent_names())})"))
            elif spec is not None and spec.kind != entry.kind:
                problems.append(MapProblem(name, "kind", f"{entry.kind!r}, but its contract is {spec.kind!r}"))
            if entry.kind == "multimodal" and entry.served and entry.base is None:
                problems.append(MapProblem(name, "base", "a served multimodal agent runs on a vision-language base "
                                                         "with its adapter: set 'base' (and 'adapter'), or "
                                                         "'served': false"))
            if spec is not None and entry.review is not None:
                problems += [MapProblem(name, f, m) for f, m in entry.review.problems(spec.output_model.model_json_schema())]
        for name in agent_names():
            if name not in self.agents:
                problems.append(MapProblem(name, None, "has a contract but no entry in the map"))
        for name, legacy in self.legacy.items():
            if name not in self.agents:
                problems.append(MapProblem(name, "legacy", f"{RECOMMENDED_FILE} names an agent the map lacks"))
            if legacy.scheme == "heuristic":
                h = HEURISTICS.get(legacy.target)
                if h is None:
                    problems.append(MapProblem(name, "legacy", f"unknown heuristic {legacy.ref!r} "
                                                               f"(known: {', '.join(sorted(HEURISTICS))})"))
                elif h.agent != name:
                    problems.append(MapProblem(name, "legacy", f"{legacy.ref!r} answers agent {h.agent!r}"))
        if problems:
            raise _Rules(problems)
        return self

    def entry(self, name: str) -> AgentEntry:
        """The entry of agent ``name``; raises :class:`~agent_graph.errors.UnknownAgent`."""
        from .errors import UnknownAgent

        try:
            return self.agents[name]
        except KeyError:
            raise UnknownAgent(name, list(self.agents)) from None

    def store_problems(self, store: Any, *, budgets: bool = True) -> list[MapProblem]:
        """Every ref that does not resolve in ``store`` (a ``modelstore.ModelStore``), and every mismatch.

        Checks every served agent on a base: that each ref resolves, is of the right kind, that adapters were
        validated against the entry's base version, that a multimodal agent's base is a vision-language one
        (its manifest has a ``vision`` section), that the base offers at least one acceptable variant, and that
        ``max_new_tokens`` holds the agent's largest valid reply counted with the base's own tokenizer
        (``agent_graph.budget``; skipped when the base ships no loadable tokenizer, e.g. a dry-run store, or
        when ``budgets`` is False).
        """
        problems: list[MapProblem] = []
        tokenizers: dict[str, Any] = {}
        for name, entry in self.agents.items():
            if entry.base is None or not entry.served:  # own weights, or not deployed: nothing to resolve
                continue
            resolved = {}
            for field, ref in entry.refs().items():
                try:
                    resolved[field] = store.resolve(ref)
                except (ModelStoreError, OSError) as exc:
                    problems.append(MapProblem(name, field, f"{ref!r} does not resolve in the store: {exc}"))
            base = resolved.get("base")
            if base is None:
                continue
            tokenizer = tokenizers.setdefault(str(base.ref), _base_tokenizer(base)) if budgets else None
            if tokenizer is not None and name in AGENTS:
                from .budget import budget_problem

                problem = budget_problem(name, entry.max_new_tokens, tokenizer)
                if problem is not None:
                    problems.append(MapProblem(name, "max_new_tokens", f"{problem} (tokenizer of {base.ref})"))
            if entry.kind == "multimodal" and getattr(base.manifest, "vision", None) is None:
                problems.append(MapProblem(name, "base", f"{base.ref} is not a vision-language base (its manifest "
                                           f"has no 'vision' section); a multimodal agent reads images"))
            offered = base.manifest.approx_vram_mb
            usable = [v for v in entry.variant_preference if v in offered]
            if not usable:
                problems.append(MapProblem(name, "variant_preference", f"none of {entry.variant_preference} is "
                                           f"offered by {base.ref} (offers {sorted(offered)})"))
            for field, res in resolved.items():
                if field == "base" or res.manifest.adapter is None:
                    continue
                if res.manifest.adapter.base_ref != str(base.ref):
                    problems.append(MapProblem(name, field, f"{res.ref} was validated against "
                                               f"{res.manifest.adapter.base_ref}, but the entry's base is {base.ref}"))
        return problems

    def validate_against_store(self, store: Any, *, budgets: bool = True) -> None:
        """Raise :class:`AgentMapError` listing every problem of :meth:`store_problems`, if any."""
        problems = self.store_problems(store, budgets=budgets)
        if problems:
            raise AgentMapError(f"{MAP_FILE} against ModelStore {getattr(store, 'root', store)}", problems)


def _base_tokenizer(base: Any) -> Any:
    """The tokenizer a resolved base ships, or None when it has none that loads (metadata-only stores)."""
    path = Path(getattr(base, "path", ""))
    if not (path / "tokenizer_config.json").is_file():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception:  # noqa: BLE001 - an unreadable tokenizer is the loader's problem, not the map's
        return None


def _problems(exc: ValidationError) -> list[MapProblem]:
    """Turn pydantic errors into problems naming the agent (``agents.<name>`` / ``legacy.<name>``) and field."""
    out = []
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        loc = list(err["loc"])
        agent = None
        if len(loc) >= 2 and loc[0] in ("agents", "legacy"):
            agent, loc = str(loc[1]), loc[2:] if loc[0] == "agents" else ["legacy", *loc[2:]]
        if isinstance(cause, _Rules):
            out += [MapProblem(p.agent or agent, p.field, p.message) for p in cause.problems]
            continue
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]  # a bad name (agent or task): the problem sits at the name itself
        field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
        message = str(cause) if cause is not None else err["msg"]
        if err["type"] != "missing" and cause is None:
            message += f" (got {err['input']!r})"
        out.append(MapProblem(agent, field or None, message))
    return out


def default_map_path() -> Path:
    """The map shipped inside the package."""
    return Path(__file__).with_name(MAP_FILE)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgentMapError(str(path), [MapProblem(None, None, "file not found")]) from None
    except (OSError, ValueError) as exc:
        raise AgentMapError(str(path), [MapProblem(None, None, f"not readable JSON: {exc}")]) from None


def load_agent_map(path: str | Path | None = None, recommended_path: str | Path | None = None) -> AgentMap:
    """Read and validate the agent map and its legacy companion.

    Args:
        path: the map; default the packaged ``AGENT_MODEL_MAP.json``.
        recommended_path: the legacy fallbacks; default ``AGENT_MODEL_RECOMMENDED.json`` beside ``path``.

    Raises:
        AgentMapError: every problem found, each naming the agent and the field.
    """
    path = Path(path) if path is not None else default_map_path()
    recommended = Path(recommended_path) if recommended_path is not None else path.with_name(RECOMMENDED_FILE)
    data, legacy = _read_json(path), _read_json(recommended)
    if not isinstance(data, dict) or "legacy" in data:
        raise AgentMapError(path.name, [MapProblem(None, "legacy" if isinstance(data, dict) else None,
                                                   f"legacy fallbacks belong in {RECOMMENDED_FILE}"
                                                   if isinstance(data, dict) else "expected a JSON object")])
    if not isinstance(legacy, dict) or legacy.get("schema_version") != 1 or not isinstance(legacy.get("legacy"), dict):
        raise AgentMapError(recommended.name, [MapProblem(None, None, "expected {'schema_version': 1, 'legacy': {...}}")])
    try:
        return AgentMap.model_validate({**data, "legacy": legacy["legacy"]})
    except ValidationError as exc:
        raise AgentMapError(path.name, _problems(exc)) from None
