"""The issue's planner table, with every expected number worked out by hand from the Mistral-7B metadata.

Default policy: headroom 5% of each GPU (rounded up to whole MiB), 500 MiB CUDA context, KV cache for 8
sequences of 2,560 tokens at 128 KiB/token in 16 bits = 8 x 320 = 2,560 MiB, 8 adapters of 160 MiB.
Weights (modelstore/metadata/mistral-7b-instruct-v0.3.json): fp16 13,825, bnb-int8 7,175, bnb-4bit 3,945.

    int8 replica = 7175 + 2560 + 500 + 8 x 160 = 11,515 MiB
    fp16 replica = 13825 + 2560 + 500 + 8 x 160 = 18,165 MiB
"""

import pytest

from cluster import BaseFacts, CapacityError, PlacementPolicy, plan
from cluster.errors import NoVariantFitsError
from tests.unit.cluster.conftest import MISTRAL_KV_VALUES, adapters, demand, gpu_inventory

GB24, GB80, GB141 = 24576, 81920, 141 * 1024
INT8, FP16 = 11515, 18165


@pytest.mark.parametrize("gpus, allow_q, variant, replica_mb, usable_mb, max_replicas", [
    # 24 GB: usable 24576 - ceil(1228.8) = 23347; int8 fits 23347 // 11515 = 2, fp16 23347 // 18165 = 1
    ((GB24,), True, "bnb-int8", INT8, 23347, 2),
    ((GB24,), False, "fp16", FP16, 23347, 1),
    # 80 GB: usable 81920 - 4096 = 77824; int8 77824 // 11515 = 6 (7 x 11515 = 80605 > 77824); fp16 4
    ((GB80,), True, "bnb-int8", INT8, 77824, 6),
    ((GB80,), False, "fp16", FP16, 77824, 4),
    # 8 x 141 GB: usable 144384 - ceil(7219.2) = 137164 each; int8 11 per GPU (12 x 11515 = 138180), fp16 7
    ((GB141,) * 8, True, "bnb-int8", INT8, 137164, 88),
    ((GB141,) * 8, False, "fp16", FP16, 137164, 56),
])
def test_mistral_table(gpus, allow_q, variant, replica_mb, usable_mb, max_replicas):
    inventory = gpu_inventory(gpus)
    d = plan(inventory, [demand(allow_quantized=allow_q)]).deployment("BaseLLM")
    assert d.variant == variant
    assert d.memory.total_mb == replica_mb
    assert d.max_replicas == max_replicas and d.min_replicas == 1
    assert d.max_num_models_per_replica == 8
    assert d.num_gpus == pytest.approx(replica_mb / usable_mb, abs=1e-4)


def test_variant_missing_from_the_manifest_falls_back_to_fp16():
    base = BaseFacts(ref="base_models@no-int8", approx_vram_mb={"fp16": 13825, "bnb-4bit": 3945},
                     quantized_variants=["bnb-4bit"], kv_values_per_token=MISTRAL_KV_VALUES)
    d = plan(gpu_inventory((GB24,)), [demand(base=base, allow_quantized=True)]).deployment("BaseLLM")
    # bnb-int8 is preferred when quantised loads are allowed, but this manifest lacks it: fp16 fits (18,165)
    assert (d.variant, d.memory.total_mb, d.max_replicas) == ("fp16", FP16, 1)


def test_inventory_too_small_is_refused_with_the_numbers():
    # 16 GB: usable 16384 - ceil(819.2) = 15564; fp16 needs 13825 + 2560 + 500 + one 160 MiB adapter = 17045
    with pytest.raises(NoVariantFitsError) as err:
        plan(gpu_inventory((16384,)), [demand(allow_quantized=False)])
    assert "17045" in str(err.value) and "15564" in str(err.value)


def test_min_replicas_that_cannot_fit_are_refused():
    with pytest.raises(CapacityError) as err:
        plan(gpu_inventory((GB24,)), [demand(allow_quantized=True, min_replicas=3)])
    assert "min_replicas (3)" in str(err.value) and str(INT8) in str(err.value)


def test_adapters_that_do_not_all_fit_shrink_the_lru():
    # fp16 with 8 adapters of 1 GiB on 24 GB: (23347 - 13825 - 2560 - 500) // 1024 = 6 resident adapters,
    # so the replica is 16885 + 6 x 1024 = 23029 MiB and the multiplexing LRU holds 6, not 8.
    big = demand(allow_quantized=False)
    big = big.model_copy(update={"adapters": adapters(8, size_bytes=1024 * 1024 * 1024)})
    d = plan(gpu_inventory((GB24,)), [big]).deployment("BaseLLM")
    assert (d.max_num_models_per_replica, d.memory.total_mb) == (6, 16885 + 6 * 1024)
    assert "memory left" in d.models_reason


def test_policy_knobs_change_the_numbers_as_computed():
    # 4 sequences: KV 4 x 320 = 1280; int8 replica 7175 + 1280 + 500 + 1280 = 10235; 23347 // 10235 = 2
    d = plan(gpu_inventory((GB24,)), [demand(allow_quantized=True)],
             PlacementPolicy(max_concurrent_sequences=4)).deployment("BaseLLM")
    assert (d.memory.total_mb, d.max_replicas) == (10235, 2)
