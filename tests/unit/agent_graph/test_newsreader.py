"""The newsreader: its contract against the trained target, its vision prompt, its pixel heuristic and its map
entry (packaged not served; a copy served on the vision base validates against the seeded store)."""

from __future__ import annotations

import copy
import json
import random

import pytest
import xgrammar as xgr

from agent_graph import AgentMapError, generation_request, get_spec, load_agent_map, routes, run_heuristic
from agent_graph.agents.newsreader import (DEFAULT_INSTRUCTION, IMAGE_KINDS, KIND_PHRASES, NewsreaderInput,
                                           NewsreaderOutput)
from agent_graph.budget import agent_budget
from agent_graph.heuristics import pixel_centroids
from modelstore import ModelStore
from modelstore.tiny_vision import IMAGE_TOKEN, VISION_CHAT_TEMPLATE
from training import vision_task

from .images import decoded, encode

SPEC = get_spec("newsreader")
VISION_BASE = "base_models/llava_tiny@current"


@pytest.fixture(scope="module")
def vision_tokenizer(tokenizer):
    """The text tokenizer plus '<image>' and the vision chat template: what the tiny LLaVA base ships."""
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tok.chat_template = VISION_CHAT_TEMPLATE
    return tok


def test_the_contract_is_the_trained_target_generalised():
    assert SPEC.kind == "multimodal" and SPEC.image_fields == ("image",)
    assert IMAGE_KINDS == vision_task.KINDS and KIND_PHRASES == vision_task.KIND_PHRASES
    assert DEFAULT_INSTRUCTION == vision_task.INSTRUCTION  # the adapter is trained on this instruction
    # Same keys in the same order: the grammar emits them as the adapter learnt to.
    assert list(NewsreaderOutput.model_fields) == list(vision_task.VisionTarget.model_fields)
    rng = random.Random(3)
    for _ in range(16):
        _, target = vision_task.make_example(rng)
        assert SPEC.validate_output(target.model_dump(mode="json")).model_dump() == target.model_dump()


def test_the_example_is_an_image_the_admission_takes():
    (image,) = decoded("newsreader", SPEC.example)
    assert image.size == (16, 16) and image.mode == "RGB"


def test_the_input_model_checks_type_and_length_only():
    # Anything non-empty passes the model; decoding is the server's (admission limits, 4xx).
    assert SPEC.load_input({"image": "not base64 at all"}).text is None
    for bad in ({"image": ""}, {"image": 42}, {"text": "x"}, {"image": "x", "text": ""}):
        with pytest.raises(Exception, match="invalid input"):
            SPEC.load_input(bad)


def test_the_prompt_is_one_user_turn_the_image_token_then_the_instruction(vision_tokenizer):
    prompt = SPEC.prompt(SPEC.example, vision_tokenizer)
    assert prompt.count(IMAGE_TOKEN) == 1
    # LLaVA's chat format: no system turn, the instruction right after the image.
    assert prompt == f"<s>[INST] {IMAGE_TOKEN}\n{DEFAULT_INSTRUCTION} [/INST]"
    assert SPEC.system_prompt not in prompt
    asked = SPEC.load_input({"image": SPEC.example.image, "text": "Is this a map of the flood?"})
    assert SPEC.prompt(asked, vision_tokenizer).endswith("Is this a map of the flood? [/INST]")


def test_the_generation_request_carries_the_image_beside_text_messages():
    body = generation_request(SPEC, SPEC.example, load_agent_map().entry("newsreader"))
    assert body["images"] == [SPEC.example.image]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert all(isinstance(m["content"], str) for m in body["messages"])  # the base replica adds the image part
    assert body["json_schema"]["required"] == ["image_kind", "headline", "caption", "confidence"]
    text_body = generation_request(get_spec("critic"), get_spec("critic").example, load_agent_map().entry("critic"))
    assert "images" not in text_body


def test_records_show_a_digest_not_the_image():
    record = SPEC.record_input(SPEC.example)
    assert record["image"].startswith("sha256:") and record["image"].endswith(f"({len(SPEC.example.image)} chars)")
    assert get_spec("critic").record_input(get_spec("critic").example) == get_spec("critic").example.model_dump()


def test_the_schema_compiles_and_takes_the_heuristic_answer(tokenizer):
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    compiled = xgr.GrammarCompiler(info, cache_enabled=False, max_threads=1).compile_json_schema(
        json.dumps(SPEC.json_schema(SPEC.example)), any_whitespace=False, separators=(",", ":"), strict_mode=True)
    matcher = xgr.GrammarMatcher(compiled)
    answer = pixel_centroids(SPEC.example, decoded("newsreader", SPEC.example))
    assert matcher.accept_string(answer.model_dump_json())
    assert xgr.GrammarMatcher(compiled).accept_string('{"image_kind":"map","headline":"flood","caption":"a map about '
                                                      'flood","confidence":0.82}')


def test_the_budget_holds_the_largest_reply_on_the_vision_tokenizer(vision_tokenizer, tokenizer):
    need = agent_budget("newsreader", vision_tokenizer).tokens
    assert need == agent_budget("newsreader", tokenizer).tokens  # '<image>' changes no text token
    assert need <= load_agent_map().entry("newsreader").max_new_tokens


def test_the_heuristic_tells_the_synthetic_kinds_apart():
    rng = random.Random(7)
    right, answers = 0, []
    for i in range(120):
        image, target = vision_task.make_example(rng, size=64 if i % 2 else 128)
        inp = NewsreaderInput(image=encode(image))
        out = run_heuristic("pixel_centroids", inp, [image])
        right += out.image_kind == target.image_kind
        answers.append(out)
    assert right / len(answers) >= 0.9
    assert all(a.headline == "" and a.caption == KIND_PHRASES[a.image_kind] and a.confidence <= 0.3 for a in answers)


def test_the_heuristic_needs_the_decoded_images():
    with pytest.raises(ValueError, match="reads the request's images"):
        run_heuristic("pixel_centroids", SPEC.example)


# -- the map entry ----------------------------------------------------------------------------------------


def test_the_packaged_entry_is_served_on_the_vision_base():
    agent_map = load_agent_map()
    entry = agent_map.entry("newsreader")
    assert (entry.kind, entry.served, entry.base, entry.model) == ("multimodal", True, VISION_BASE, None)
    assert entry.adapter == "newsreader/llava_newsreader_v1@current"
    assert [r.step for r in routes(agent_map, "newsreader")] == ["adapter", "base", "legacy"]
    assert agent_map.legacy["newsreader"].ref == "heuristic:pixel_centroids"


def _served_copy(shipped_map_json, **changes) -> dict:
    data = copy.deepcopy(shipped_map_json)
    data["agents"]["newsreader"].update(served=True, **changes)
    return data


def test_a_served_copy_validates_against_the_seeded_store(write_map, shipped_map_json, seeded_store_root):
    # The vision base resolves and is a vision base, the seeded adapter was validated against it, the base offers
    # the variants, and the budget holds counted with the base's own tokenizer.
    agent_map = load_agent_map(write_map(_served_copy(shipped_map_json)))
    assert agent_map.store_problems(ModelStore(seeded_store_root)) == []


def test_the_store_check_counts_the_budget_with_the_vision_base_tokenizer(write_map, shipped_map_json,
                                                                         seeded_store_root):
    agent_map = load_agent_map(write_map(_served_copy(shipped_map_json, max_new_tokens=100)))
    problems = agent_map.store_problems(ModelStore(seeded_store_root))
    assert [(p.agent, p.field) for p in problems] == [("newsreader", "max_new_tokens")]
    assert "tokenizer of base_models/llava_tiny@" in problems[0].message


def test_a_multimodal_agent_on_the_text_base_is_refused_by_the_store_check(write_map, shipped_map_json,
                                                                          seeded_store_root):
    data = _served_copy(shipped_map_json, base="base_models@v1-tiny-mistral", adapter=None,
                        fallback=["base", "legacy"])
    problems = load_agent_map(write_map(data)).store_problems(ModelStore(seeded_store_root))
    assert [(p.agent, p.field) for p in problems] == [("newsreader", "base")]
    assert "not a vision-language base" in problems[0].message


@pytest.mark.parametrize("changes,field,fragment", [
    ({"model": "llava-hf/llava-1.5-7b-hf"}, "model", "takes no specialised model"),
    ({"base": None, "model": "llava-hf/llava-1.5-7b-hf", "adapter": None, "fallback": ["base"]}, "base",
     "a served multimodal agent runs on a vision-language base"),
    ({"base": None, "adapter": None, "fallback": ["base"]}, "model", "or a vision base ref in 'base'"),
    ({"base": "newsreader/x@v1"}, "base", "a base must be 'base_models@<version>' or 'base_models/<name>@<version>'"),
    ({"kind": "llm"}, "kind", "its contract is 'multimodal'"),
])
def test_map_mistakes_of_a_multimodal_entry(write_map, shipped_map_json, changes, field, fragment):
    with pytest.raises(AgentMapError) as info:
        load_agent_map(write_map(_served_copy(shipped_map_json, **changes)))
    assert any(p.agent == "newsreader" and p.field == field and fragment in p.message
               for p in info.value.problems), str(info.value)


def test_an_unserved_multimodal_entry_on_its_own_weights_still_loads(write_map, shipped_map_json):
    data = copy.deepcopy(shipped_map_json)
    data["agents"]["newsreader"] = {"kind": "multimodal", "model": "llava-hf/llava-1.5-7b-hf", "served": False,
                                    "variant_preference": ["fp16"], "fallback": ["base", "legacy"]}
    assert load_agent_map(write_map(data)).entry("newsreader").model == "llava-hf/llava-1.5-7b-hf"
