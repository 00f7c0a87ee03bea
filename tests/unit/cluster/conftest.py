"""Builders shared by the planner tests: the real Mistral-7B VRAM metadata, inventories, demands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelstore
from cluster import AdapterFacts, BaseFacts, DeploymentDemand, Inventory

MISTRAL_METADATA = Path(modelstore.__file__).parent / "metadata" / "mistral-7b-instruct-v0.3.json"
MISTRAL_KV_VALUES = 2 * 32 * 8 * 128  # K and V x layers x KV heads x head dim = 128 KiB/token in fp16
ADAPTER_160MB = 160 * 1024 * 1024


def mistral_base() -> BaseFacts:
    meta = json.loads(MISTRAL_METADATA.read_text())
    return BaseFacts(ref="base_models@v20251123-mistral-v0.3", approx_vram_mb=meta["approx_vram_mb"],
                     quantized_variants=meta["quantized_variants"], variant_preference=meta["variant_preference"],
                     kv_values_per_token=MISTRAL_KV_VALUES)


def adapters(n: int, size_bytes: int = ADAPTER_160MB) -> tuple[AdapterFacts, ...]:
    return tuple(AdapterFacts(ref=f"agent{i}/mistral_agent{i}_v1@v1", size_bytes=size_bytes) for i in range(n))


def demand(name: str = "BaseLLM", *, base: BaseFacts | None = None, n_adapters: int = 8, **kwargs) -> DeploymentDemand:
    return DeploymentDemand(name=name, base=base or mistral_base(), adapters=adapters(n_adapters), **kwargs)


def gpu_inventory(*sizes_per_node: tuple[int, ...] | list[int], cpus: float | None = None,
                  name: str = "test") -> Inventory:
    """gpu_inventory((24576,), (24576,)) -> two nodes with one 24 GB GPU each."""
    nodes = [{"name": f"n{i}", "cpus": cpus, "gpus": [{"memory_mb": mb} for mb in sizes]}
             for i, sizes in enumerate(sizes_per_node)]
    return Inventory.model_validate({"name": name, "nodes": nodes})


@pytest.fixture
def rtx3090x2() -> Inventory:
    return gpu_inventory((24576,), (24576,), name="rtx3090-2node")
