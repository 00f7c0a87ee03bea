"""AgentServer for the newsreader over a fake BaseLLM: the image travels in the generation request beside text
messages (one image token in the prompt the base replica builds), every bad image is the caller's 4xx before
any model call, and the legacy step reads the decoded pixels."""

from __future__ import annotations

import asyncio
import json

import jinja2
import pytest

from agent_graph import get_spec, load_agent_map
from deployments.agent.server import AgentServer
from deployments.errors import AdapterLoadFailedError, ServeError, UnsupportedMediaTypeError
from deployments.limits import AdmissionLimits
from modelstore.tiny_vision import IMAGE_TOKEN, VISION_CHAT_TEMPLATE

from .bad_images import BAD_IMAGES, GOOD, PNG, b64

ADAPTER = "newsreader/llava_newsreader_v1@current"
VISION_BASE = "base_models/llava_tiny@v1-tiny-llava"
REPLY = {"image_kind": "chart", "headline": "flood", "caption": "a chart about flood", "confidence": 0.8}


def base_prompt(body: dict) -> str:
    """The prompt a vision base replica renders from a GenerateRequest body: its images open the first user
    turn as image parts, through the base's chat template."""
    messages = [dict(m) for m in body["messages"]]
    first = next(m for m in messages if m["role"] == "user")
    first["content"] = [{"type": "image"}] * len(body.get("images", [])) + [{"type": "text", "text": first["content"]}]
    return jinja2.Environment().from_string(VISION_CHAT_TEMPLATE).render(messages=messages, bos_token="<s>",
                                                                         eos_token="</s>")


def fake_llm(plan: dict[str, object]):
    """model id ('' = bare base) -> reply dict text or an exception; records (model id, body) per call."""
    calls: list[tuple[str, dict]] = []

    async def llm(model_id: str, body: dict) -> dict:
        calls.append((model_id, body))
        outcome = plan[model_id]
        if isinstance(outcome, Exception):
            raise outcome
        return {"text": outcome, "finish_reason": "stop", "prompt_tokens": 80, "completion_tokens": 30,
                "adapter": model_id or None, "base": VISION_BASE}

    llm.calls = calls  # type: ignore[attr-defined]
    return llm


def _server(plan: dict, **kw) -> AgentServer:
    return AgentServer("newsreader", load_agent_map(), llm=fake_llm(plan), **kw)


def _answer(server: AgentServer, body: dict):
    return asyncio.run(server.answer(body))


def test_the_image_goes_in_the_request_and_the_prompt_holds_one_image_token():
    server = _server({ADAPTER: json.dumps(REPLY)})
    reply = _answer(server, {"image": GOOD, "text": "What does this chart show?"})
    assert (reply.step, reply.answered_by, reply.output) == ("adapter", ADAPTER, REPLY)
    ((model_id, body),) = server._llm.calls
    assert model_id == ADAPTER and body["images"] == [GOOD]
    assert all(isinstance(m["content"], str) for m in body["messages"])
    prompt = base_prompt(body)
    assert prompt.count(IMAGE_TOKEN) == 1 and prompt.startswith(f"<s>[INST] {IMAGE_TOKEN}\n")
    assert prompt.endswith("What does this chart show? [/INST]")
    assert body["json_schema"] == get_spec("newsreader").json_schema()
    assert body["max_new_tokens"] == load_agent_map().entry("newsreader").max_new_tokens


@pytest.mark.parametrize("case,image,status,error_type,fragment", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_a_bad_image_is_the_callers_4xx_before_any_model_call(case, image, status, error_type, fragment):
    server = _server({ADAPTER: json.dumps(REPLY), "": json.dumps(REPLY)})
    with pytest.raises(ServeError) as info:
        _answer(server, {"image": image})
    assert (info.value.status_code, info.value.error_type) == (status, error_type)
    assert fragment in str(info.value) and str(info.value).startswith("image ")  # names the field
    assert server._llm.calls == []
    assert server.stats()["requests"] == {f"{error_type}:none": 1}


def test_the_limits_are_the_servers():
    tight = AdmissionLimits(max_image_pixels=16 * 16)
    server = _server({ADAPTER: json.dumps(REPLY)}, limits=tight)
    with pytest.raises(ServeError, match=r"24x24 = 576 pixels, more than max_image_pixels \(256\)") as info:
        _answer(server, {"image": b64(PNG)})
    assert info.value.status_code == 413 and server._llm.calls == []


def test_the_legacy_step_reads_the_decoded_image_when_the_models_fail():
    server = _server({ADAPTER: AdapterLoadFailedError("no such weights"), "": "not json"})
    reply = _answer(server, {"image": GOOD})
    assert (reply.step, reply.answered_by, reply.fallback) == ("legacy", "heuristic:pixel_centroids", True)
    assert [f.route.split(":")[0] for f in reply.failures] == ["adapter", "base"]
    out = get_spec("newsreader").output_model.model_validate(reply.output)
    assert out.headline == "" and out.confidence <= 0.3
    assert [m for m, _ in server._llm.calls] == [ADAPTER, ""]
    assert all(body["images"] == [GOOD] for _, body in server._llm.calls)


def test_a_415_from_the_base_is_the_callers_not_a_step_to_fall_back_from():
    server = _server({ADAPTER: UnsupportedMediaTypeError("images[0] is GIF")})
    with pytest.raises(UnsupportedMediaTypeError):
        _answer(server, {"image": GOOD})
    assert [m for m, _ in server._llm.calls] == [ADAPTER]


def test_text_agents_are_unchanged_by_images():
    server = AgentServer("critic", load_agent_map(), llm=fake_llm({}))
    assert server.spec.images_of(server.spec.example) == []
