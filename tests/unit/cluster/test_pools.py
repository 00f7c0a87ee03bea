"""Per-variant base pools: which pool serves each agent, the routes between pools, and their plans."""

from __future__ import annotations

import pytest

from cluster import (AgentNeed, AppPlacement, DemandError, NoVariantFitsError, assign_pools, load_inventory,
                     placement_from_plan, plan_pools, pool_name)

from .conftest import adapters, gpu_inventory, mistral_base

# The shipped map's preferences (agent_graph/AGENT_MODEL_MAP.json), each with one 160 MiB adapter.
FULL = ("bf16", "fp16", "fp32")
MIXED = ("bf16", "fp16", "bnb-int8", "fp32")
INT8_FIRST = ("bnb-int8", "bf16", "fp16", "fp32")
MAP = {"synthesizer": (MIXED, True), "journalist": (MIXED, True), "chief_editor": (FULL, False),
       "reasoning": (MIXED, True), "critic": (FULL, False), "fact_checker": (FULL, False),
       "analyst": (INT8_FIRST, True), "re_ranker": (INT8_FIRST, True)}
NEVER_QUANTIZED = {"chief_editor", "critic", "fact_checker"}


def needs(spec=MAP):
    return [AgentNeed(agent=a, variant_preference=pref, allow_quantized=q,
                      adapters=(adapters(1)[0].model_copy(update={"ref": f"{a}/mistral_{a}_v1@current"}),))
            for a, (pref, q) in spec.items()]


def test_each_agent_lands_on_its_first_acceptable_variant_and_shares_the_pool():
    layout = assign_pools(needs(), mistral_base(), device="cuda")
    assert {p.name: set(p.agents) for p in layout.pools} == {
        "BaseLLM-bf16": {"synthesizer", "journalist", "chief_editor", "reasoning", "critic", "fact_checker"},
        "BaseLLM-bnb-int8": {"analyst", "re_ranker"}}
    assert layout.pool("BaseLLM-bnb-int8").adapters == ("analyst/mistral_analyst_v1@current",
                                                        "re_ranker/mistral_re_ranker_v1@current")


def test_a_never_quantized_agent_has_no_int8_pool_on_its_route():
    layout = assign_pools(needs(), mistral_base(), device="cuda")
    for agent, route in layout.routes.items():
        quantized = [n for n in route if layout.pool(n).quantized]
        if agent in NEVER_QUANTIZED:
            assert route == ("BaseLLM-bf16",) and not quantized
        else:
            assert route[0] == pool_name("bnb-int8" if agent in ("analyst", "re_ranker") else "bf16")
            assert len(route) == 2, "the other pool is acceptable to an agent that allows int8"


def test_a_pool_exists_only_if_some_agent_needs_it():
    only_full = {a: (FULL, False) for a in ("critic", "chief_editor")}
    layout = assign_pools(needs(only_full), mistral_base(), device="cuda")
    assert [p.name for p in layout.pools] == ["BaseLLM-bf16"]


def test_on_the_cpu_fp32_moves_ahead_of_half_precision():
    tiny = mistral_base().model_copy(update={"approx_vram_mb": {"fp32": 40, "bf16": 20, "fp16": 20, "bnb-int8": 15}})
    layout = assign_pools(needs(), tiny, device="cpu")
    assert {p.name for p in layout.pools} == {"BaseLLM-fp32", "BaseLLM-bnb-int8"}
    assert layout.routes["critic"] == ("BaseLLM-fp32",)


def test_when_full_precision_does_not_fit_agents_that_allow_int8_move_and_the_others_are_refused():
    # A 16 GB GPU: bf16 (13,825 MiB weights + 2,560 KV + 500 context + 160 adapter) exceeds 15,200 usable.
    small = gpu_inventory((16000,))
    layout, plan = plan_pools(needs({a: s for a, s in MAP.items() if a not in NEVER_QUANTIZED}), mistral_base(),
                              small)
    assert [p.name for p in layout.pools] == ["BaseLLM-bnb-int8"]
    assert plan.deployment("BaseLLM-bnb-int8").variant == "bnb-int8"
    assert "skipped bf16 needs 17045 MiB" in layout.pool("BaseLLM-bnb-int8").reason  # says why
    with pytest.raises(NoVariantFitsError, match=r"agent 'chief_editor': none of .* \(allow_quantized is false\)"):
        plan_pools(needs(), mistral_base(), small)


def test_each_pool_is_planned_from_its_own_variant_figures():
    layout, plan = plan_pools(needs(), mistral_base(), load_inventory("h200-1gpu"))
    full, int8 = plan.deployment("BaseLLM-bf16"), plan.deployment("BaseLLM-bnb-int8")
    assert full.memory.weights_mb == 13825 and int8.memory.weights_mb == 7175  # the manifest's figures
    assert full.max_num_models_per_replica == 6 and int8.max_num_models_per_replica == 2  # adapters served
    assert full.variant_reason.startswith("synthesizer: first acceptable variant")
    placement = placement_from_plan(layout, plan)
    assert placement.pools["BaseLLM-bf16"].memory_budget_mb == full.memory_budget_mb
    assert placement.pools["BaseLLM-bnb-int8"].serve_options["ray_actor_options"]["num_gpus"] == int8.num_gpus
    assert AppPlacement.model_validate(placement.model_dump(mode="json")) == placement  # JSON round trip


def test_a_layout_that_breaks_the_map_is_refused_by_name():
    layout = assign_pools(needs(), mistral_base(), device="cuda")
    broken = layout.model_copy(update={"routes": {**layout.routes, "critic": ("BaseLLM-bnb-int8",)}})
    with pytest.raises(DemandError, match=r"agent 'critic' may not use pool 'BaseLLM-bnb-int8' \(bnb-int8\)"):
        broken.check_against(needs())
    with pytest.raises(ValueError, match="names unknown pools"):
        layout.model_copy(update={"routes": {"critic": ("BaseLLM-fp16",)}}).__class__.model_validate(
            {"pools": [p.model_dump() for p in layout.pools], "routes": {"critic": ["BaseLLM-fp16"]}})


def test_when_the_preferred_pools_do_not_fit_together_every_agent_shares_one_they_all_accept():
    # One RTX 3090: bf16 (17,845 MiB) + bnb-int8 (10,555 MiB) > 23,347 MiB usable, but one bf16 pool fits.
    layout, plan = plan_pools(needs(), mistral_base(), load_inventory("rtx3090-1gpu"))
    assert [p.name for p in layout.pools] == ["BaseLLM-bf16"] and set(layout.pools[0].agents) == set(MAP)
    assert "do not fit rtx3090-1gpu together" in layout.pools[0].reason
    assert all(route == ("BaseLLM-bf16",) for route in layout.routes.values())
    assert plan.deployment("BaseLLM-bf16").max_num_models_per_replica == 8
    only_int8 = {"analyst": (("bnb-int8",), True), "critic": (FULL, False)}  # no variant both accept
    with pytest.raises(Exception, match="cannot hold every min_replicas"):
        plan_pools(needs(only_int8), mistral_base(), gpu_inventory((20000,)))


def test_two_replicas_per_pool_when_memory_allows_and_one_where_it_does_not():
    from cluster import PlacementPolicy

    policy = PlacementPolicy(preferred_min_replicas=2)
    _, a100 = plan_pools(needs(), mistral_base(), load_inventory("a100-80gb-1gpu"), policy)
    assert {d.name: (d.min_replicas, d.max_replicas) for d in a100.deployments} == {
        "BaseLLM-bf16": (2, 3), "BaseLLM-bnb-int8": (2, 2)}  # 2 x 17,845 + 2 x 10,555 fit 77,824; one more bf16
    _, rtx = plan_pools(needs(), mistral_base(), load_inventory("rtx3090-1gpu"), policy)
    assert [(d.name, d.min_replicas, d.max_replicas) for d in rtx.deployments] == [("BaseLLM-bf16", 1, 1)]
