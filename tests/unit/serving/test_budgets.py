"""Output budgets fit the contracts: counted per agent, proved on the real engine, and truncation is visible.

The budgets come from ``agent_graph.budget`` (the one place that sizes them). Here: the shipped map holds
every agent's largest reply under the engine's default limit, the counting matches the grammar, the seeded
(junk) adapters complete valid JSON at the largest inputs within the shipped budgets, and a reply that does
hit its budget is reported as ``length`` (OpenAI path) or falls back with the reason (agent routes).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from agent_graph import InvalidAgentInput, generation_request, get_spec, load_agent_map
from agent_graph.budget import UnboundedSchema, agent_budget, schema_budget, text_tokens_per_char
from engine import EngineConfig

LLM_AGENTS = ["synthesizer", "journalist", "chief_editor", "reasoning", "critic", "fact_checker", "analyst",
              "re_ranker"]
WORDS = "bridge budget council vote"


@pytest.fixture(scope="module")
def served(seeded_store_root):
    """The seeded store's base as the BaseLLM replica loads it: its tokenizer is the one budgets count with."""
    from modelstore import ModelStore
    from modelstore.loading import load_base

    return load_base(ModelStore(seeded_store_root), "base_models@current", "fp32", device="cpu")


def _largest_inputs():
    """Every agent's input with every list at its contract's max_length (short strings: the output
    schema depends on list lengths only, and short prompts keep the test fast)."""
    from agent_graph.agents import (analyst, chief_editor, critic, fact_checker, journalist, re_ranker, reasoning,
                                    synthesizer)

    fc, rr, jn = fact_checker, re_ranker, journalist
    return {
        "synthesizer": synthesizer.SynthesizerInput(task="synthesis", articles=[
            synthesizer.SourceArticle(title=f"t{i}", text=f"text {i} {WORDS}") for i in range(synthesizer.MAX_ARTICLES)]),
        "journalist": jn.JournalistInput(topic=WORDS, facts=[f"fact {i} {WORDS}" for i in range(jn.MAX_FACTS)],
                                         style="feature", max_words=jn.MAX_WORDS),
        "chief_editor": chief_editor.ChiefEditorInput(headline=WORDS, text=WORDS, critic_issues=["i"] * 8),
        "reasoning": reasoning.ReasoningInput(question=WORDS + "?",
                                              premises=[f"premise {i}" for i in range(reasoning.MAX_PREMISES)]),
        "critic": critic.CriticInput(headline=WORDS, text=WORDS),
        "fact_checker": fc.FactCheckerInput(claims=[f"claim {i} {WORDS}" for i in range(fc.MAX_CLAIMS)],
                                            evidence=[f"evidence {i}" for i in range(fc.MAX_EVIDENCE)]),
        "analyst": analyst.AnalystInput(title=WORDS, text=WORDS),
        "re_ranker": rr.ReRankerInput(query=WORDS, passages=[f"passage {i} {WORDS}" for i in range(rr.MAX_PASSAGES)]),
    }


# -- counting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("agent", LLM_AGENTS)
def test_the_shipped_budget_holds_the_largest_reply_and_fits_the_default_engine(agent, served):
    budget = agent_budget(agent, served.tokenizer)
    entry = load_agent_map().entry(agent)
    limit = EngineConfig().max_new_tokens_limit
    assert budget.tokens <= entry.max_new_tokens <= limit, (budget, entry.max_new_tokens, limit)


@pytest.mark.parametrize("agent,n", [("fact_checker", 7), ("re_ranker", 16)])
def test_the_largest_input_is_what_the_api_accepts_and_one_more_item_is_refused(agent, n):
    spec = get_spec(agent)
    inp = _largest_inputs()[agent]
    field = "claims" if agent == "fact_checker" else "passages"
    assert len(getattr(inp, field)) == n
    with pytest.raises(InvalidAgentInput, match=f"{field}: List should have at most {n} items"):
        spec.load_input({**inp.model_dump(), field: [*getattr(inp, field), "one more"]})
    # The narrowed schema of the largest input is the one the budget counts.
    assert agent_budget(agent, _Tok(), inp).tokens == agent_budget(agent, _Tok()).tokens


def _map_with(tmp_path, agent: str, max_new_tokens: int):
    """The shipped map with one agent's budget changed, written beside its legacy companion."""
    from agent_graph.schema import RECOMMENDED_FILE, default_map_path

    data = json.loads(default_map_path().read_text())
    data["agents"][agent]["max_new_tokens"] = max_new_tokens
    (tmp_path / default_map_path().name).write_text(json.dumps(data))
    (tmp_path / RECOMMENDED_FILE).write_text(default_map_path().with_name(RECOMMENDED_FILE).read_text())
    return load_agent_map(tmp_path / default_map_path().name)


def test_a_low_budget_in_the_map_is_a_load_problem_naming_value_and_need(seeded_store_root, tmp_path):
    from modelstore import ModelStore

    agent_map = _map_with(tmp_path, "fact_checker", 160)  # what the operator's cluster ran with
    problems = agent_map.store_problems(ModelStore(seeded_store_root))
    [problem] = [p for p in problems if p.field == "max_new_tokens"]
    assert problem.agent == "fact_checker"
    assert "max_new_tokens (160) is below the" in problem.message and "tokenizer of base_models@" in problem.message


class _Tok:
    """A tokenizer with one token per character: budgets of text-free schemas must not depend on it."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text)))}


@pytest.mark.parametrize("schema,chars", [
    ({"type": "object", "properties": {"s": {"type": "number", "minimum": 0, "maximum": 1}}}, len('{"s":0.123456}')),
    ({"type": "array", "maxItems": 3, "items": {"type": "integer", "minimum": 0, "maximum": 11}}, len("[10,11,11]")),
    ({"type": "object", "properties": {"v": {"enum": ["pass", "revise"]}, "b": {"type": "boolean"}}},
     len('{"v":"revise","b":false}')),
    ({"type": "string", "maxLength": 5}, len('"abcde"')),
])
def test_the_longest_value_is_counted_character_for_character(schema, chars):
    assert schema_budget(schema, _Tok()).tokens == chars + 1  # + the grammar's stop token


@pytest.mark.parametrize("schema,path", [
    ({"type": "object", "properties": {"t": {"type": "string"}}}, "$.t: string without maxLength"),
    ({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1}}, "$: array without maxItems"),
    ({"type": "object", "properties": {"x": {"type": "number", "minimum": 0}}}, "$.x: number without both"),
])
def test_an_unbounded_schema_has_no_budget_and_the_error_names_the_path(schema, path):
    with pytest.raises(UnboundedSchema, match=path.replace("$", r"\$").replace("[", r"\[")):
        schema_budget(schema, _Tok())


def test_the_number_and_string_rules_are_the_grammar_s_own(served):
    """The counting assumes xgrammar's json grammar: bounded numbers have at most 6 fraction digits and
    maxLength strings take no escapes. If an upgrade changes either, this fails before budgets go wrong."""
    import xgrammar as xgr

    from engine.constraints import GrammarCache

    cache = GrammarCache(served.tokenizer, served.model.get_output_embeddings().weight.shape[0])
    try:
        def accepts(schema: dict, text: str) -> bool:
            return xgr.GrammarMatcher(cache.get(schema)).accept_string(text)

        score = {"type": "object", "properties": {"s": {"type": "number", "minimum": 0.0, "maximum": 1.0}},
                 "required": ["s"]}
        assert accepts(score, '{"s":0.123456}') and accepts(score, '{"s":1.000000}')
        assert not accepts(score, '{"s":0.1234567}') and not accepts(score, '{"s":1e-5}')
        text = {"type": "object", "properties": {"t": {"type": "string", "maxLength": 3}}, "required": ["t"]}
        assert accepts(text, '{"t":"abc"}') and not accepts(text, '{"t":"\\u0041"}')
    finally:
        cache.close()
    assert 0 < text_tokens_per_char(served.tokenizer) <= 1


# -- proof on the real engine -------------------------------------------------------------------------


def test_every_agent_completes_valid_json_at_its_largest_input_within_its_budget(served, seeded_store_root):
    """One batched generate call: each agent's real request (prompt, narrowed schema, shipped budget) on its
    seeded adapter. The adapters write junk, but the grammar keeps it valid JSON; the budget must let it end."""
    from modelstore import ModelStore

    from engine import InferenceEngine
    from engine.params import GenerationRequest, SamplingParams

    store, agent_map, inputs = ModelStore(seeded_store_root), load_agent_map(), _largest_inputs()
    engine = InferenceEngine(served.model, served.tokenizer, EngineConfig())
    requests = []
    for agent in LLM_AGENTS:
        entry = agent_map.entry(agent)
        engine.load_adapter(agent, store.resolve(entry.adapter).path)
        body = generation_request(get_spec(agent), inputs[agent], entry)
        prompt = served.tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        requests.append(GenerationRequest(prompt=prompt, adapter=agent, json_schema=body["json_schema"],
                                          params=SamplingParams(max_new_tokens=body["max_new_tokens"])))
    results = engine.generate(requests)
    for agent, result in zip(LLM_AGENTS, results):
        assert result.finish_reason == "stop", (agent, result.completion_tokens, result.text[-80:])
        assert result.completion_tokens <= agent_budget(agent, served.tokenizer).tokens
        get_spec(agent).parse(result.text, inputs[agent])  # valid under the contract, fitted to the input


# -- a reply that hits its budget -----------------------------------------------------------------------


@pytest.fixture
def llm_server(seeded_store_root):
    """A real BaseLLM replica per test: its batcher belongs to the event loop of the test's asyncio.run."""
    from deployments.base_llm.server import BaseLLMServer
    from deployments.base_llm.settings import BaseLLMSettings

    return BaseLLMServer(BaseLLMSettings(store_root=str(seeded_store_root)))


def test_a_json_object_chat_reply_cut_at_max_tokens_reports_length(llm_server):
    """``/v1/chat/completions`` with ``json_object``: the open schema lets a reply run on; at max_tokens the
    text is unfinished JSON and the response says ``length`` (whole and streamed)."""
    from deployments.ingress.openai_api import completion_response, generate_body, sse_events
    from deployments.ingress.openai_protocol import ChatCompletionRequest

    req = ChatCompletionRequest(model="base", max_tokens=8, response_format={"type": "json_object"},
                                messages=[{"role": "user", "content": "Write a long JSON report on the bridge."}])
    reply = asyncio.run(llm_server.generate(generate_body(req, 256))).model_dump()
    assert reply["completion_tokens"] == 8
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply["text"])
    assert completion_response(req, reply).choices[0].finish_reason == "length"
    events = [json.loads(e[6:]) for e in sse_events(req, reply) if e.startswith("data: {")]
    assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == ["length"]


def test_an_agent_reply_cut_at_its_budget_falls_back_with_the_reason(llm_server, tmp_path):
    """With a budget too small for the contract, the adapter's real reply is cut; the agent answers from the
    next step and records why, naming the budget."""
    from deployments.agent.server import AgentServer

    agent_map = _map_with(tmp_path, "re_ranker", 12)

    async def llm(model_id: str, body: dict) -> dict:
        adapter = await llm_server.acquire_adapter(model_id) if model_id else None
        return (await llm_server.generate(body, adapter, model_id)).model_dump()

    server = AgentServer("re_ranker", agent_map, llm=llm)
    reply = asyncio.run(server.answer(_largest_inputs()["re_ranker"]))
    assert reply.step == "legacy" and reply.fallback
    assert [f.route.split(":")[0] for f in reply.failures] == ["adapter", "base"]
    assert all("truncated at max_new_tokens (12)" in f.reason for f in reply.failures)
    assert len(reply.output["scores"]) == 16
