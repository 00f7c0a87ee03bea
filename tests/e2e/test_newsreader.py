"""The newsreader on the running cluster (``serve run`` of the planned config): an image in through
``POST /agents/newsreader`` (JSON and a multipart upload) and through the official ``openai`` client's
``image_url`` data URL, typed contract JSON out, answered by the newsreader adapter on the vision pool;
every bad image a 4xx JSON error, never a 5xx or a hang."""

from __future__ import annotations

import base64
import io
import json
import random

import pytest
from PIL import Image

from agent_graph.agents.newsreader import DEFAULT_INSTRUCTION, NewsreaderOutput
from deployments.limits import LIMITS
from training.vision_task import render_example

from .conftest import TOKEN

pytestmark = [pytest.mark.ray, pytest.mark.slow]

POOL = "BaseLLM-llava_tiny-fp32"  # the planner's vision pool on a CPU inventory


def _image(fmt: str = "PNG", kind: str = "chart", word: str = "flood") -> bytes:
    buf = io.BytesIO()
    render_example(kind, word, random.Random(7)).save(buf, format=fmt)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _answered_by_the_adapter(body: dict) -> None:
    NewsreaderOutput.model_validate(body["output"])
    assert body["step"] == "adapter" and not body["fallback"], body
    assert body["answered_by"].startswith("newsreader/llava_newsreader_v1@") and body["pool"] == POOL, body


def test_json_and_multipart_images_get_contract_json_from_the_adapter(cluster):
    with cluster.client() as client:
        as_json = client.post("/agents/newsreader", json={"image": _b64(_image())})
        assert as_json.status_code == 200, as_json.text
        _answered_by_the_adapter(as_json.json())
        as_url = client.post("/agents/newsreader", json={"image": "data:image/jpeg;base64," + _b64(_image("JPEG")),
                                                         "text": DEFAULT_INSTRUCTION})
        assert as_url.status_code == 200, as_url.text
        _answered_by_the_adapter(as_url.json())
        upload = client.post("/agents/newsreader", files={"image": ("page.webp", _image("WEBP"), "image/webp")},
                             data={"text": DEFAULT_INSTRUCTION})
        assert upload.status_code == 200, upload.text
        _answered_by_the_adapter(upload.json())


def test_the_openai_client_sends_an_image_url_and_gets_contract_json(cluster):
    import openai

    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=TOKEN, max_retries=0, timeout=300)
    with cluster.client() as http:
        cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    assert "newsreader" in cards
    reply = client.chat.completions.create(
        model="newsreader", max_tokens=200,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": DEFAULT_INSTRUCTION},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(_image())}}]}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "newsreader", "schema": NewsreaderOutput.model_json_schema()}})
    NewsreaderOutput.model_validate(json.loads(reply.choices[0].message.content))
    assert reply.choices[0].finish_reason == "stop"
    assert reply.system_fingerprint.startswith("newsreader/llava_newsreader_v1@"), reply.system_fingerprint
    with pytest.raises(openai.BadRequestError, match="remote image URLs are not fetched"):
        client.chat.completions.create(model="newsreader", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "text", "text": "Read it."},
            {"type": "image_url", "image_url": {"url": "https://example.com/photo.png"}}]}])


def _bomb_png() -> bytes:
    """A valid PNG header declaring far more pixels than the limit (the pixels are never decoded)."""
    import struct
    import zlib

    side = 20_000
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


BAD = {
    "not an image": ({"image": _b64(b"hello, this is text")}, 415, "unsupported_media_type"),
    "not base64": ({"image": "%%% not base64 %%%"}, 400, "invalid_image"),
    "truncated": ({"image": _b64(_image()[: len(_image()) // 2])}, 400, "invalid_image"),
    "gif": ({"image": _b64(_image("GIF"))}, 415, "unsupported_media_type"),
    "decompression bomb": ({"image": _b64(_bomb_png())}, 413, "request_too_large"),
    "over the byte limit": ({"image": "A" * (LIMITS.max_image_bytes * 4 // 3 + 8)}, 413, "request_too_large"),
    "animated png": ({"image": _b64(_animated("PNG"))}, 400, "invalid_image"),
    "animated webp": ({"image": _b64(_animated("WEBP"))}, 400, "invalid_image"),
    "remote url": ({"image": "https://example.com/photo.png"}, 400, "invalid_image"),
}


def test_every_bad_image_is_a_4xx_json_error(cluster):
    with cluster.client() as client:
        for case, (body, status, error_type) in BAD.items():
            reply = client.post("/agents/newsreader", json=body)
            assert reply.status_code == status, (case, reply.status_code, reply.text[:300])
            assert reply.json()["error"]["type"] == error_type, (case, reply.text[:300])
        too_many = client.post("/pipeline/article", json={
            "id": "a1", "title": "Flood", "text": "The river rose.",
            "images": [_b64(_image())] * (LIMITS.max_images_per_request + 1)})
        assert too_many.status_code == 413 and too_many.json()["error"]["type"] == "request_too_large", too_many.text
        upload = client.post("/agents/newsreader", files={"image": ("x.bmp", _bmp(), "image/bmp")})
        assert upload.status_code == 415, upload.text


def _bmp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="BMP")
    return buf.getvalue()
