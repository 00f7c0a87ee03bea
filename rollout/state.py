"""A canary's durable state, its decision log and the per-replica statistics, all on disk beside the store.

Layout (``<root>`` is the ModelStore root, shared by every host that serves it)::

    <root>/.canary/<agent>/<adapter>/state.json         the canary (CanaryState), rewritten atomically
    <root>/.canary/<agent>/<adapter>/decisions.jsonl    every decision with its figures, appended
    <root>/.canary/<agent>/<adapter>/stats/<id>/<stage>/<replica>.json
                                                        what one agent replica observed in one stage
    <root>/.canary/<agent>/<adapter>/.lock              read-modify-write of state.json

Nothing lives in a process: a controller or an agent replica that restarts reads the state back, and the
statistics of a replica that died stay in its file and still count. The store skips dot-directories, so
``.canary`` never looks like an agent namespace.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterator, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelstore.fsutil import atomic_write_json, fsync_dir
from modelstore.refs import AdapterRef, parse_ref

__all__ = ["CanaryBounds", "CanaryState", "CanaryDecision", "RoleStats", "VersionFigures", "CanaryBook",
           "CanaryError", "percentile", "figures", "ROLES", "MAX_SAMPLES"]

ROLES = ("baseline", "candidate")
MAX_SAMPLES = 20_000  # latency samples one replica keeps per role and stage (counts stay exact)
Status = Literal["running", "promoted", "rolled_back", "aborted"]


class CanaryError(ValueError):
    """A canary command that cannot be carried out (the message says why)."""


class CanaryBounds(BaseModel):
    """How close the candidate must stay to the baseline (the version that was current) to earn traffic."""

    model_config = ConfigDict(extra="forbid")

    p95_tolerance: float = Field(0.05, ge=0, description="Candidate p95 may exceed the baseline's by this fraction.")
    p95_slack_s: float = Field(0.0, ge=0, description="Absolute seconds added to the p95 bound (noisy hosts).")
    error_rate_tolerance: float = Field(0.05, ge=0, le=1, description="Candidate error rate may exceed the "
                                        "baseline's by this much (absolute: 0.05 = five percentage points).")
    min_requests: int = Field(20, ge=1, description="Requests each version needs in a stage before a decision.")


class CanaryDecision(BaseModel):
    """One line of the decision log."""

    at: float = Field(description="Unix time of the decision.")
    canary_id: str
    adapter: str = Field(description="The adapter namespace, agent/name.")
    action: Literal["start", "widen", "promote", "rollback", "abort"]
    by: str = Field(description="'gate' for the automatic gate, 'operator' for a command.")
    stage: int = Field(description="The stage the decision ends (start: the first stage).")
    fraction: float = Field(description="The candidate's traffic share after the decision.")
    reason: str
    figures: dict[str, Any] = Field(default_factory=dict, description="Per-version figures the decision saw.")


class CanaryState(BaseModel):
    """One canary of one adapter namespace: the baseline, the candidate and where the rollout stands."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    agent: str
    adapter: str = Field(description="Adapter namespace, agent/name.")
    baseline: str = Field(description="The version that was current when the canary started.")
    candidate: str = Field(description="The version on trial.")
    stages: list[float] = Field(description="Candidate traffic share per stage; passing the last one promotes.")
    stage: int = Field(0, ge=0)
    stage_started_at: float
    window_s: float = Field(gt=0, description="Observation window of each stage, seconds.")
    mirror: bool = Field(False, description="Also send baseline-routed requests to the candidate, answers unused.")
    bounds: CanaryBounds = Field(default_factory=CanaryBounds)
    status: Status = "running"
    started_at: float
    ended_at: float | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _rules(self) -> "CanaryState":
        if not self.stages:
            raise ValueError("stages must name at least one traffic fraction")
        if any(not 0 < f < 1 for f in self.stages):
            raise ValueError(f"every stage fraction must be in (0, 1), got {self.stages}; passing the last "
                             "stage promotes the candidate to 100%")
        if any(b <= a for a, b in zip(self.stages, self.stages[1:])):
            raise ValueError(f"stage fractions must increase, got {self.stages}")
        if self.stage >= len(self.stages):
            raise ValueError(f"stage ({self.stage}) must be < the number of stages ({len(self.stages)})")
        if self.baseline == self.candidate:
            raise ValueError(f"candidate ({self.candidate}) is already the baseline")
        return self

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def fraction(self) -> float:
        """The candidate's share of the agent's traffic now."""
        if self.status == "promoted":
            return 1.0
        return self.stages[self.stage] if self.running else 0.0

    def ref(self, role: str) -> AdapterRef:
        """The pinned ref of ``baseline`` or ``candidate``."""
        agent, name = self.adapter.split("/", 1)
        return AdapterRef(agent, name, self.baseline if role == "baseline" else self.candidate)


class RoleStats(BaseModel):
    """What one replica saw of one version in one stage."""

    version: str
    requests: int = 0
    errors: int = 0
    schema_failures: int = 0
    mirrored: int = 0
    latencies: list[float] = Field(default_factory=list)

    def add(self, seconds: float, outcome: str, mirrored: bool = False) -> None:
        self.requests += 1
        self.mirrored += int(mirrored)
        if outcome != "ok":
            self.errors += 1
            self.schema_failures += int(outcome == "schema")
        self.latencies.append(round(seconds, 6))
        if len(self.latencies) > MAX_SAMPLES:
            del self.latencies[: len(self.latencies) - MAX_SAMPLES]

    def merge(self, other: "RoleStats") -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.schema_failures += other.schema_failures
        self.mirrored += other.mirrored
        self.latencies.extend(other.latencies)


class VersionFigures(BaseModel):
    """The figures of one version in one stage, merged over every replica."""

    version: str
    requests: int
    errors: int
    schema_failures: int
    mirrored: int
    error_rate: float | None
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None


def percentile(samples: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 100]) of ``samples``; None when empty."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def figures(stats: RoleStats) -> VersionFigures:
    """Percentiles and rates of merged :class:`RoleStats`."""
    n = stats.requests
    return VersionFigures(version=stats.version, requests=n, errors=stats.errors,
                          schema_failures=stats.schema_failures, mirrored=stats.mirrored,
                          error_rate=round(stats.errors / n, 4) if n else None,
                          p50_s=percentile(stats.latencies, 50), p95_s=percentile(stats.latencies, 95),
                          p99_s=percentile(stats.latencies, 99))


class CanaryBook:
    """Reads and writes canaries under ``<store root>/.canary``.

    Args:
        store_root: the ModelStore root.
    """

    def __init__(self, store_root: str | os.PathLike):
        self.root = Path(store_root).expanduser() / ".canary"

    def _dir(self, adapter: str) -> Path:
        ref = parse_ref(f"{adapter}@current")  # validates the namespace: no traversal through a name
        if not isinstance(ref, AdapterRef):
            raise CanaryError(f"{adapter!r} is not an adapter namespace (agent/name)")
        return self.root / ref.agent / ref.name

    def lock(self, adapter: str) -> FileLock:
        """The lock every read-modify-write of ``adapter``'s state holds."""
        d = self._dir(adapter)
        d.mkdir(parents=True, exist_ok=True)
        return FileLock(str(d / ".lock"))

    def state_path(self, adapter: str) -> Path:
        return self._dir(adapter) / "state.json"

    def load(self, adapter: str) -> CanaryState | None:
        """The latest canary of ``adapter`` (running or ended), or None."""
        try:
            return CanaryState.model_validate_json(self.state_path(adapter).read_text())
        except FileNotFoundError:
            return None

    def save(self, state: CanaryState) -> None:
        path = self.state_path(state.adapter)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, state.model_dump(mode="json"))

    def states(self) -> Iterator[CanaryState]:
        """Every adapter's latest canary."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*/*/state.json")):
            try:
                yield CanaryState.model_validate_json(path.read_text())
            except (OSError, ValueError):
                continue  # a foreign or damaged file is not a canary

    def running(self) -> list[CanaryState]:
        return [s for s in self.states() if s.running]

    def log(self, decision: CanaryDecision) -> None:
        """Append ``decision`` to its adapter's decision log, durably."""
        path = self._dir(decision.adapter) / "decisions.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(decision.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())

    def decisions(self, adapter: str, canary_id: str | None = None) -> list[CanaryDecision]:
        path = self._dir(adapter) / "decisions.jsonl"
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = [CanaryDecision.model_validate_json(line) for line in lines if line.strip()]
        return [d for d in out if canary_id is None or d.canary_id == canary_id]

    # -- statistics ---------------------------------------------------------------------------------

    def _stage_dir(self, adapter: str, canary_id: str, stage: int) -> Path:
        return self._dir(adapter) / "stats" / canary_id / str(stage)

    def write_replica_stats(self, adapter: str, canary_id: str, stage: int, replica: str,
                            roles: dict[str, RoleStats]) -> None:
        """Replace what ``replica`` observed in this stage (its whole tally, not a delta)."""
        d = self._stage_dir(adapter, canary_id, stage)
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
            fsync_dir(d.parent)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in replica) or "replica"
        atomic_write_json(d / f"{safe}.json", {role: s.model_dump() for role, s in roles.items()})

    def stage_figures(self, state: CanaryState, stage: int | None = None) -> dict[str, VersionFigures]:
        """Per-role figures of a stage (default: the current one), merged over every replica's file."""
        stage = state.stage if stage is None else stage
        merged = {role: RoleStats(version=getattr(state, role)) for role in ROLES}
        d = self._stage_dir(state.adapter, state.id, stage)
        for path in sorted(d.glob("*.json")) if d.is_dir() else []:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for role in ROLES:
                if role in data:
                    merged[role].merge(RoleStats.model_validate(data[role]))
        return {role: figures(s) for role, s in merged.items()}
