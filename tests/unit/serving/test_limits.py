"""Admission limits (deployments/limits.py): every caller-controlled bound, refused with a 400 (413 for sizes)
that names the value and the limit, on the OpenAI route and the agent routes alike -- over a real BaseLLMServer."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agent_graph import get_spec, load_agent_map
from engine import SamplingParams
from deployments.errors import LimitExceededError, RequestTooLargeError, SchemaTooLargeError
from deployments.limits import LIMITS, AdmissionLimits, check_json_schema, schema_stats
from deployments.ingress.openai_protocol import ChatCompletionRequest
from deployments.base_llm.protocol import GenerateRequest


def nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def wide(properties: int) -> dict:
    return {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(properties)}}


def enum(values: int) -> dict:
    return {"type": "object", "properties": {"e": {"enum": [f"v{i}" for i in range(values)]}}}


def padded(size: int) -> dict:
    return {"type": "object", "description": "x" * size}


# (schema, error class, HTTP status, words the message must hold)
SCHEMA_CASES = {
    "depth_700": (nested(700), LimitExceededError, 400, ["max_schema_depth (32)"]),
    "depth_just_over": (nested(16), LimitExceededError, 400, ["max_schema_depth (32)"]),
    "bytes": (padded(40_000), SchemaTooLargeError, 413, ["40034 bytes", "max_schema_bytes (32768)"]),
    "properties": (wide(300), LimitExceededError, 400, ["300 properties", "max_schema_properties (256)"]),
    "enum": (enum(300), LimitExceededError, 400, ["300 values", "max_schema_enum_values (256)"]),
    "values": ({"type": "object", "enum": [[0] * 1000] * 40}, SchemaTooLargeError, 413,
               ["more than 32768 JSON values", "max_schema_bytes (32768)"]),
    "not_an_object": ([1, 2], LimitExceededError, 400, ["must be a JSON object"]),
    "nan": ({"type": "number", "default": float("nan")}, LimitExceededError, 400, ["not serialisable"]),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_each_schema_limit_is_refused_naming_value_and_limit(case):
    schema, error, status, words = SCHEMA_CASES[case]
    with pytest.raises(error) as caught:
        check_json_schema(schema)
    assert caught.value.status_code == status
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("schema", [nested(15), wide(256), enum(256), padded(32_000)], ids=["depth", "props", "enum", "bytes"])
def test_schemas_at_the_limits_pass(schema):
    assert json.loads(check_json_schema(schema)) == schema


def test_every_agent_schema_is_well_inside_the_limits():
    for name, entry in load_agent_map().agents.items():
        if entry.kind == "llm":
            stats = schema_stats(get_spec(name).json_schema())
            assert stats["depth"] <= LIMITS.max_schema_depth // 4, name


def test_depth_is_measured_without_recursion_on_a_document_deeper_than_pythons_stack():
    deep: list = []
    for _ in range(50_000):
        deep = [deep]
    assert schema_stats(deep, stop_depth=32)["depth"] == 33
    with pytest.raises(LimitExceededError, match="max_schema_depth"):
        check_json_schema({"type": "array", "items": deep})


def test_limits_document_every_field_and_reject_bad_values():
    for name, field in AdmissionLimits.model_fields.items():
        assert field.description, name
    assert AdmissionLimits.model_validate_json(LIMITS.model_dump_json()) == LIMITS
    with pytest.raises(ValidationError):
        AdmissionLimits(max_schema_depth=0)
    with pytest.raises(ValidationError, match="must lie within what the sampler accepts"):
        AdmissionLimits(seed_max=2**64)


def test_an_operator_overrides_limits_through_the_environment():
    from deployments.limits import LIMITS_ENV, load_limits

    assert load_limits({}) == AdmissionLimits()
    assert load_limits({LIMITS_ENV: '{"max_schema_depth": 16}'}).max_schema_depth == 16
    with pytest.raises(ValidationError, match="max_schema_dept"):
        load_limits({LIMITS_ENV: '{"max_schema_dept": 16}'})  # a typo is refused, not ignored


MSG = [{"role": "user", "content": "hi"}]

# (model, body, words the validation error must hold)
FIELD_CASES = {
    "seed_over_uint64": (GenerateRequest, {"prompt": "x", "seed": 2**64}, [str(2**64), f"<= {2**64 - 1}"]),
    "seed_under_int64": (GenerateRequest, {"prompt": "x", "seed": -(2**63) - 1}, [f">= {-(2**63)}"]),
    "max_new_tokens": (GenerateRequest, {"prompt": "x", "max_new_tokens": 10**12}, ["max_new_tokens (10000", "<= 32768"]),
    "stop_count": (GenerateRequest, {"prompt": "x", "stop": ["s"] * 9}, ["9 strings", "max_stop_strings (8)"]),
    "stop_length": (GenerateRequest, {"prompt": "x", "stop": ["s" * 300]}, ["300 characters", "max_stop_chars (256)"]),
    "messages": (GenerateRequest, {"messages": MSG * 257}, ["at most 256"]),
    "engine_seed": (SamplingParams, {"seed": 2**64, "temperature": 1.0}, [str(2**64)]),
    "chat_seed": (ChatCompletionRequest, {"model": "base", "messages": MSG, "seed": 2**64}, [str(2**64)]),
    "top_k": (GenerateRequest, {"prompt": "x", "top_k": 5000}, ["top_k (5000)", "<= 1024"]),
    "chat_top_k": (ChatCompletionRequest, {"model": "base", "messages": MSG, "top_k": -1}, ["top_k (-1)", ">= 0"]),
    "chat_n": (ChatCompletionRequest, {"model": "base", "messages": MSG, "n": 3}, ["n (3)", "<= 1"]),
    "chat_max_tokens": (ChatCompletionRequest, {"model": "base", "messages": MSG, "max_tokens": 10**9}, ["<= 32768"]),
    "chat_max_completion_tokens": (ChatCompletionRequest, {"model": "base", "messages": MSG,
                                                           "max_completion_tokens": 0}, [">= 1"]),
    "chat_stop": (ChatCompletionRequest, {"model": "base", "messages": MSG, "stop": "s" * 300}, ["max_stop_chars"]),
    "chat_messages": (ChatCompletionRequest, {"model": "base", "messages": MSG * 257}, ["at most 256"]),
}


@pytest.mark.parametrize("case", sorted(FIELD_CASES))
def test_each_integer_and_list_limit_is_a_validation_error_naming_value_and_limit(case):
    model, body, words = FIELD_CASES[case]
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("seed", [0, 2**64 - 1, -(2**63), 2**63])
def test_every_accepted_seed_seeds_the_sampler(seed):
    from engine.sampling import RowSampler

    assert RowSampler(SamplingParams(seed=seed, temperature=1.0)).generator is not None


# -- over HTTP: the ingress app in front of a real BaseLLMServer (tiny base) --------------------------------

TOKEN = "t0ken"


@pytest.fixture(scope="module")
def http(seeded_store_root):
    import os

    from fastapi.testclient import TestClient

    from deployments.agent.server import AgentServer
    from deployments.ingress.http_app import build_http_app
    from deployments.ingress.server import IngressServer, IngressSettings
    from deployments.base_llm.server import BaseLLMServer
    from deployments.base_llm.settings import BaseLLMSettings
    from modelstore import ModelStore

    os.environ["JUSTNEWS_LIMITS_TEST_TOKEN"] = TOKEN
    llm_server = BaseLLMServer(BaseLLMSettings(store_root=str(seeded_store_root)))
    agent_map = load_agent_map()

    async def llm(model_id: str, body: dict) -> dict:
        handle = await llm_server.acquire_adapter(model_id) if model_id else None
        return (await llm_server.generate(body, handle, model_id)).model_dump()

    agents = {n: AgentServer(n, agent_map, llm=llm) for n, e in agent_map.agents.items() if e.served and e.kind == "llm"}

    async def agent(name: str, body: dict, strict: bool) -> dict:
        return (await agents[name].answer(body, strict=strict)).model_dump(mode="json")

    settings = IngressSettings(api_token_env="JUSTNEWS_LIMITS_TEST_TOKEN", max_in_flight=8)
    server = IngressServer(settings, agent_map, ModelStore(seeded_store_root), llm=llm, agent=agent)
    with TestClient(build_http_app(server), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        client.llm_server = llm_server  # type: ignore[attr-defined]
        yield client


def chat(**extra) -> dict:
    return {"model": "base", "messages": MSG, "max_tokens": 4, **extra}


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


# (route, body, status, error type, words the message must hold)
HTTP_CASES = {
    "seed_overflow": ("/v1/chat/completions", chat(seed=2**64, temperature=1.0), 400, "invalid_request",
                      [str(2**64), str(2**64 - 1)]),
    "n": ("/v1/chat/completions", chat(n=2), 400, "invalid_request", ["n (2)"]),
    "max_tokens_absurd": ("/v1/chat/completions", chat(max_tokens=10**9), 400, "invalid_request", ["32768"]),
    "max_tokens_over_engine": ("/v1/chat/completions", chat(max_tokens=10_000), 413, "request_too_large", ["512"]),
    "stop_count": ("/v1/chat/completions", chat(stop=["s"] * 9), 400, "invalid_request", ["max_stop_strings (8)"]),
    "content_chars": ("/v1/chat/completions", chat(messages=[{"role": "user", "content": "x" * 200_001}]), 413,
                      "request_too_large", ["200001 characters", "max_prompt_chars (200000)"]),
    # 350 objects = 700 JSON levels, ~19 KB: the operator's schema (deeper bodies fail JSON parsing: 400).
    "schema_depth_700": ("/v1/chat/completions", chat(response_format=schema_format(nested(350))), 400,
                         "limit_exceeded", ["max_schema_depth (32)"]),
    "schema_bytes": ("/v1/chat/completions", chat(response_format=schema_format(padded(40_000))), 413,
                     "schema_too_large", ["max_schema_bytes (32768)"]),
    "schema_properties": ("/v1/chat/completions", chat(response_format=schema_format(wide(300))), 400,
                          "limit_exceeded", ["max_schema_properties (256)"]),
    "schema_enum": ("/v1/chat/completions", chat(response_format=schema_format(enum(300))), 400, "limit_exceeded",
                    ["max_schema_enum_values (256)"]),
    "agent_field_length": ("/agents/critic", {"headline": "h", "text": "x" * 8001}, 400, "invalid_request",
                           ["8000"]),
    "agent_prompt_tokens": ("/agents/critic", {"headline": "h", "text": "word " * 1600}, 413, "request_too_large",
                            ["max_prompt_tokens"]),
}


@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_each_limit_over_http_is_a_json_4xx_naming_it(http, case):
    route, body, status, error_type, words = HTTP_CASES[case]
    before = http.llm_server.engine.stats()["rows"]
    reply = http.post(route, json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert (error["status"], error["type"]) == (status, error_type), error
    for word in words:
        assert word in error["message"], error["message"]
    if case != "agent_prompt_tokens":  # tokens are counted by the engine (in the batch call, before any forward)
        assert http.llm_server.engine.stats()["rows"] == before  # refused before anything ran


def test_a_schema_at_the_limits_is_served_over_http(http):
    reply = http.post("/v1/chat/completions", json=chat(max_tokens=64, response_format=schema_format(
        {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})))
    assert reply.status_code == 200, reply.text
    assert json.loads(reply.json()["choices"][0]["message"]["content"]).keys() == {"ok"}


def test_top_k_reaches_the_sampler_through_the_chat_route(http):
    greedy = http.post("/v1/chat/completions", json=chat(max_tokens=6))
    top1 = http.post("/v1/chat/completions", json=chat(max_tokens=6, temperature=2.0, top_k=1, seed=3))
    assert greedy.status_code == top1.status_code == 200, top1.text
    assert top1.json()["choices"][0]["message"]["content"] == greedy.json()["choices"][0]["message"]["content"]
