"""The newsreader's vision pool beside the text pools, every expected figure worked out by hand.

LLaVA-NeXT on Mistral-7B (modelstore/metadata/llava-v1.6-mistral-7b-hf.json; VRAM computed from parameter
counts, not measured): fp16 14,433 MiB, bnb-int8 7,782, bnb-4bit 4,555. Its language model has Mistral-7B's
shape, so 65,536 KV values per token (2 x 32 layers x 8 KV heads x 128) = 128 KiB/token in 16 bits, and an
r=16 LoRA on its 7 projections is 160 MiB, as each text agent's. One image costs at most 2,928 prompt tokens
and a request carries at most one. The newsreader accepts bf16, fp16, fp32, bnb-int8 (the map's preference);
LLaVA-NeXT offers no fp32, and bf16 weighs what fp16 does.

Default policy: 8 sequences of 2,560 tokens (2,048 prompt + 512 reply), 500 MiB CUDA context, 5% headroom;
num_gpus = ceil(replica MiB x 10,000 / usable MiB of the smallest GPU) / 10,000.

* Vision KV per sequence: (2,560 + 1 x 2,928) tokens x 128 KiB = 5,488 x 128 KiB = 686 MiB; x 8 = 5,488 MiB.
* BaseLLM-llava_next-bf16 = 14,433 + 5,488 + 1 x 160 + 500 = 20,581 MiB
  (bnb-int8 would be 7,782 + 5,488 + 160 + 500 = 13,930).
* The text pools as in test_switch_base: BaseLLM-bf16 (6 agents) 13,825 + 2,560 + 6 x 160 + 500 = 17,845;
  BaseLLM-bnb-int8 (analyst, re_ranker) 7,175 + 2,560 + 2 x 160 + 500 = 10,555; one bf16 pool of all eight
  13,825 + 2,560 + 8 x 160 + 500 = 18,165.

Per inventory:

* 1x RTX 3090 (usable 24,576 - ceil(1,228.8) = 23,347): 17,845 + 10,555 + 20,581 = 48,981 do not fit; rule 4
  merges the text base's pools into one bf16 pool of 18,165, but 18,165 + 20,581 = 38,746 > 23,347: refused.
  (A newsreader on bnb-int8 would not fit either: 18,165 + 13,930 = 32,095.)
* 2x RTX 3090 (one per node): units bf16 ceil(7,643.4) = 7,644, int8 ceil(4,520.9) = 4,521, vision
  ceil(8,815.3) = 8,816. Minimums largest first: vision on gpu0 (1,184 units left), bf16 on gpu1 (2,356 left),
  int8 fits neither. Rule 4 on the text base alone: one bf16 pool, ceil(7,780.4) = 7,781 units, on gpu1.
  BaseLLM-bf16 (8 agents) 0.7781 1..1, BaseLLM-llava_next-bf16 0.8816 1..1.
* 1x A100 80 GB (usable 81,920 - 4,096 = 77,824): units bf16 ceil(2,292.99) = 2,293, int8 ceil(1,356.3) = 1,357,
  vision ceil(2,644.6) = 2,645. Minimums 2,645 + 2,293 + 1,357 = 6,295; round-robin in pool order: bf16 (8,588),
  int8 (9,945), vision (12,590 > 10,000: stops), bf16 (11,881: stops), int8 (11,302: stops).
  bf16 1..2, int8 1..2, vision 1..1.
* 8x H200 (usable 143,771 - ceil(7,188.55) = 136,582 each): units bf16 ceil(1,306.5) = 1,307 (B), int8
  ceil(772.8) = 773 (I), vision ceil(1,506.9) = 1,507 (V). The minimums V B I go to gpu0; then round-robin
  B I V, each on the fullest GPU it fits (best fit), fills the GPUs in a cycle of three:
  gpu0, 3, 6: 3 B + 3 I + 2 V = 3,921 + 2,319 + 3,014 = 9,254 units (746 left);
  gpu1, 4, 7: 3 B + 2 I + 3 V = 3,921 + 1,546 + 4,521 = 9,988 (12 left);
  gpu2, 5:    2 B + 3 I + 3 V = 2,614 + 2,319 + 4,521 = 9,454 (546 left).
  Nothing more fits anywhere (the smallest replica is 773 units): B = 3 x 3 + 3 x 3 + 2 x 2 = 22,
  I = 3 x 3 + 2 x 3 + 3 x 2 = 21, V = 2 x 3 + 3 x 3 + 3 x 2 = 21.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelstore
from cluster import (AdapterFacts, AgentNeed, AppPlacement, BaseFacts, CapacityError, DemandError, assign_pools,
                     load_inventory, placement_from_plan, plan_pools, pool_name)
from cluster.pools import base_name, is_pool_name

from .conftest import ADAPTER_160MB, MISTRAL_KV_VALUES, mistral_base
from .test_pools import MAP
from . import newsreader

LLAVA_METADATA = Path(modelstore.__file__).parent / "metadata" / "llava-v1.6-mistral-7b-hf.json"
LLAVA_REF = "base_models/llava_next@v20251201-llava-v1.6-mistral"
TEXT_REF = mistral_base().ref
VISION = "BaseLLM-llava_next-bf16"
NEWSREADER = (("bf16", "fp16", "fp32", "bnb-int8"), True)  # the shipped map's entry (checked below)


def llava_base() -> BaseFacts:
    meta = json.loads(LLAVA_METADATA.read_text())
    return BaseFacts(ref=LLAVA_REF, approx_vram_mb=meta["approx_vram_mb"],
                     quantized_variants=meta["quantized_variants"], variant_preference=meta["variant_preference"],
                     kv_values_per_token=MISTRAL_KV_VALUES, tokens_per_image=meta["vision"]["tokens_per_image"],
                     max_images_per_request=meta["vision"]["max_images_per_request"])


def _need(agent: str, pref, quantized: bool, base: str) -> AgentNeed:
    adapter = AdapterFacts(ref=f"{agent}/{agent}_v1@current", size_bytes=ADAPTER_160MB)
    return AgentNeed(agent=agent, variant_preference=pref, allow_quantized=quantized, adapters=(adapter,), base=base)


def needs(newsreader_pref=NEWSREADER):
    text = [_need(a, pref, q, TEXT_REF) for a, (pref, q) in MAP.items()]
    return text + [_need("newsreader", *newsreader_pref, LLAVA_REF)]


BASES = {TEXT_REF: mistral_base(), LLAVA_REF: llava_base()}


@pytest.mark.parametrize("variant, base, name, named", [
    ("bf16", None, "BaseLLM-bf16", None),
    ("bnb-int8", "base_models@v1-tiny-mistral", "BaseLLM-bnb-int8", None),  # the text base: names as before
    ("fp32", "base_models/llava_tiny@v1-tiny-llava", "BaseLLM-llava_tiny-fp32", "llava_tiny"),
    ("bnb-4bit", "base_models/llava_next@current", "BaseLLM-llava_next-bnb-4bit", "llava_next"),
])
def test_a_pool_is_named_by_its_base_and_variant(variant, base, name, named):
    assert pool_name(variant, base) == name and is_pool_name(name)
    assert base_name(base) == named


@pytest.mark.parametrize("name", ["BaseLLM", "BaseLLM-fp8", "BaseLLM-Llava-fp16", "BaseLLM-llava-tiny-fp16", "X-bf16"])
def test_other_names_are_not_pool_names(name):
    assert not is_pool_name(name)


def test_the_vision_replica_holds_its_image_tokens_in_the_kv_cache():
    _, plan = plan_pools(needs(), BASES, load_inventory("a100-80gb-1gpu"))
    m = plan.deployment(VISION).memory
    assert (m.weights_mb, m.kv_mb_per_sequence, m.image_tokens, m.kv_cache_mb, m.adapters_mb, m.context_mb) == \
        (14433, 686.0, 2928, 5488, 160, 500)
    assert m.total_mb == 20581 and plan.deployment(VISION).base_ref == LLAVA_REF
    text = plan.deployment("BaseLLM-bf16").memory  # the text base's sequences hold no image tokens
    assert (text.image_tokens, text.kv_cache_mb, text.total_mb) == (0, 2560, 17845)


@pytest.mark.parametrize("inventory, expected", [
    ("a100-80gb-1gpu", {"BaseLLM-bf16": (17845, 0.2293, 1, 2), "BaseLLM-bnb-int8": (10555, 0.1357, 1, 2),
                        VISION: (20581, 0.2645, 1, 1)}),
    ("h200-8gpu", {"BaseLLM-bf16": (17845, 0.1307, 1, 22), "BaseLLM-bnb-int8": (10555, 0.0773, 1, 21),
                   VISION: (20581, 0.1507, 1, 21)}),
    ("rtx3090-2node", {"BaseLLM-bf16": (18165, 0.7781, 1, 1), VISION: (20581, 0.8816, 1, 1)}),
])
def test_llava_next_table(inventory, expected):
    layout, plan = plan_pools(needs(), BASES, load_inventory(inventory))
    got = {d.name: (d.memory.total_mb, d.num_gpus, d.min_replicas, d.max_replicas) for d in plan.deployments}
    assert got == expected
    assert [p.name for p in layout.pools][-1] == VISION  # the text base's pools first
    assert layout.routes["newsreader"] == (VISION,)
    assert all(VISION not in route for agent, route in layout.routes.items() if agent != "newsreader")
    assert layout.pool(VISION).reason == "newsreader: first acceptable variant"


def test_rule_four_merges_the_text_pools_and_leaves_the_vision_pool_alone():
    layout, _ = plan_pools(needs(), BASES, load_inventory("rtx3090-2node"))
    text = layout.pool("BaseLLM-bf16")
    assert set(text.agents) == set(MAP) and "do not fit rtx3090-2node together" in text.reason
    assert {a: r for a, r in layout.routes.items() if a != "newsreader"} == {a: ("BaseLLM-bf16",) for a in MAP}


def test_one_rtx3090_cannot_hold_the_newsreader_beside_the_text_pool():
    with pytest.raises(CapacityError, match=r"BaseLLM-llava_next-bf16 min_replicas \(1\) x 20581 MiB.*together "
                                            r"48981 MiB against 23347 MiB usable"):
        plan_pools(needs(), BASES, load_inventory("rtx3090-1gpu"))
    with pytest.raises(CapacityError, match=r"BaseLLM-llava_next-bnb-int8 min_replicas \(1\) x 13930 MiB"):
        plan_pools(needs((("bnb-int8",), True)), BASES, load_inventory("rtx3090-1gpu"))  # 18,165 + 13,930 too


def test_an_agent_routes_only_to_pools_of_its_own_base():
    # Two vision agents on two variants: each has the other's pool on its route, never a text pool; the
    # text agents never have a vision pool, even one of a variant they accept.
    extra = _need("pagereader", ("bnb-int8", "bf16"), True, LLAVA_REF)
    layout = assign_pools([*needs(), extra], BASES, device="cuda")
    assert layout.routes["newsreader"] == (VISION, "BaseLLM-llava_next-bnb-int8")
    assert layout.routes["pagereader"] == ("BaseLLM-llava_next-bnb-int8", VISION)
    for agent in MAP:
        assert all(layout.pool(p).base_ref == TEXT_REF for p in layout.routes[agent])
    broken = layout.model_copy(update={"routes": {**layout.routes, "newsreader": ("BaseLLM-bf16",),
                                                  "synthesizer": (VISION,)}})
    with pytest.raises(DemandError) as err:
        broken.check_against([*needs(), extra])
    assert (f"agent 'newsreader' may not use pool 'BaseLLM-bf16': it serves {TEXT_REF}, the agent runs on "
            f"{LLAVA_REF}") in str(err.value)
    assert f"agent 'synthesizer' may not use pool '{VISION}': it serves {LLAVA_REF}" in str(err.value)


def test_a_vision_pool_round_trips_through_the_placement():
    placement = placement_from_plan(*plan_pools(needs(), BASES, load_inventory("h200-8gpu")))
    assert placement.pools[VISION].base_ref == LLAVA_REF and placement.routes["newsreader"] == [VISION]
    assert AppPlacement.model_validate(placement.model_dump(mode="json")) == placement
    assert placement.layout().pool(VISION).base_ref == LLAVA_REF
    data = placement.model_dump(mode="json")
    data["pools"]["BaseLLM-vision-bf16"] = data["pools"].pop(VISION)  # a name that is not the base's
    data["routes"]["newsreader"] = ["BaseLLM-vision-bf16"]
    with pytest.raises(ValueError, match=r"'BaseLLM-vision-bf16' should be 'BaseLLM-llava_next-bf16'"):
        AppPlacement.model_validate(data)


def test_two_versions_of_one_base_are_refused():
    other = llava_base().model_copy(update={"ref": "base_models/llava_next@v2"})
    with pytest.raises(DemandError, match="two versions of one base"):
        assign_pools(needs(), {**BASES, other.ref: other}, device="cuda")


# --- the tiny store, CPU mode ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vision_store(tmp_path_factory, seeded_store_root):
    """A copy of the seeded store with a newsreader adapter on the tiny vision base."""
    import shutil

    from modelstore import ModelStore

    root = tmp_path_factory.mktemp("vision") / "store"
    shutil.copytree(seeded_store_root, root, symlinks=True)
    store = ModelStore(root)
    newsreader.publish_adapter(store)
    return store


def test_the_hand_worked_figures_use_the_shipped_newsreader_entry():
    from agent_graph import load_agent_map

    entry = load_agent_map().agents["newsreader"]
    assert (tuple(entry.variant_preference), entry.allow_quantized) == NEWSREADER and entry.served


def test_needs_from_map_gives_the_newsreader_its_own_base(vision_store, tmp_path):
    from cluster import needs_from_map
    from modelstore.seed import BASE_REF, VISION_BASE_REF

    bases, found = needs_from_map(newsreader.load_served_map(tmp_path), vision_store)
    assert list(bases) == [BASE_REF, VISION_BASE_REF]  # the text base first
    vision = bases[VISION_BASE_REF]
    assert (vision.tokens_per_image, vision.max_images_per_request, vision.image_tokens) == (64, 1, 64)
    assert vision.kv_values_per_token == 2 * 4 * 2 * 32  # from config.json's text_config: layers 4, KV heads 2 of 32
    reader = next(n for n in found if n.agent == "newsreader")
    assert reader.base == VISION_BASE_REF and [a.ref for a in reader.adapters] == [newsreader.ADAPTER]
    assert {n.base for n in found if n.agent != "newsreader"} == {BASE_REF}


def test_the_tiny_vision_pool_on_a_cpu_cluster(vision_store, tmp_path):
    """cpu-only: 2 nodes of 8 CPUs and 32,768 MiB (usable 31,129), 1 CPU per replica, so 16 replicas at most.

    Replica = weights (the manifest's measured fp32 figure) + KV + adapter slot + 1,024 MiB process overhead.
    KV: the tiny language model caches 2 x 4 layers x 2 KV heads x 32 = 512 values/token in fp32 (4 bytes) =
    2 KiB/token; text 2,560 tokens = 5 MiB per sequence, 40 for 8; vision (2,560 + 64 image tokens) x 2 KiB =
    5.125 MiB, 41 for 8. The newsreader's seeded adapter (r=8 on the language model's 7 projections, 319,216
    bytes) is under 1 MiB: a 1 MiB slot.
    Minimums one each (3 CPUs), then round-robin fp32, int8, vision over the 13 CPUs left: 5, 4, 4 more.
    """
    from cluster import needs_from_map
    from modelstore.seed import VISION_BASE_REF

    bases, found = needs_from_map(newsreader.load_served_map(tmp_path), vision_store)
    layout, plan = plan_pools(found, bases, load_inventory("cpu-only"))
    assert [p.name for p in layout.pools] == ["BaseLLM-fp32", "BaseLLM-bnb-int8", "BaseLLM-llava_tiny-fp32"]
    assert layout.routes["newsreader"] == ("BaseLLM-llava_tiny-fp32",)  # fp32 ahead of bf16 on the CPU
    d = plan.deployment("BaseLLM-llava_tiny-fp32")
    weights = vision_store.resolve(VISION_BASE_REF).manifest.approx_vram_mb["fp32"]
    assert (d.memory.weights_mb, d.memory.kv_mb_per_sequence, d.memory.kv_cache_mb, d.memory.adapters_mb,
            d.memory.context_mb) == (weights, 5.12, 41, 1, 1024)  # 5.125 shown to 2 places
    assert d.memory.total_mb == weights + 41 + 1 + 1024 and d.memory_bytes == d.memory.total_mb * 2**20
    assert d.base_ref == VISION_BASE_REF and d.adapters == (newsreader.ADAPTER,)
    assert {x.name: (x.min_replicas, x.max_replicas) for x in plan.deployments} == {
        "BaseLLM-fp32": (1, 6), "BaseLLM-bnb-int8": (1, 5), "BaseLLM-llava_tiny-fp32": (1, 5)}
    assert plan.deployment("BaseLLM-fp32").memory.kv_cache_mb == 40


def test_a_served_newsreader_without_its_base_or_adapter_is_refused_by_name(vision_store, tmp_path):
    from cluster import needs_from_map

    other = newsreader.load_served_map(tmp_path / "a", adapter="newsreader/other_v1@current")
    with pytest.raises(DemandError, match=r"agent 'newsreader': its adapter 'newsreader/other_v1@current' is not "
                                          r"in the ModelStore"):
        needs_from_map(other, vision_store)
    unpublished = newsreader.load_served_map(tmp_path / "b", base="base_models/llava_next@current")
    with pytest.raises(DemandError, match=r"agent 'newsreader': its base 'base_models/llava_next@current' is not "
                                          r"in the ModelStore"):
        needs_from_map(unpublished, vision_store)


def test_the_shipped_map_plans_the_vision_pool(vision_store):
    """The shipped map serves the newsreader: the CPU cluster's three pools, 1..6, 1..5, 1..5 as worked out in
    test_the_tiny_vision_pool_on_a_cpu_cluster (one minimum each, 13 CPUs round-robin: 5, 4, 4 more)."""
    from agent_graph import load_agent_map
    from cluster import needs_from_map
    from modelstore.seed import BASE_REF, VISION_BASE_REF

    bases, found = needs_from_map(load_agent_map(), vision_store)
    assert list(bases) == [BASE_REF, VISION_BASE_REF]
    assert next(n for n in found if n.agent == "newsreader").base == VISION_BASE_REF
    layout, plan = plan_pools(found, bases, load_inventory("cpu-only"))
    assert [p.name for p in layout.pools] == ["BaseLLM-fp32", "BaseLLM-bnb-int8", "BaseLLM-llava_tiny-fp32"]
    assert layout.routes["newsreader"] == ("BaseLLM-llava_tiny-fp32",)
    assert {x.name: (x.min_replicas, x.max_replicas) for x in plan.deployments} == {
        "BaseLLM-fp32": (1, 6), "BaseLLM-bnb-int8": (1, 5), "BaseLLM-llava_tiny-fp32": (1, 5)}


def test_an_unserved_newsreader_plans_no_vision_pool(vision_store, tmp_path):
    """``served: false``: the text base's two pools only, and the 16 CPUs theirs: one minimum each, then the 14
    left round-robin, 7 more each: 1..8 and 1..8."""
    from agent_graph import load_agent_map
    from cluster import needs_from_map

    bases, found = needs_from_map(load_agent_map(newsreader.unserved_map(tmp_path)), vision_store)
    assert len(bases) == 1 and "newsreader" not in {n.agent for n in found}
    layout, plan = plan_pools(found, bases, load_inventory("cpu-only"))
    assert [p.name for p in layout.pools] == ["BaseLLM-fp32", "BaseLLM-bnb-int8"] and "newsreader" not in layout.routes
    assert {x.name: (x.min_replicas, x.max_replicas) for x in plan.deployments} == {
        "BaseLLM-fp32": (1, 8), "BaseLLM-bnb-int8": (1, 8)}
