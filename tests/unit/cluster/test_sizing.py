"""Variant choice, KV cache and adapter-slot sizing of one replica."""

from __future__ import annotations

import pytest

from cluster import BaseFacts, DeploymentDemand, NoVariantFitsError, PlacementPolicy, candidate_variants, size_replica

from .conftest import demand, mistral_base

RTX3090_USABLE = 24576 - 1229  # 5% headroom


def _size(d: DeploymentDemand, policy: PlacementPolicy | None = None, capacity: int = RTX3090_USABLE, device="cuda"):
    return size_replica(d, policy or PlacementPolicy(), device=device, capacity_mb=capacity, capacity_label="gpu")


@pytest.mark.parametrize("caller_allows, policy_allows, preference, offered, expected, reason", [
    # int8 when the caller (or, when it is silent, the policy) allows quantised loads and it is offered
    (True, False, (), None, "bnb-int8", "allowed by the caller and bnb-int8 offered"),
    (None, True, (), None, "bnb-int8", "allowed by the policy"),
    # fp16 otherwise; an explicit caller "no" beats a permissive policy
    (None, False, (), None, "fp16", "not allowed by the policy"),
    (False, True, (), None, "fp16", "not allowed by the caller"),
    # quantisation allowed but int8 not offered -> fp16
    (True, False, (), {"fp16": 13825, "bnb-4bit": 3945}, "fp16", "unquantised default"),
    # the caller's preference comes first; quantised entries are dropped when not allowed
    (True, False, ("bnb-4bit", "bnb-int8"), None, "bnb-4bit", "caller's variant_preference[0]"),
    (False, False, ("bnb-4bit", "bf16"), None, "bf16", "caller's variant_preference[1]"),
    # no fp16: the manifest's preference, then the largest remaining variant
    (None, False, (), {"fp32": 27650, "bf16": 13825}, "bf16", "largest remaining"),
])
def test_variant_choice(caller_allows, policy_allows, preference, offered, expected, reason):
    base = mistral_base()
    if offered is not None:
        base = BaseFacts(ref=base.ref, approx_vram_mb=offered, kv_values_per_token=base.kv_values_per_token)
    d = demand(allow_quantized=caller_allows, variant_preference=preference)
    sizing = _size(d, PlacementPolicy(allow_quantized=policy_allows)) if offered is None else \
        _size(d.model_copy(update={"base": base}), PlacementPolicy(allow_quantized=policy_allows))
    assert sizing.variant == expected
    assert reason in sizing.variant_reason


def test_fp16_too_big_falls_back_to_a_smaller_allowed_variant_and_says_why():
    # fp16 preferred by the caller, but on a 16 GB GPU one fp16 replica with one adapter slot needs
    # 13825 + 2560 KV + 160 + 500 = 17,045 MiB > 15,564 usable.
    sizing = _size(demand(allow_quantized=True, variant_preference=("fp16",)), capacity=16384 - 820)
    assert sizing.variant == "bnb-int8"
    assert "skipped fp16 needs 17045 MiB" in sizing.variant_reason and "> 15564 MiB usable" in sizing.variant_reason


def test_nothing_fits_names_every_candidate_and_the_limit():
    with pytest.raises(NoVariantFitsError) as err:
        _size(demand(allow_quantized=False), capacity=12000)
    msg = str(err.value)
    assert "no allowed variant of base_models@v20251123-mistral-v0.3 fits" in msg and "(12000 MiB usable)" in msg
    assert "fp16 needs 17045 MiB (weights 13825 + KV 2560 + adapter 160 + context 500)" in msg
    assert "quantised ['bnb-4bit', 'bnb-int8'] not allowed" in msg


def test_only_quantised_offered_and_not_allowed_is_refused():
    base = BaseFacts(ref="b", approx_vram_mb={"bnb-int8": 100}, quantized_variants=("bnb-int8",))
    with pytest.raises(NoVariantFitsError, match=r"offers only \['bnb-int8'\].*allow_quantized is false"):
        _size(DeploymentDemand(name="x", base=base))
    assert candidate_variants(DeploymentDemand(name="x", base=base), PlacementPolicy()) == []


@pytest.mark.parametrize("policy, kv_values, variant, device, per_seq, source", [
    (PlacementPolicy(), 65536, "bnb-int8", "cuda", 320.0, "base"),            # 128 KiB x 2,560 tokens
    (PlacementPolicy(max_sequence_tokens=4096), 65536, "fp16", "cuda", 512.0, "base"),
    (PlacementPolicy(), 65536, "fp32", "cpu", 640.0, "base"),                # fp32 cache: 4 bytes a value
    (PlacementPolicy(kv_cache_mb_per_sequence=100), 65536, "fp16", "cuda", 100.0, "policy"),
    (PlacementPolicy(fallback_kv_cache_mb_per_sequence=50), None, "fp16", "cuda", 50.0, "fallback"),
])
def test_kv_cache_per_sequence(policy, kv_values, variant, device, per_seq, source):
    base = mistral_base().model_copy(update={"kv_values_per_token": kv_values})
    d = demand(base=base, variant_preference=(variant,), allow_quantized=True)
    base = base if variant in base.approx_vram_mb else base.model_copy(
        update={"approx_vram_mb": {**base.approx_vram_mb, variant: 27650}})
    sizing = _size(d.model_copy(update={"base": base}), policy, capacity=100_000, device=device)
    assert (sizing.memory.kv_mb_per_sequence, sizing.memory.kv_source) == (per_seq, source)
    assert sizing.memory.kv_cache_mb == round(per_seq * policy.max_concurrent_sequences)


@pytest.mark.parametrize("n_adapters, size_mb, cap, capacity, expected, binding", [
    (8, 160, 8, RTX3090_USABLE, 8, "policy max_num_models_per_replica"),   # cap and count tie; cap named first
    (3, 160, 8, RTX3090_USABLE, 3, "adapters served"),
    (20, 160, 4, RTX3090_USABLE, 4, "policy max_num_models_per_replica"),
    # int8 fixed part is 7175 + 2560 + 500 = 10235 MiB; 12235 usable leaves 2000 -> 2000 // 600 = 3 slots
    (8, 600, 8, 12235, 3, "memory left after weights + KV + context"),
    (0, 0, 8, RTX3090_USABLE, 1, "adapters served"),                        # no adapters: 1 slot, 0 MiB
])
def test_max_num_models_per_replica(n_adapters, size_mb, cap, capacity, expected, binding):
    d = demand(n_adapters=0, allow_quantized=True)
    from .conftest import adapters
    d = d.model_copy(update={"adapters": adapters(n_adapters, size_mb * 1024 * 1024)})
    sizing = _size(d, PlacementPolicy(max_num_models_per_replica=cap), capacity=capacity)
    assert sizing.max_num_models_per_replica == expected
    assert sizing.models_reason.startswith(f"{expected} = {binding}")
    assert sizing.memory.adapters_mb == (expected * size_mb if n_adapters else 0)
    assert sizing.memory.total_mb <= capacity


def test_a_planned_prefix_cache_is_counted_per_adapter_and_the_bare_base():
    from .conftest import adapters

    d = demand(n_adapters=0).model_copy(update={"adapters": adapters(8, 160 * 1024 * 1024)})
    # Mistral-7B fp16: 65,536 KV values a token x 2 bytes = 128 KiB; 512 tokens = 64 MiB per model, 9 models.
    sizing = _size(d, PlacementPolicy(prefix_tokens_per_model=512))
    m = sizing.memory
    assert sizing.max_num_models_per_replica == 8 and m.prefix_cache_mb == 64 * 9
    assert m.total_mb == m.weights_mb + m.kv_cache_mb + m.adapters_mb + m.context_mb + 576
    assert _size(d).memory.prefix_cache_mb is None  # not planned: the engine's own default, outside the budget
    assert _size(d, PlacementPolicy(prefix_tokens_per_model=0)).memory.prefix_cache_mb == 0  # sharing off


def test_a_planned_prefix_cache_takes_its_share_of_the_adapter_slots():
    from .conftest import adapters

    d = demand(n_adapters=0, allow_quantized=True).model_copy(update={"adapters": adapters(8, 600 * 1024 * 1024)})
    # int8: 7175 + 2560 + 500 = 10235 MiB fixed; 12235 usable leaves 2000: 3 slots of 600 MiB without a prefix
    # cache, 2 with 64 MiB per model (600 x 3 + 64 x 4 = 2056 > 2000; 600 x 2 + 64 x 3 = 1392).
    assert _size(d, capacity=12235).max_num_models_per_replica == 3
    sizing = _size(d, PlacementPolicy(prefix_tokens_per_model=512), capacity=12235)
    assert sizing.max_num_models_per_replica == 2 and sizing.memory.prefix_cache_mb == 192
    assert sizing.models_reason.startswith("2 = memory left after weights + KV + context")
    assert sizing.memory.total_mb <= 12235
