"""The planner: Mistral-7B on real inventories, refusals with numbers, CPU mode, and a packing property."""

from __future__ import annotations

import itertools
import random

import pytest

from cluster import (BaseFacts, CapacityError, DemandError, DeploymentDemand, NoVariantFitsError, PlacementPolicy,
                     Plan, load_inventory, plan)
from cluster.packing import GPU_UNITS

from .conftest import demand, gpu_inventory, mistral_base

TINY = BaseFacts(ref="base_models@v1-tiny-mistral", approx_vram_mb={"fp32": 40, "bf16": 20, "fp16": 20,
                 "bnb-int8": 12, "bnb-4bit": 9}, quantized_variants=("bnb-int8", "bnb-4bit"), kv_values_per_token=2048)


def check_plan(p: Plan, inventory, demands) -> None:
    """The invariants every plan must hold, whatever the inputs."""
    policy = p.policy
    gpus = {(n.name, g.index): g.memory_mb for n, g in inventory.gpus}
    nodes = {n.name: n for n in inventory.nodes}
    for b in p.bins:
        total = gpus[(b.node, b.gpu)] if b.gpu is not None else nodes[b.node].memory_mb
        placed = [pl for pl in p.placements if (pl.node, pl.gpu) == (b.node, b.gpu)]
        # never more memory than the GPU (node) less headroom, and never more than 1.0 GPU in Ray's eyes
        assert sum(pl.memory_mb for pl in placed) == b.used_mb <= total - policy.headroom_for(total)
        if b.gpu is not None:
            fractions = sum(p.deployment(pl.deployment).num_gpus for pl in placed)
            assert fractions <= 1.0 + 1e-9
            # any GPU Ray picks is at least as large as the basis, so a fraction covers the replica's memory
            assert all(p.deployment(pl.deployment).num_gpus * p.basis_mb >= pl.memory_mb for pl in placed)
        if nodes[b.node].cpus is not None:
            assert len([pl for pl in p.placements if pl.node == b.node]) * policy.num_cpus_per_replica \
                <= nodes[b.node].cpus + 1e-9
    for d, want in zip(p.deployments, demands):
        mine = [pl for pl in p.placements if pl.deployment == d.name]
        assert len(mine) == d.max_replicas >= max(1, want.min_replicas)
        # Hard minimums always; soft ones (preferred_min_replicas) where they fit, never for scale-to-zero.
        assert sum(pl.minimum for pl in mine) == d.min_replicas >= want.min_replicas
        soft = min(policy.preferred_min_replicas, want.max_replicas or 10**9) if want.min_replicas else 0
        assert d.min_replicas <= max(want.min_replicas, soft)
        assert want.max_replicas is None or d.max_replicas <= want.max_replicas
        assert d.memory.total_mb == d.memory_budget_mb == mine[0].memory_mb
    # max_replicas is maximal: no deployment below its cap could get one more replica anywhere
    free = {(b.node, b.gpu): GPU_UNITS - round(b.gpu_fraction_used * GPU_UNITS) if b.gpu is not None
            else b.usable_mb - b.used_mb for b in p.bins}
    for d, want in zip(p.deployments, demands):
        if want.max_replicas is None or d.max_replicas < want.max_replicas:
            need = round(d.num_gpus * GPU_UNITS) if d.num_gpus is not None else d.memory.total_mb
            roomy = [k for k, f in free.items() if f >= need]
            cpu_ok = [k for k in roomy if nodes[k[0]].cpus is None or policy.num_cpus_per_replica
                      * (1 + len([pl for pl in p.placements if pl.node == k[0]])) <= nodes[k[0]].cpus]
            per_gpu_ok = [k for k in cpu_ok if policy.max_replicas_per_gpu is None
                          or len([pl for pl in p.placements if (pl.node, pl.gpu) == k]) < policy.max_replicas_per_gpu]
            assert not per_gpu_ok, f"{d.name} could still fit on {per_gpu_ok}"


# -- Mistral-7B-Instruct-v0.3 (real VRAM metadata) on two 24 GB RTX 3090 nodes ---------------------------

@pytest.mark.parametrize("policy_kwargs, preference, variant, per_gpu, replica_mb", [
    # default policy: 8 sequences x 320 MiB KV, 8 adapters x 160 MiB, 500 MiB context
    ({}, ("bnb-int8",), "bnb-int8", 2, 7175 + 2560 + 1280 + 500),
    ({}, ("fp16",), "fp16", 1, 13825 + 2560 + 1280 + 500),
    ({}, ("bnb-4bit",), "bnb-4bit", 2, 3945 + 2560 + 1280 + 500),
    # 4 sequences: nf4 packs more replicas than int8, which packs more than fp16
    ({"max_concurrent_sequences": 4}, ("bnb-int8",), "bnb-int8", 2, 7175 + 1280 + 1280 + 500),
    ({"max_concurrent_sequences": 4}, ("fp16",), "fp16", 1, 13825 + 1280 + 1280 + 500),
    ({"max_concurrent_sequences": 4}, ("bnb-4bit",), "bnb-4bit", 3, 3945 + 1280 + 1280 + 500),
])
def test_mistral_7b_on_rtx3090(rtx3090x2, policy_kwargs, preference, variant, per_gpu, replica_mb):
    demands = [demand(allow_quantized=True, variant_preference=preference)]
    p = plan(rtx3090x2, demands, PlacementPolicy(**policy_kwargs))
    d = p.deployment("BaseLLM")
    assert (d.variant, d.memory.total_mb) == (variant, replica_mb)
    assert d.max_replicas == 2 * per_gpu and d.min_replicas == 1
    assert all(len(b.replicas) == per_gpu for b in p.bins)
    assert d.ray_actor_options["num_gpus"] == pytest.approx(replica_mb / (24576 - 1229), abs=1e-4)
    check_plan(p, rtx3090x2, demands)


def test_mistral_default_rule_on_bundled_inventories():
    d = demand(allow_quantized=True)
    p3090 = plan(load_inventory("rtx3090-2node"), [d])
    ph200 = plan(load_inventory("h200-1gpu"), [d])
    assert p3090.deployment("BaseLLM").variant == ph200.deployment("BaseLLM").variant == "bnb-int8"
    assert (p3090.deployment("BaseLLM").max_replicas, ph200.deployment("BaseLLM").max_replicas) == (4, 11)
    assert plan(load_inventory("rtx3090-2node"), [demand()]).deployment("BaseLLM").variant == "fp16"


def test_deployment_options_are_exactly_the_basellm_settings(rtx3090x2):
    d = plan(rtx3090x2, [demand(allow_quantized=True, min_replicas=2)]).deployment("BaseLLM")
    opts = d.deployment_options()
    assert set(opts) == {"autoscaling_config", "max_ongoing_requests", "ray_actor_options",
                         "max_num_models_per_replica", "user_config"}
    policy = opts["autoscaling_config"].pop("policy")
    assert opts["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 4, "target_ongoing_requests": 8.0}
    assert policy["policy_kwargs"] == {"budget_mb": 11515, "reserved_mb": [2 * 11515, 2 * 11515],
                                       "headroom_mb": 0, "headroom_fraction": 0.05}
    assert opts["max_ongoing_requests"] == 16 and opts["max_num_models_per_replica"] == 8
    assert opts["user_config"] == {"max_batch_size": 8, "max_num_models_per_replica": 8}
    assert opts["ray_actor_options"]["num_cpus"] == 1.0 and "memory" not in opts["ray_actor_options"]
    assert opts["ray_actor_options"]["runtime_env"] == {"env_vars": {
        "JUSTNEWS_REPLICA_BUDGET_MB": "11515", "JUSTNEWS_REPLICA_CONTEXT_MB": str(d.memory.context_mb)}}


# -- refusals ------------------------------------------------------------------------------------------

def test_min_replicas_beyond_capacity_is_refused_with_numbers(rtx3090x2):
    with pytest.raises(CapacityError) as err:
        plan(rtx3090x2, [demand(variant_preference=("fp16",), min_replicas=3)])
    msg = str(err.value)
    assert "cannot hold every min_replicas: placed 2 of 3" in msg
    assert "BaseLLM min_replicas (3) x 18165 MiB [at most 2 fit alone]" in msg
    assert "together 54495 MiB against 46694 MiB usable" in msg


def test_minimums_of_several_deployments_must_fit_together(rtx3090x2):
    demands = [demand("A", allow_quantized=True, min_replicas=3), demand("B", variant_preference=("fp16",))]
    with pytest.raises(CapacityError, match=r"A min_replicas \(3\) x 11515 MiB.*B min_replicas \(1\) x 18165 MiB"):
        plan(rtx3090x2, demands)


def test_a_deployment_that_gets_no_replica_is_refused(rtx3090x2):
    demands = [demand("A", variant_preference=("fp16",), min_replicas=2), demand("B", min_replicas=0)]
    with pytest.raises(CapacityError, match=r"B: not one replica \(18165 MiB\) fits beside"):
        plan(rtx3090x2, demands)


def test_small_gpu_falls_back_to_nf4_when_allowed_and_refuses_otherwise():
    small = gpu_inventory((8192,))
    d = plan(small, [demand(allow_quantized=True)]).deployment("BaseLLM")
    assert d.variant == "bnb-4bit" and "skipped bnb-int8 needs 10395 MiB" in d.variant_reason
    assert d.max_num_models_per_replica == 4  # 7782 usable - (3945 + 2560 + 500) leaves 777 MiB = 4 slots
    with pytest.raises(NoVariantFitsError, match=r"smallest GPU \(n0:gpu0, 8192 MiB\) \(7782 MiB usable\).*"
                                                 r"fp16 needs 17045 MiB"):
        plan(small, [demand(allow_quantized=False)])


@pytest.mark.parametrize("demands, message", [
    ([], "no deployments"),
    ([demand("A"), demand("A")], "must be unique"),
])
def test_bad_demand_sets(demands, message, rtx3090x2):
    with pytest.raises(DemandError, match=message):
        plan(rtx3090x2, demands)


@pytest.mark.parametrize("kwargs, message", [
    ({"min_replicas": 3, "max_replicas": 2}, r"max_replicas \(2\) must be >= min_replicas \(3\)"),
])
def test_demand_rules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        demand(**kwargs)


# -- sharing, caps and CPU mode -----------------------------------------------------------------------

def test_spare_capacity_is_shared_round_robin():
    inv = load_inventory("h200-1gpu")
    demands = [demand("A", allow_quantized=True), demand("B", allow_quantized=True), demand("C", base=TINY)]
    p = plan(inv, demands)
    a, b, c = (p.deployment(n).max_replicas for n in "ABC")
    assert (a, b, c) == (6, 5, 5)  # one more each per round; the last round only A still fits
    check_plan(p, inv, demands)


def test_operator_max_replicas_and_per_gpu_limit_are_honoured():
    inv = load_inventory("h200-1gpu")
    assert plan(inv, [demand(allow_quantized=True, max_replicas=3)]).deployment("BaseLLM").max_replicas == 3
    p = plan(inv, [demand(allow_quantized=True)], PlacementPolicy(max_replicas_per_gpu=4))
    assert p.deployment("BaseLLM").max_replicas == 4 and p.deployment("BaseLLM").num_gpus == 0.25


def test_cpu_only_inventory_gets_memory_requests():
    inv = load_inventory("cpu-only")
    demands = [DeploymentDemand(name="BaseLLM", base=TINY, min_replicas=2)]
    p = plan(inv, demands, PlacementPolicy(num_cpus_per_replica=2))
    d = p.deployment("BaseLLM")
    assert p.device == d.device == "cpu" and d.num_gpus is None
    assert d.ray_actor_options["memory"] == d.memory.total_mb * 1024 * 1024 == d.memory_bytes
    assert d.ray_actor_options["num_cpus"] == 2 and "num_gpus" not in d.ray_actor_options
    assert d.memory.context_mb == p.policy.cpu_process_overhead_mb
    assert d.max_replicas == 8  # 8 CPUs per node / 2 per replica, on 2 nodes: CPUs, not memory, bind
    check_plan(p, inv, demands)


def test_mixed_gpu_sizes_use_the_smallest_as_basis():
    inv = gpu_inventory((24576,), (81920,))
    p = plan(inv, [demand(allow_quantized=True)])
    assert p.basis_mb == 24576 - 1229 and p.basis_label.startswith("the smallest GPU (n0:gpu0")
    check_plan(p, inv, [demand(allow_quantized=True)])


# -- property: whatever the mix, no GPU (node) is ever overcommitted -----------------------------------

INVENTORIES = [
    gpu_inventory((24576,), (24576,)),
    gpu_inventory((143771,)),
    gpu_inventory((24576, 24576), (49152,), cpus=3),
    gpu_inventory((16384,) * 4, (81920,)),
    load_inventory("cpu-only"),
]
POLICIES = [PlacementPolicy(), PlacementPolicy(headroom_mb=2048, max_concurrent_sequences=4),
            PlacementPolicy(allow_quantized=True, max_num_models_per_replica=2, max_replicas_per_gpu=3),
            PlacementPolicy(preferred_min_replicas=2, max_concurrent_sequences=4)]
MIXES = [
    [demand("A")],
    [demand("A", allow_quantized=True, min_replicas=2), demand("B", base=TINY, min_replicas=0)],
    [demand("A", variant_preference=("fp16",)), demand("B", allow_quantized=True, max_replicas=2),
     demand("C", base=TINY, n_adapters=2, min_replicas=3)],
]


def _random_demands(rng: random.Random) -> list[DeploymentDemand]:
    out = []
    for i in range(rng.randint(1, 4)):
        base = rng.choice([mistral_base(), TINY])
        out.append(demand(f"D{i}", base=base, n_adapters=rng.randint(0, 10), allow_quantized=rng.choice([None, True]),
                          variant_preference=rng.choice([(), ("fp16",), ("bnb-4bit",)]),
                          min_replicas=rng.randint(0, 2), max_replicas=rng.choice([None, None, 5])))
    return out


def _check_or_refused(inventory, demands, policy) -> bool:
    try:
        p = plan(inventory, demands, policy)
    except (CapacityError, NoVariantFitsError):
        return False
    check_plan(p, inventory, demands)
    return True


@pytest.mark.parametrize("inventory, policy, demands", list(itertools.product(INVENTORIES, POLICIES, MIXES)))
def test_packing_never_overcommits_grid(inventory, policy, demands):
    _check_or_refused(inventory, demands, policy)


def test_packing_never_overcommits_random():
    rng = random.Random(20251123)
    planned = sum(_check_or_refused(rng.choice(INVENTORIES), _random_demands(rng), rng.choice(POLICIES))
                  for _ in range(300))
    assert planned > 150  # most random mixes are plannable, so the invariants were really exercised
