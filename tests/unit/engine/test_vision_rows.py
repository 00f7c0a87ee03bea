"""Image rows in the engine, on the seeded tiny LLaVA: the processor expands each image token into the image's
tokens, the pixels join the prefill only, and rows with and without images share one batch without
changing each other's output."""

from __future__ import annotations

import pytest
from PIL import Image

from engine import InferenceEngine
from engine.errors import InvalidRequest
from engine.params import GenerationRequest, SamplingParams
from modelstore import ModelStore
from modelstore.loading import load_base
from modelstore.seed import VISION_BASE_REF

PARAMS = SamplingParams(max_new_tokens=6)


@pytest.fixture(scope="module")
def vision(seeded_store_root):
    loaded = load_base(ModelStore(seeded_store_root), VISION_BASE_REF, "fp32")
    engine = InferenceEngine(loaded.model, loaded.tokenizer, processor=loaded.processor)
    image_prompt = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}],
        add_generation_prompt=True, tokenize=False)
    text_prompt = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "What is shown?"}]}], add_generation_prompt=True,
        tokenize=False)
    return engine, image_prompt, text_prompt, loaded.manifest.vision.tokens_per_image


def _image(colour: str, size=(90, 70)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_an_image_costs_its_tokens_and_changes_the_answer(vision):
    engine, image_prompt, text_prompt, per_image = vision
    red, blue = engine.generate([GenerationRequest(prompt=image_prompt, images=[_image(c)], params=PARAMS)
                                 for c in ("red", "blue")])
    unexpanded = len(engine.tokenizer(image_prompt, add_special_tokens=False)["input_ids"])
    assert red.prompt_tokens == blue.prompt_tokens == unexpanded - 1 + per_image  # one token became the image's
    assert red.text != blue.text  # the pixels reach the language model


def test_rows_with_and_without_images_batch_together_as_they_run_alone(vision):
    engine, image_prompt, text_prompt, _ = vision
    rows = [GenerationRequest(prompt=image_prompt, images=[_image("red")], params=PARAMS),
            GenerationRequest(prompt=text_prompt, params=PARAMS),
            GenerationRequest(prompt=image_prompt, images=[_image("green", (40, 120))], params=PARAMS)]
    together = [r.text for r in engine.generate(rows)]
    alone = [engine.generate([r])[0].text for r in rows]
    assert together == alone


@pytest.mark.parametrize("case", ["image-without-token", "token-without-image", "text-only-engine"])
def test_images_and_image_tokens_must_match_and_need_a_vision_base(vision, seeded_store_root, case):
    engine, image_prompt, text_prompt, _ = vision
    if case == "image-without-token":
        request, match = GenerationRequest(prompt=text_prompt, images=[_image("red")], params=PARAMS), "0 <image>"
    elif case == "token-without-image":
        request, match = GenerationRequest(prompt=image_prompt, params=PARAMS), "0 image"
    else:
        text = load_base(ModelStore(seeded_store_root), "base_models@current", "fp32")
        engine = InferenceEngine(text.model, text.tokenizer)
        request, match = GenerationRequest(prompt="[INST] hi [/INST]", images=[_image("red")], params=PARAMS), \
            "text-only"
    with pytest.raises(InvalidRequest, match=match):
        engine.generate([request])


def test_image_rows_join_the_continuous_loop_as_they_run_alone(vision):
    engine, image_prompt, text_prompt, _ = vision
    rows = [GenerationRequest(prompt=image_prompt, images=[_image("red")], params=PARAMS),
            GenerationRequest(prompt=text_prompt, params=SamplingParams(max_new_tokens=30, ignore_eos=True)),
            GenerationRequest(prompt=image_prompt, images=[_image("green", (40, 120))], params=PARAMS)]
    alone = [engine.generate([r])[0].text for r in rows]
    handles = [engine.submit(r) for r in rows]
    assert [h.future.result(60).text for h in handles] == alone


def test_image_rows_decode_through_the_graphed_step_as_they_run_alone(vision, seeded_store_root):
    from engine import EngineConfig

    engine, image_prompt, text_prompt, _ = vision
    loaded = load_base(ModelStore(seeded_store_root), VISION_BASE_REF, "fp32")
    graphed = InferenceEngine(loaded.model, loaded.tokenizer, EngineConfig(decode_graphs="static"),
                              processor=loaded.processor)
    rows = [GenerationRequest(prompt=image_prompt, images=[_image("blue")], params=PARAMS),
            GenerationRequest(prompt=text_prompt, params=SamplingParams(max_new_tokens=20, ignore_eos=True))]
    alone = [engine.generate([r])[0].text for r in rows]
    assert [h.future.result(60).text for h in [graphed.submit(r) for r in rows]] == alone
    assert graphed.stats()["decode_graph_replays"] > 0
