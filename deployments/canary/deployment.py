"""The canary controller deployment: one replica that runs the canary gate in the cluster. Thin Serve wiring.

Every ``interval_s`` it ticks :class:`rollout.CanaryController` over the store's running canaries (widen,
promote or roll back, each decision logged with its figures) and exports what it sees: the candidate's
traffic share, both versions' p95 latency and error rate, and a counter of decisions. All state lives on
disk beside the store, so Serve restarting this replica (or the whole controller) loses nothing: the new
replica reads the canaries back and their observation windows keep their original start times.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

__all__ = ["CanarySettings", "CanaryControllerDeployment", "build_canary_controller"]

log = logging.getLogger(__name__)


class CanarySettings(BaseModel):
    """``canary`` args of the application."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the canary gate in the cluster (else only `justnews canary gate`).")
    interval_s: float = Field(5.0, gt=0, le=600, description="Seconds between two gate ticks.")


class _CanaryMetrics:
    """``justnews_canary_*`` metrics."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.decisions = metrics.Counter(
            "justnews_canary_decisions", description="Canary decisions (start, widen, promote, rollback, abort).",
            tag_keys=("agent", "adapter", "action", "by"))
        self.fraction = metrics.Gauge(
            "justnews_canary_fraction", description="The candidate's share of its agent's traffic (0 when none runs).",
            tag_keys=("agent", "adapter", "candidate"))
        self.p95 = metrics.Gauge(
            "justnews_canary_p95_latency_s", description="p95 seconds of the canary's versions in the current stage.",
            tag_keys=("agent", "adapter", "role", "version"))
        self.error_rate = metrics.Gauge(
            "justnews_canary_error_rate", description="Error rate (schema failures included) of the canary's "
            "versions in the current stage.", tag_keys=("agent", "adapter", "role", "version"))
        self.requests = metrics.Gauge(
            "justnews_canary_requests", description="Requests each canary version served in the current stage.",
            tag_keys=("agent", "adapter", "role", "version"))

    def decided(self, decision: Any) -> None:
        agent = decision.adapter.split("/", 1)[0]
        self.decisions.inc(tags={"agent": agent, "adapter": decision.adapter, "action": decision.action,
                                 "by": decision.by})

    def observe(self, status: list[dict[str, Any]]) -> None:
        for entry in status:
            state = entry["state"]
            base = {"agent": state["agent"], "adapter": state["adapter"]}
            self.fraction.set(entry["fraction"] if state["status"] == "running" else 0.0,
                              tags={**base, "candidate": state["candidate"]})
            if state["status"] != "running":
                continue
            for role, fig in entry["figures"].items():
                tags = {**base, "role": role, "version": fig["version"]}
                self.requests.set(fig["requests"], tags=tags)
                if fig["p95_s"] is not None:
                    self.p95.set(fig["p95_s"], tags=tags)
                if fig["error_rate"] is not None:
                    self.error_rate.set(fig["error_rate"], tags=tags)


class CanaryControllerDeployment:
    """Serve-facing canary controller.

    Args:
        store_root: the ModelStore root.
        settings: :class:`CanarySettings` as a dict.
    """

    def __init__(self, store_root: str, settings: dict[str, Any]):
        from modelstore import ModelStore
        from rollout import CanaryController

        self._settings = CanarySettings.model_validate(settings)
        self._metrics = _CanaryMetrics()
        self._controller = CanaryController(ModelStore(store_root), on_decision=self._metrics.decided)
        self._ticks = 0
        self._last_error: str | None = None
        self._task = asyncio.get_running_loop().create_task(self._loop()) if self._settings.enabled else None

    async def _loop(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self._settings.interval_s)

    async def tick(self) -> list[dict[str, Any]]:
        """Run the gate once now; returns the decisions it took."""
        try:
            decisions = await asyncio.to_thread(self._controller.tick)
            self._metrics.observe(await asyncio.to_thread(self._controller.status))
            self._last_error = None
        except Exception as exc:  # noqa: BLE001 - keep ticking; the store may be briefly unreadable
            log.exception("canary gate tick failed")
            self._last_error = f"{type(exc).__name__}: {exc}"
            return []
        finally:
            self._ticks += 1
        return [d.model_dump(mode="json") for d in decisions]

    async def status(self) -> dict[str, Any]:
        """Every canary with its figures side by side and decisions (``GET /canary``)."""
        canaries = await asyncio.to_thread(self._controller.status)
        return {"gate": {"enabled": self._settings.enabled, "interval_s": self._settings.interval_s,
                         "ticks": self._ticks, "last_error": self._last_error}, "canaries": canaries}

    async def check_health(self) -> None:
        if self._task is not None and self._task.done():
            raise RuntimeError(f"the canary gate loop stopped: {self._task.exception()!r}")


def build_canary_controller(store_root: str, settings: CanarySettings | dict | None = None) -> Application:
    """Bind the canary controller (one replica, no CPU reserved: it only reads and writes small files)."""
    settings = CanarySettings.model_validate(settings or {})
    deployment = serve.deployment(CanaryControllerDeployment, name="CanaryController", num_replicas=1,
                                  max_ongoing_requests=8, ray_actor_options={"num_cpus": 0})
    return deployment.bind(store_root, settings.model_dump())
