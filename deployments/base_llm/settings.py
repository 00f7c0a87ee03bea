"""Configuration of the BaseLLM deployment: what is fixed per deployment and what changes at runtime.

:class:`RuntimeConfig` is the deployment's Serve ``user_config``: changing it in ``serve_config.yaml``
reaches every running replica through ``reconfigure`` without a restart. :class:`BaseLLMSettings` holds
everything else (which base, which store, replica count and resources) and embeds the runtime part as
the initial ``user_config``. A later placement planner fills these fields from the ModelStore's VRAM
metadata; nothing here is sized twice.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine import EngineConfig

__all__ = ["RuntimeConfig", "PlannedLoad", "BaseLLMSettings", "check_runtime_fits", "resolve_device", "unflatten_args"]

Variant = Literal["fp32", "bf16", "fp16", "bnb-int8", "bnb-4bit"]


class RuntimeConfig(BaseModel):
    """Settings a running replica applies on ``reconfigure`` (the deployment's ``user_config``)."""

    model_config = ConfigDict(extra="forbid")

    scheduling: Literal["continuous", "static"] = Field(
        "continuous",
        description=(
            "'continuous': requests join the engine's running batch at the next decode step and leave when done "
            "(engine/scheduler.py); 'static': the replica's batcher gathers a batch (batch_wait_timeout_s) and "
            "runs it to completion while later requests wait. Switchable at runtime; in-flight requests finish "
            "where they started."
        ),
    )
    max_batch_size: int = Field(
        8, ge=1, description="Most requests in one engine forward pass (any mix of adapters): the rows running at "
        "once (continuous) or gathered into one batch (static)."
    )
    batch_wait_timeout_s: float = Field(
        0.02,
        ge=0.0,
        le=10.0,
        description="How long the static batcher waits after the first queued request for more to join its batch "
        "(unused by continuous scheduling: a request joins at the next step).",
    )
    max_num_models_per_replica: int = Field(
        4,
        ge=1,
        description="Adapters a replica keeps resident (Serve multiplexing LRU); the least recently used "
        "is evicted and unloaded when one more is requested.",
    )


class PlannedLoad(BaseModel):
    """What the placement plan expects a replica to load; the replica compares it with what it loaded."""

    model_config = ConfigDict(extra="forbid")

    pool: str = Field(min_length=1, description="The pool (deployment) name.")
    variant: Variant = Field(description="Planned base variant.")
    device: Literal["cuda", "cpu"] = Field(description="Planned device.")
    memory_budget_mb: int | None = Field(None, ge=1, description="Planned replica memory (weights + KV + "
                                         "adapters + context), MiB; None without a plan.")
    inventory: str = Field("none", description="The inventory the plan was made for.")


class BaseLLMSettings(BaseModel):
    """Everything that shapes one BaseLLM deployment; the builder turns it into Serve options."""

    model_config = ConfigDict(extra="forbid")

    store_root: str | None = Field(
        None, description="ModelStore root directory; None uses $MODEL_STORE_ROOT or the default location."
    )
    base_ref: str = Field("base_models@current", description="Base model ref; pinned to a version at replica start.")
    variant: Variant | None = Field(
        None, description="Base weights variant; None takes the manifest's variant_preference."
    )
    device: str = Field("auto", description="Torch device of the base: 'auto' (CUDA when the replica sees a GPU "
                        "and the plan gave it one, else the CPU), or explicitly 'cpu', 'cuda', 'cuda:1' ...")
    planned: PlannedLoad | None = Field(None, description="What the placement plan chose for this pool; the "
                                        "replica exports whether what it loaded matches.")
    verify_adapters: bool = Field(
        True, description="Recompute an adapter's checksums before loading it (refuses corrupt publishes)."
    )
    preload_adapters: list[str] = Field(
        default_factory=list, description="Adapter refs each replica loads at start, through the multiplexer "
        "(``@current`` pinned then); at most runtime.max_num_models_per_replica. A failure is logged and counted "
        "(justnews_llm_preload_failures), and the replica serves anyway.")
    deployment_name: str = Field("BaseLLM", min_length=1, description="Serve deployment name.")
    num_replicas: int = Field(1, ge=1, description="Replicas of the deployment, each with its own base copy.")
    autoscaling_config: dict[str, Any] | None = Field(
        None, description="Serve autoscaling_config (min_replicas, max_replicas, target_ongoing_requests ...); "
        "when set it replaces num_replicas."
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests Serve sends one replica at once (queued in its batcher or running)."
    )
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 1},
        description="Ray actor options of each replica (num_cpus, num_gpus, memory, runtime_env ...).",
    )
    graceful_shutdown_timeout_s: float = Field(
        30.0, gt=0, description="How long a stopping replica may spend finishing queued requests."
    )
    health_check_period_s: float = Field(2.0, gt=0, description="Seconds between Serve's check_health calls: a "
                                         "dead or hung replica is replaced (and /healthz degraded) this soon.")
    health_check_timeout_s: float = Field(10.0, gt=0, description="A check_health call that takes longer marks "
                                          "the replica unhealthy.")
    engine: EngineConfig = Field(
        default_factory=EngineConfig, description="Hard limits of the inference engine (fixed per replica)."
    )
    runtime: RuntimeConfig = Field(
        default_factory=RuntimeConfig, description="Initial user_config; later changes need no restart."
    )

    @model_validator(mode="after")
    def _limits_fit(self) -> "BaseLLMSettings":
        check_runtime_fits(self.runtime, self.engine)
        if self.max_ongoing_requests < self.runtime.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= runtime.max_batch_size "
                f"({self.runtime.max_batch_size}), or batches can never fill"
            )
        return self


def check_runtime_fits(runtime: RuntimeConfig, engine: EngineConfig) -> None:
    """Raise ``ValueError`` when a runtime config asks for more than the engine allows."""
    if runtime.max_batch_size > engine.max_batch_size:
        raise ValueError(
            f"runtime.max_batch_size ({runtime.max_batch_size}) must be <= engine.max_batch_size "
            f"({engine.max_batch_size})"
        )
    if runtime.max_num_models_per_replica > engine.max_loaded_adapters:
        raise ValueError(
            f"runtime.max_num_models_per_replica ({runtime.max_num_models_per_replica}) must be <= "
            f"engine.max_loaded_adapters ({engine.max_loaded_adapters})"
        )


def resolve_device(device: str, planned: str | None = None) -> str:
    """The torch device a replica loads on: an explicit ``device`` as given; ``auto`` is CUDA when CUDA is
    visible to this process and the plan (if any) gave the replica a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() and planned in (None, "cuda") else "cpu"


def unflatten_args(args: dict[str, Any]) -> dict[str, Any]:
    """Turn ``serve run`` style flat args into nested settings: ``{"runtime.max_batch_size": "4"}``
    becomes ``{"runtime": {"max_batch_size": "4"}}`` (pydantic converts the strings)."""
    nested: dict[str, Any] = {}
    for key, value in args.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"argument {key!r} conflicts with {part!r}={child!r}")
            node = child
        node[leaf] = value
    return nested
