"""What a BaseLLM replica actually loaded, beside what the placement plan chose for it.

The plan decides a pool's variant and device; a replica can still end up elsewhere (no CUDA visible to
the process, a variant fallback of the store, an operator's override). The replica logs this report at
start, returns it in ``stats()`` and exports it (``justnews_llm_base_loaded_bytes``,
``justnews_llm_plan_mismatch``), so a mismatch is an alert rather than a surprise.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from deployments.base_llm.settings import BaseLLMSettings, PlannedLoad

__all__ = ["LoadedReport"]


class LoadedReport(BaseModel):
    """The loaded base of one replica and how it compares with the plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: str = Field(description="The pool (deployment) name.")
    variant: str = Field(description="Variant loaded.")
    device: str = Field(description="Device the base sits on.")
    weight_bytes: int = Field(ge=0, description="Bytes of the loaded weights and buffers (get_memory_footprint).")
    planned: PlannedLoad | None = Field(description="What the plan chose (None: no plan).")
    mismatches: tuple[str, ...] = Field(default=(), description="Each way the load differs from the plan.")

    @property
    def matches_plan(self) -> bool:
        """True when there is no plan, or the load agrees with it."""
        return not self.mismatches

    @classmethod
    def of(cls, model: Any, variant: str, settings: BaseLLMSettings, planned: PlannedLoad | None) -> "LoadedReport":
        """Report on ``model`` as loaded with ``settings`` (device already resolved)."""
        try:
            weight_bytes = int(model.get_memory_footprint())
        except Exception:  # noqa: BLE001 - a model without the helper: count parameters and buffers
            tensors = [*model.parameters(), *model.buffers()]
            weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
        device = settings.device
        mismatches = []
        if planned is not None:
            if variant != planned.variant:
                mismatches.append(f"variant {variant} != planned {planned.variant}")
            if device.split(":")[0] != planned.device:
                mismatches.append(f"device {device} != planned {planned.device}")
            if planned.memory_budget_mb is not None and weight_bytes > planned.memory_budget_mb * 1024 * 1024:
                mismatches.append(f"weights {weight_bytes // 2**20} MiB > planned budget {planned.memory_budget_mb} MiB")
        return cls(pool=settings.deployment_name, variant=variant, device=device, weight_bytes=weight_bytes,
                   planned=planned, mismatches=tuple(mismatches))

    def describe(self) -> str:
        """One log line."""
        plan = "no plan" if self.planned is None else (
            f"plan ({self.planned.inventory}): {self.planned.variant} on {self.planned.device}"
            + (f", budget {self.planned.memory_budget_mb} MiB" if self.planned.memory_budget_mb else ""))
        verdict = "matches the plan" if self.matches_plan else "MISMATCH: " + "; ".join(self.mismatches)
        return (f"pool {self.pool}: loaded {self.variant} on {self.device}, {self.weight_bytes / 2**20:.1f} MiB of "
                f"weights; {plan}; {verdict}")
