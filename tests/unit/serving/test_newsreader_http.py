"""The newsreader through the ingress app over fake deployments (no Ray), on a copy of the map that serves it:
JSON and multipart uploads, chat completions with image parts, the pipeline with images, /v1/models; every bad
input a 4xx JSON error of the one mapping, and no model called for it."""

from __future__ import annotations

import base64
import copy
import json

import pytest
from fastapi.testclient import TestClient

from agent_graph import get_spec, load_agent_map
from agent_graph.schema import MAP_FILE, RECOMMENDED_FILE, default_map_path
from deployments.agent.server import AgentServer
from deployments.ingress.http_app import build_http_app
from deployments.ingress.server import IngressServer, IngressSettings
from deployments.ingress.uploads import image_body_limit
from deployments.limits import LIMITS

from PIL import Image

from .bad_images import BAD_IMAGES, GOOD, PNG, animated_png, b64, data_url, encode, png_declaring

ADAPTER_NS = "newsreader/llava_newsreader_v1"
ADAPTER = f"{ADAPTER_NS}@current"
REPLY = {"image_kind": "map", "headline": "flood", "caption": "a map about flood", "confidence": 0.8}
GIF = encode(Image.new("RGB", (9, 9)), "GIF")
ARTICLE = {"id": "a-1", "title": "Bridge approved", "text": "The council approved a bridge. It costs 40 million."}


def served_map(directory, served: bool = True):
    """A copy of the packaged map (and its companion) with the newsreader's 'served' set."""
    data = json.loads(default_map_path().read_text())
    data["agents"]["newsreader"]["served"] = served
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MAP_FILE).write_text(json.dumps(data))
    (directory / RECOMMENDED_FILE).write_text(default_map_path().with_name(RECOMMENDED_FILE).read_text())
    return load_agent_map(directory / MAP_FILE)


class App:
    """The ingress over fake deployments; ``calls`` records every BaseLLM call as (model id, body)."""

    def __init__(self, store, agent_map):
        self.calls: list[tuple[str, dict]] = []

        async def llm(model_id: str, body: dict) -> dict:
            self.calls.append((model_id, body))
            reads = model_id.startswith("newsreader/") or body.get("images")
            text = json.dumps(REPLY) if reads else "not json: the text agents fall back to their heuristics"
            return {"text": text, "finish_reason": "stop", "prompt_tokens": 70, "completion_tokens": 20,
                    "adapter": model_id or None, "base": "base_models/llava_tiny@v1-tiny-llava"}

        async def embed(body: dict) -> dict:
            return {"model": "mini", "dimensions": 2, "vectors": [[0.6, 0.8] for _ in body["texts"]]}

        agents = {n: AgentServer(n, agent_map, llm=llm if e.kind != "embedding" else None,
                                 embed=embed if e.kind == "embedding" else None)
                  for n, e in agent_map.agents.items() if e.served}

        async def agent(name: str, body: dict, strict: bool) -> dict:
            return (await agents[name].answer(body, strict=strict)).model_dump(mode="json")

        self.server = IngressServer(IngressSettings(), agent_map, store, llm=llm, agent=agent)
        self.client = TestClient(build_http_app(self.server))

    def models(self) -> dict[str, dict]:
        return {m["id"]: m for m in self.client.get("/v1/models").json()["data"]}

    def chat(self, model: str, *parts: dict, **extra):
        content = [{"type": "text", "text": "What does this image show?"}, *parts]
        return self.client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 64, **extra})


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture
def app(seeded_store_root, tmp_path):
    from modelstore import ModelStore

    return App(ModelStore(seeded_store_root), served_map(tmp_path / "map"))


@pytest.fixture
def unserved(seeded_store_root, tmp_path):
    from modelstore import ModelStore

    return App(ModelStore(seeded_store_root), served_map(tmp_path / "map", served=False))


def assert_error(reply, status: int, error_type: str, *fragments: str) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert (error["type"], error["status"]) == (error_type, status), error
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])


# -- POST /agents/newsreader ------------------------------------------------------------------------------


def test_json_body_reads_the_image_on_the_adapter(app):
    reply = app.client.post("/agents/newsreader", json={"image": GOOD, "text": "Which river floods?"})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["output"], reply.json()["step"]) == (REPLY, "adapter")
    ((model_id, body),) = app.calls
    assert model_id == ADAPTER and body["images"] == [GOOD]
    assert body["messages"][-1]["content"] == "Which river floods?"


def test_multipart_upload_reads_the_file(app):
    reply = app.client.post("/agents/newsreader", files={"image": ("map.png", PNG, "image/png")},
                            data={"text": "Which river floods?"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["output"] == REPLY
    ((_, body),) = app.calls
    assert body["images"] == [data_url(PNG)] and body["messages"][-1]["content"] == "Which river floods?"


def test_multipart_upload_without_a_content_type_lets_the_bytes_decide(app):
    reply = app.client.post("/agents/newsreader", files={"image": ("map", PNG, "application/octet-stream")})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("case,image,status,error_type,fragment", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_every_bad_image_in_json_is_its_4xx_and_no_model_is_called(app, case, image, status, error_type, fragment):
    assert_error(app.client.post("/agents/newsreader", json={"image": image}), status, error_type, fragment)
    assert app.calls == []


def _bytes(source: str) -> bytes:
    return base64.b64decode(source.split(",", 1)[-1])


UPLOADS = [(case, _bytes(image), status, error_type, fragment) for case, image, status, error_type, fragment
           in BAD_IMAGES if case not in ("remote_url", "over_bytes", "declared_otherwise")]


@pytest.mark.parametrize("case,data,status,error_type,fragment", UPLOADS, ids=[u[0] for u in UPLOADS])
def test_every_bad_upload_is_its_4xx_and_no_model_is_called(app, case, data, status, error_type, fragment):
    reply = app.client.post("/agents/newsreader", files={"image": ("upload", data, "application/octet-stream")})
    assert_error(reply, status, error_type, fragment)
    assert app.calls == []


@pytest.mark.parametrize("files,data,status,error_type,fragment", [
    ({"image": ("a.png", PNG, "image/jpeg")}, None, 400, "invalid_image", "declared as 'image/jpeg'"),
    ({"image": ("a.gif", GIF, "image/gif")}, None, 415, "unsupported_media_type", "declared as 'image/gif'"),
    ([("image", ("a.png", PNG, "image/png")), ("image", ("b.png", PNG, "image/png"))], None, 400,
     "invalid_request", "form field 'image' is given 2 times"),
    ([("image", (f"{i}.png", PNG, "image/png")) for i in range(LIMITS.max_images_per_request + 1)], None, 413,
     "request_too_large", "max_images_per_request"),
    ({"image": ("a.png", PNG, "image/png"), "notes": ("n.txt", b"x", "text/plain")}, None, 400, "invalid_request",
     "form field 'notes' is a file"),
    ({"image": ("a.png", PNG, "image/png")}, {"colour": "red"}, 400, "invalid_request", "colour: Extra inputs"),
    ({"notes": ("n.txt", b"x", "text/plain")}, {"text": "no image"}, 400, "invalid_request",
     "form field 'notes' is a file"),
])
def test_form_mistakes_are_4xx(app, files, data, status, error_type, fragment):
    assert_error(app.client.post("/agents/newsreader", files=files, data=data), status, error_type, fragment)
    assert app.calls == []


def test_a_form_without_the_image_is_400(app):
    body = b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nno image\r\n--x--\r\n'
    reply = app.client.post("/agents/newsreader", content=body,
                            headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert_error(reply, 400, "invalid_request", "image: Field required")


def test_a_broken_form_is_400(app):
    reply = app.client.post("/agents/newsreader", content=b"not a form",
                            headers={"Content-Type": "multipart/form-data"})
    assert_error(reply, 400, "invalid_request", "multipart/form-data body cannot be read")


def test_a_body_over_the_cap_is_413_before_it_is_read(app):
    cap = image_body_limit(1)
    declared = app.client.post("/agents/newsreader", content=b"{}", headers={
        "Content-Type": "application/json", "Content-Length": str(cap + 1)})
    assert_error(declared, 413, "request_too_large", f"more than the {cap} this route takes",
                 f"max_image_bytes ({LIMITS.max_image_bytes})")

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"image": "'
        for _ in range(cap // 65536 + 1):
            yield b"A" * 65536

    streamed = app.client.post("/agents/newsreader", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(streamed, 413, "request_too_large", "max_image_bytes")
    assert app.calls == []


@pytest.mark.parametrize("content,headers,status,error_type,fragment", [
    (b"image=abc", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type",
     "takes application/json or multipart/form-data"),
    (b"{not json", {"Content-Type": "application/json"}, 400, "invalid_request", "the body is not JSON"),
    (b"[1, 2]", {"Content-Type": "application/json"}, 400, "invalid_request", "must be a JSON object"),
    (b'{"image": 7}', {"Content-Type": "application/json"}, 400, "invalid_request", "image: Input should be a valid"),
])
def test_other_bodies_are_4xx(app, content, headers, status, error_type, fragment):
    assert_error(app.client.post("/agents/newsreader", content=content, headers=headers), status, error_type,
                 fragment)


def test_the_route_documents_both_bodies(app):
    body = app.client.get("/openapi.json").json()["paths"]["/agents/newsreader"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"


def test_not_served_the_route_is_404(unserved):
    assert_error(unserved.client.post("/agents/newsreader", json={"image": GOOD}), 404, "unknown_agent")


# -- /v1/chat/completions and /v1/models ------------------------------------------------------------------


def test_chat_takes_a_data_url_image_for_the_newsreader(app):
    reply = app.chat("newsreader", image_part(GOOD))
    assert reply.status_code == 200, reply.text
    assert json.loads(reply.json()["choices"][0]["message"]["content"]) == REPLY
    ((model_id, body),) = app.calls
    assert model_id == ADAPTER and body["images"] == [GOOD]
    assert body["messages"] == [{"role": "user", "content": "What does this image show?"}]


@pytest.mark.parametrize("model,parts,status,error_type,fragment", [
    ("newsreader", [image_part("https://example.com/map.png")], 400, "invalid_image",
     "https: URL; remote image URLs are not fetched"),
    ("newsreader", [image_part("http://example.com/map.png")], 400, "invalid_image", "remote image URLs"),
    ("critic", [image_part(GOOD)], 400, "invalid_request", "model 'critic' reads text only"),
    ("base", [image_part(GOOD)], 400, "invalid_request", "reads text only"),
    ("newsreader", [image_part(GOOD)] * (LIMITS.max_images_per_request + 1), 413, "request_too_large",
     "max_images_per_request"),
    ("newsreader", [image_part(b64(png_declaring(50_000, 50_000)))], 413, "request_too_large", "max_image_pixels"),
    ("newsreader", [image_part(b64(animated_png()))], 400, "invalid_image", "animated"),
    ("newsreader", [image_part(data_url(GIF, "image/gif"))], 415, "unsupported_media_type", "image/gif"),
    ("newsreader", [{"type": "input_audio", "input_audio": {}}], 400, "invalid_request", "does not match any"),
])
def test_chat_image_mistakes_are_4xx_before_any_model(app, model, parts, status, error_type, fragment):
    assert_error(app.chat(model, *parts), status, error_type, fragment)
    assert app.calls == []


def test_chat_images_go_in_the_first_user_message(app):
    reply = app.client.post("/v1/chat/completions", json={"model": "newsreader", "messages": [
        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"},
        {"role": "user", "content": [image_part(GOOD)]}]})
    assert_error(reply, 400, "invalid_request", "messages[2].content[0]: image parts go in the first user message")


def test_text_parts_work_for_text_models_too(app):
    reply = app.chat("critic")
    assert reply.status_code == 200 and app.calls[0][1]["messages"][0]["content"] == "What does this image show?"


def test_models_list_the_newsreader_with_images_and_chat_takes_exactly_those(app):
    cards = app.models()
    assert cards["newsreader"]["modalities"] == ["text", "image"]
    assert cards["newsreader"]["ref"] == f"{ADAPTER_NS}@seed-1"
    assert cards[f"base:{ADAPTER_NS}@seed-1"]["modalities"] == ["text", "image"]
    assert cards["critic"]["modalities"] == ["text"] and cards["base"]["modalities"] == ["text"]
    for model, card in cards.items():
        if card["endpoint"] != "/v1/chat/completions":
            continue
        with_image = app.chat(model, image_part(GOOD))
        assert with_image.status_code == (200 if "image" in card["modalities"] else 400), (model, with_image.text)
        assert app.chat(model).status_code == 200, model


def test_not_served_no_newsreader_id_is_listed_or_accepted(unserved):
    cards = unserved.models()
    assert not [m for m in cards if "newsreader" in m], sorted(cards)
    assert_error(unserved.chat("newsreader", image_part(GOOD)), 404, "model_not_found")
    assert_error(unserved.chat(f"base:{ADAPTER_NS}@seed-1", image_part(GOOD)), 404, "model_not_found",
                 "agent 'newsreader', which this application does not serve")
    assert unserved.calls == []


# -- /pipeline/article ------------------------------------------------------------------------------------


def test_the_pipeline_reads_images_and_passes_the_reading_on(app):
    reply = app.client.post("/pipeline/article", json={**ARTICLE, "images": [GOOD, b64(PNG)]})
    assert reply.status_code == 200, reply.text
    steps = {s["step"]: s for s in reply.json()["steps"]}
    assert list(steps)[:3] == ["newsreader_0", "newsreader_1", "scout"]
    assert steps["newsreader_0"]["output"] == REPLY and steps["newsreader_0"]["input"]["image"].startswith("sha256:")
    text = steps["synthesizer"]["input"]["articles"][0]["text"]
    assert text.endswith("Images of the article:\n[image 0] map, headline 'flood': a map about flood\n"
                         "[image 1] map, headline 'flood': a map about flood")
    assert [m for m, _ in app.calls if m.startswith("newsreader/")] == [ADAPTER, ADAPTER]


def test_the_pipeline_without_images_is_unchanged(app):
    reply = app.client.post("/pipeline/article", json=ARTICLE)
    assert reply.status_code == 200 and reply.json()["steps"][0]["step"] == "scout"
    assert not any(body.get("images") for _, body in app.calls)


@pytest.mark.parametrize("images,status,error_type,fragment", [
    ([GOOD] * (LIMITS.max_images_per_request + 1), 413, "request_too_large", "max_images_per_request"),
    (["https://example.com/a.png"], 400, "invalid_image", "images[0] is a https: URL"),
    ([GOOD, b64(png_declaring(50_000, 50_000))], 413, "request_too_large", "images[1]: image has more pixels"),
    ([GOOD, b64(animated_png())], 400, "invalid_image", "images[1]: image is an animated"),
    ([""], 400, "invalid_request", "images.0"),
])
def test_pipeline_image_mistakes_are_4xx(app, images, status, error_type, fragment):
    reply = app.client.post("/pipeline/article", json={**ARTICLE, "images": images})
    assert_error(reply, status, error_type, fragment)
    assert not any(m.startswith("newsreader/") for m, _ in app.calls[1:])  # at most the first, good image read


def test_the_pipeline_refuses_images_when_the_newsreader_is_not_served(unserved):
    reply = unserved.client.post("/pipeline/article", json={**ARTICLE, "images": [GOOD]})
    assert_error(reply, 400, "invalid_request", "does not serve newsreader")
    assert unserved.calls == []


def test_text_chats_never_route_to_a_vision_pool():
    from deployments.ingress.deployment import default_route

    pools = ["BaseLLM-llava_tiny-fp32", "BaseLLM-bf16", "BaseLLM-llava_tiny-bf16", "BaseLLM-bnb-int8"]
    assert default_route(pools) == ["BaseLLM-bf16", "BaseLLM-bnb-int8"]
    assert default_route(["BaseLLM-fp32"]) == ["BaseLLM-fp32"]
