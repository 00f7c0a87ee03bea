"""Inventory models, YAML loading, and discovery from ray.nodes() entries (with a stand-in ray module)."""

from __future__ import annotations

import sys
import types

import pytest
import yaml

from cluster import (GPU_MEMORY_LABEL, GPU_MEMORY_RESOURCE, Inventory, InventoryError, bundled_inventories,
                     discover_from_ray, inventory_from_ray_nodes, load_inventory)


@pytest.mark.parametrize("name, nodes, gpus, gpu_mb, has_gpus", [
    ("h200-1gpu", 1, 1, 143771, True),
    ("rtx3090-2node", 2, 2, 24576, True),
    ("cpu-only", 2, 0, None, False),
])
def test_bundled_inventories(name, nodes, gpus, gpu_mb, has_gpus):
    inv = load_inventory(name)
    assert name in bundled_inventories()
    assert (len(inv.nodes), len(inv.gpus), inv.has_gpus) == (nodes, gpus, has_gpus)
    assert all(g.memory_mb == gpu_mb for _, g in inv.gpus)
    if not has_gpus:
        assert all(n.memory_mb == 32 * 1024 and n.cpus == 8 for n in inv.nodes)


def test_shorthand_and_list_forms_are_the_same():
    short = Inventory.model_validate({"nodes": [{"name": "a", "memory_gb": 2, "gpu_count": 2, "gpu_memory_mb": 100}]})
    full = Inventory.model_validate({"nodes": [{"name": "a", "memory_mb": 2048,
                                                "gpus": [{"memory_mb": 100}, {"index": 1, "memory_mb": 100}]}]})
    assert short == full


@pytest.mark.parametrize("nodes, message", [
    ([], "at least 1"),
    ([{"name": "a", "memory_mb": 1}, {"name": "a", "memory_mb": 1}], "repeated: ['a']"),
    ([{"name": "a", "memory_gb": 1, "memory_mb": 1024}], "memory_gb or memory_mb"),
    ([{"name": "a", "cpus": 4}], "no GPUs and no memory_mb"),
    ([{"name": "a", "gpu_count": 2}], "go together"),
    ([{"name": "a", "gpus": [{"memory_mb": 1}], "gpu_count": 1, "gpu_memory_mb": 1}], "not both"),
    ([{"name": "a", "gpus": [{"index": 0, "memory_mb": 1}, {"index": 0, "memory_mb": 1}]}], "GPU index twice"),
    ([{"name": "a", "gpus": [{"memory_mb": 0}]}], "greater than 0"),
])
def test_invalid_inventories_are_refused(nodes, message):
    with pytest.raises(ValueError) as err:
        Inventory.model_validate({"nodes": nodes})
    assert message in str(err.value)


def test_load_inventory_errors(tmp_path):
    with pytest.raises(InventoryError, match="neither a file nor one of"):
        load_inventory(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [{name: a}]\n")
    with pytest.raises(InventoryError, match="(?s)bad.yaml.*no GPUs and no memory_mb"):
        load_inventory(bad)


def test_inventory_round_trips_through_yaml(tmp_path):
    inv = load_inventory("rtx3090-2node")
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(inv.model_dump(mode="json")))
    assert load_inventory(path) == inv


def _ray_node(name, gpus=0, labels=None, alive=True, **resources):
    res = {"CPU": 8.0, "memory": 16 * 1024**3, **({"GPU": float(gpus)} if gpus else {}), **resources}
    return {"NodeID": name * 4, "NodeName": name, "Alive": alive, "Resources": res, "Labels": labels or {}}


def test_inventory_from_ray_nodes_conventions():
    nodes = [
        _ray_node("labelled", gpus=1, labels={GPU_MEMORY_LABEL: "24576"}),
        _ray_node("resource", gpus=2, **{GPU_MEMORY_RESOURCE: 2 * 81920}),
        _ray_node("fallback", gpus=1),
        _ray_node("cpu"),
        _ray_node("dead", gpus=1, alive=False),
    ]
    inv = inventory_from_ray_nodes(nodes, gpu_memory_mb=16384)
    mem = {n.name: [g.memory_mb for g in n.gpus] for n in inv.nodes}
    assert mem == {"labelled": [24576], "resource": [81920, 81920], "fallback": [16384], "cpu": []}
    assert inv.nodes[3].memory_mb == 16 * 1024 and inv.nodes[3].cpus == 8.0


def test_inventory_from_ray_nodes_refuses_gpu_node_without_memory():
    with pytest.raises(InventoryError, match=f"node mystery has 1 GPU.*{GPU_MEMORY_LABEL}"):
        inventory_from_ray_nodes([_ray_node("mystery", gpus=1)])
    with pytest.raises(InventoryError, match="no alive node"):
        inventory_from_ray_nodes([_ray_node("dead", alive=False)])


def test_discover_from_ray_uses_ray_nodes_and_disconnects(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(
        is_initialized=lambda: False,
        init=lambda **kw: calls.append(("init", kw["address"])),
        nodes=lambda: [_ray_node("h200", gpus=1, labels={GPU_MEMORY_LABEL: "143771"})],
        shutdown=lambda: calls.append(("shutdown",)),
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    inv = discover_from_ray()
    assert [g.memory_mb for _, g in inv.gpus] == [143771]
    assert calls == [("init", "auto"), ("shutdown",)]
