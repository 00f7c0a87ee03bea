"""Images through a real BaseLLMServer on the seeded tiny LLaVA: base64 and data: URLs in, decoded off the event
loop under the admission limits; every bad image a 4xx naming what is wrong, before any compute."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from deployments.base_llm.server import BaseLLMServer
from deployments.base_llm.settings import BaseLLMSettings
from deployments.errors import ServeError
from deployments.limits import LIMITS
from modelstore.seed import VISION_BASE_REF

PROMPT = "<s>[INST] <image>\nWhat is shown? [/INST]"


def _png(colour: str = "red", size=(80, 60), fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module: the server's batcher lives on the loop of its first request."""
    runner = asyncio.Runner()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def server(seeded_store_root):
    return BaseLLMServer(BaseLLMSettings(store_root=str(seeded_store_root), base_ref=VISION_BASE_REF,
                                         variant="fp32"))


_RUNNER: list = []


@pytest.fixture(autouse=True)
def _use_loop(loop):
    _RUNNER[:] = [loop]


def _generate(server, body):
    return _RUNNER[0].run(server.generate({"max_new_tokens": 4, **body}))


def test_base64_and_data_urls_are_served_and_the_pixels_matter(server):
    red = _generate(server, {"prompt": PROMPT, "images": [_png("red")]})
    red_url = _generate(server, {"prompt": PROMPT, "images": ["data:image/png;base64," + _png("red")]})
    blue = _generate(server, {"prompt": PROMPT, "images": [_png("blue", fmt="JPEG")]})
    assert red.text == red_url.text != blue.text
    assert red.base == VISION_BASE_REF and red.prompt_tokens > 64
    vision = server.vision
    assert server.engine.config.max_prompt_tokens == 2048 + vision.tokens_per_image * vision.max_images_per_request


def test_messages_with_images_open_the_first_user_turn(server):
    by_messages = _generate(server, {"messages": [{"role": "user", "content": "What is shown?"}],
                                     "images": [_png("red")]})
    by_prompt = _generate(server, {"prompt": PROMPT, "images": [_png("red")]})
    assert by_messages.text == by_prompt.text and by_messages.prompt_tokens == by_prompt.prompt_tokens


BAD = {
    "not base64": ({"images": ["%%%not base64%%%"]}, 400, "invalid_image"),
    "gif": ({"images": [_png(fmt="GIF")]}, 415, "unsupported_media_type"),
    "remote url": ({"images": ["https://example.com/a.png"]}, 400, "invalid_image"),
    "too many": ({"images": [_png()] * (LIMITS.max_images_per_request + 1)}, 413, "request_too_large"),
    "more than the base takes": ({"prompt": "<s>[INST] <image>\n<image>\nBoth? [/INST]", "images": [_png()] * 2},
                                 413, "request_too_large"),  # the tiny LLaVA's manifest: 1 per request
    "token without image": ({"images": []}, 400, "invalid_request"),
    "image without token": ({"prompt": "<s>[INST] hi [/INST]", "images": [_png()]}, 400, "invalid_request"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_images_are_4xx_before_any_compute(server, case):
    body, status, error_type = BAD[case]
    before = server.engine.stats()["generate_calls"]
    with pytest.raises(ServeError) as caught:
        _generate(server, {"prompt": PROMPT, **body})
    assert (caught.value.status_code, caught.value.error_type) == (status, error_type), caught.value
    assert server.engine.stats()["generate_calls"] == before


def test_a_text_base_refuses_images_with_a_400(seeded_store_root):
    text = BaseLLMServer(BaseLLMSettings(store_root=str(seeded_store_root)))
    with pytest.raises(ServeError, match="text-only") as caught:
        asyncio.run(text.generate({"prompt": "[INST] hi [/INST]", "images": [_png()], "max_new_tokens": 2}))
    assert caught.value.status_code == 400
