"""Agent contracts: models round-trip and refuse bad values, schemas compile in xgrammar, prompts render."""

from __future__ import annotations

import json
import re

import pytest
import xgrammar as xgr
from pydantic import ValidationError

from agent_graph import AGENTS, ContractError, InvalidAgentInput, UnknownAgent, get_spec
from agent_graph.contracts import schema_skeleton
from agent_graph.heuristics import HEURISTICS
from modelstore.seed import TEXT_AGENTS

from .images import heuristic as run_with_images

LLM_AGENTS = sorted(TEXT_AGENTS)
SPECS = sorted(AGENTS)


def _example_output(name: str):
    spec = get_spec(name)
    heuristic = next(n for n, h in HEURISTICS.items() if h.agent == name)
    return run_with_images(heuristic, spec.example)


def test_registry_holds_every_text_embedding_and_multimodal_agent():
    assert set(AGENTS) == {*TEXT_AGENTS, "scout", "memory", "newsreader"}
    assert {n for n, s in AGENTS.items() if s.kind == "llm"} == set(TEXT_AGENTS)
    assert {n for n, s in AGENTS.items() if s.kind == "multimodal"} == {"newsreader"}


def test_unknown_agent_lists_known_agents():
    with pytest.raises(UnknownAgent, match="unknown agent 'oracle'; known agents: analyst, chief_editor, critic"):
        get_spec("oracle")


@pytest.mark.parametrize("name", SPECS)
def test_models_round_trip_json(name):
    spec = get_spec(name)
    out = _example_output(name)
    for model, value in ((spec.input_model, spec.example), (spec.output_model, out)):
        assert model.model_validate_json(value.model_dump_json()) == value
        assert model.model_validate(json.loads(value.model_dump_json())) == value


# (agent, "input"|"output", key, bad value, fragment of the error)
BAD_VALUES = [
    ("synthesizer", "input", "articles", [], "at least 1 item"),
    ("synthesizer", "input", "task", "poem", "'summary' or 'synthesis'"),
    ("synthesizer", "output", "key_points", ["x"] * 5, "at most 4 items"),
    ("synthesizer", "output", "sources", [6], "less than or equal to 5"),
    ("journalist", "input", "facts", ["f"] * 13, "at most 12 items"),
    ("journalist", "input", "max_words", 5000, "less than or equal to 100"),
    ("journalist", "output", "body", "x" * 601, "at most 600 characters"),
    ("chief_editor", "input", "claims_refuted", -1, "greater than or equal to 0"),
    ("chief_editor", "output", "decision", "shred", "'publish', 'revise', 'reject' or 'escalate'"),
    ("chief_editor", "output", "notes", ["n"] * 5, "at most 4 items"),
    ("reasoning", "input", "question", "", "at least 1 character"),
    ("reasoning", "output", "steps", [], "at least 1 item"),
    ("reasoning", "output", "confidence", 1.5, "less than or equal to 1"),
    ("critic", "input", "bias", -0.1, "greater than or equal to 0"),
    ("critic", "output", "verdict", "maybe", "'pass', 'revise' or 'reject'"),
    ("critic", "output", "issues", [{"kind": "spelling", "severity": "low", "note": "x"}], "'accuracy'"),
    ("fact_checker", "input", "claims", ["c"] * 8, "at most 7 items"),
    ("fact_checker", "input", "evidence", ["e" * 1001], "at most 1000 characters"),
    ("fact_checker", "output", "verdicts", [{"verdict": "true", "evidence": [], "confidence": 0.5}], "'supported'"),
    ("analyst", "input", "text", "x" * 8001, "at most 8000 characters"),
    ("analyst", "output", "persuasion", 2, "less than or equal to 1"),
    ("analyst", "output", "flags", ["clickbait"], "'loaded_language'"),
    ("re_ranker", "input", "passages", ["p"] * 17, "at most 16 items"),
    ("re_ranker", "output", "scores", [0.5, -0.2], "greater than or equal to 0"),
    ("scout", "input", "texts", [], "at least 1 item"),
    ("scout", "output", "dimensions", 3, "expected dimensions (3)"),
    ("memory", "input", "normalize", "perhaps", "valid boolean"),
    ("memory", "output", "vectors", [], "at least 1 item"),
    ("newsreader", "input", "image", "", "at least 1 character"),
    ("newsreader", "input", "text", "t" * 1001, "at most 1000 characters"),
    ("newsreader", "output", "image_kind", "cartoon", "'chart', 'photo', 'text_page' or 'map'"),
    ("newsreader", "output", "headline", "h" * 121, "at most 120 characters"),
    ("newsreader", "output", "caption", "", "at least 1 character"),
    ("newsreader", "output", "confidence", 1.01, "less than or equal to 1"),
]


@pytest.mark.parametrize("name,side,key,bad,fragment", BAD_VALUES, ids=[f"{b[0]}-{b[1]}-{b[2]}" for b in BAD_VALUES])
def test_models_reject_bad_values(name, side, key, bad, fragment):
    spec = get_spec(name)
    model, value = (spec.input_model, spec.example) if side == "input" else (spec.output_model, _example_output(name))
    data = json.loads(value.model_dump_json())
    data[key] = bad
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        model.model_validate(data)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("side", ["input", "output"])
def test_models_reject_unknown_keys(name, side):
    spec = get_spec(name)
    model, value = (spec.input_model, spec.example) if side == "input" else (spec.output_model, _example_output(name))
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate({**json.loads(value.model_dump_json()), "surprise": 1})


def test_every_agent_covered_by_bad_value_table():
    assert {(b[0], b[1]) for b in BAD_VALUES} == {(n, s) for n in SPECS for s in ("input", "output")}


@pytest.fixture(scope="module")
def compiler(tokenizer):
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    return xgr.GrammarCompiler(info, cache_enabled=False, max_threads=1)


@pytest.mark.parametrize("name", LLM_AGENTS)
def test_output_schema_compiles_in_xgrammar(name, compiler):
    spec = get_spec(name)
    for schema in (spec.json_schema(), spec.json_schema(spec.example)):
        text = json.dumps(schema)
        assert "x-" not in "".join(json.dumps(k) for k in _keys(schema)), "markers must not reach the grammar"
        xgr.Grammar.from_json_schema(text, any_whitespace=False)
        # The engine's exact call: compact separators, strict mode.
        compiler.compile_json_schema(text, any_whitespace=False, separators=(",", ":"), strict_mode=True)


def _keys(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _keys(v)
    elif isinstance(node, list):
        for v in node:
            yield from _keys(v)


@pytest.mark.parametrize("name", LLM_AGENTS)
def test_heuristic_output_is_accepted_by_the_grammar(name, compiler):
    """The compact JSON of a valid output walks the narrowed grammar to its end: schema and model agree."""
    spec = get_spec(name)
    compiled = compiler.compile_json_schema(json.dumps(spec.json_schema(spec.example)), any_whitespace=False,
                                            separators=(",", ":"), strict_mode=True)
    matcher = xgr.GrammarMatcher(compiled)
    text = _example_output(name).model_dump_json()
    assert matcher.accept_string(text), text
    assert matcher.is_terminated() or matcher.accept_token(matcher.stop_token_ids[0])  # complete value


def test_schema_narrowed_to_the_input():
    fc = get_spec("fact_checker")
    schema = fc.json_schema(fc.example)  # 2 claims, 2 evidence passages
    verdicts = schema["properties"]["verdicts"]
    assert verdicts["minItems"] == verdicts["maxItems"] == 2
    evidence = schema["$defs"]["ClaimVerdict"]["properties"]["evidence"]
    assert evidence["maxItems"] == 2 and evidence["items"]["maximum"] == 1
    rr = get_spec("re_ranker")
    scores = rr.json_schema(rr.example)["properties"]["scores"]
    assert scores["minItems"] == scores["maxItems"] == 3
    assert "maxItems" in rr.json_schema()["properties"]["scores"] and "minItems" not in rr.json_schema()["properties"]["scores"]
    # Editing a returned schema does not leak into the next one.
    rr.json_schema()["properties"].clear()
    assert "scores" in rr.json_schema()["properties"]


def test_schema_skeleton_shows_keys_in_order():
    skeleton = schema_skeleton(get_spec("critic").json_schema())
    assert skeleton.startswith('{"verdict":"pass|revise|reject","issues":[{"kind":"accuracy|')
    assert get_spec("critic").system_prompt.endswith(skeleton)


@pytest.mark.parametrize("name", LLM_AGENTS)
def test_prompt_uses_chat_template_and_contains_input(name, tokenizer):
    spec = get_spec(name)
    messages = spec.build_messages(spec.example)
    assert [m["role"] for m in messages] == ["system", "user"]
    prompt = spec.prompt(spec.example, tokenizer)
    assert prompt == tokenizer.apply_chat_template(messages, tokenize=False)
    assert prompt.startswith("<s>[INST] " + spec.system_prompt) and prompt.endswith(" [/INST]")
    assert messages[1]["content"] in prompt
    # Every string of the input appears in the prompt (the examples are short, nothing is clipped).
    for value in _strings(spec.example.model_dump()):
        assert value in prompt, value
    assert spec.prompt(spec.example, tokenizer) == prompt  # deterministic


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def test_long_articles_are_clipped_in_the_prompt():
    spec = get_spec("synthesizer")
    inp = spec.input_model(task="synthesis", articles=[{"title": f"t{i}", "text": "word " * 1200} for i in range(6)])
    assert len(spec.build_messages(inp)[1]["content"]) < 6 * 600


def test_embedding_agents_are_not_prompted():
    with pytest.raises(ContractError, match="embedding agent 'scout' is not prompted"):
        get_spec("scout").build_messages(get_spec("scout").example)


def test_parse_accepts_compact_json_and_cross_checks():
    spec = get_spec("re_ranker")
    out = spec.parse('{"scores":[0.9,0.1,0.5]}', spec.example)
    assert out.scores == [0.9, 0.1, 0.5] and out.ranking() == [0, 2, 1]
    # Chatter around the object (an unconstrained legacy model) is tolerated.
    assert spec.parse('Sure! {"scores":[0.9,0.1,0.5]} Hope this helps.', spec.example) == out


@pytest.mark.parametrize("name,text,fragment", [
    ("critic", "", "not JSON"),
    ("critic", "verdict: pass", "not JSON"),
    ("critic", '{"verdict":"pass","issues":[', "not JSON"),
    ("critic", "[1, 2]", "expected a JSON object"),
    ("critic", '{"verdict":"maybe","issues":[]}', "verdict: Input should be 'pass', 'revise' or 'reject'"),
    ("critic", '{"verdict":"pass"}', "issues: Field required"),
    ("re_ranker", '{"scores":[0.9]}', "scores has 1 items, expected one per input passages (3)"),
    ("fact_checker", '{"verdicts":[{"verdict":"supported","evidence":[5],"confidence":0.5},'
                     '{"verdict":"refuted","evidence":[],"confidence":0.5}]}', "refers to evidence[5]"),
    ("synthesizer", '{"headline":"h","summary":"s","key_points":[],"sources":[3]}', "sources refers to articles[3]"),
])
def test_parse_refuses_broken_replies(name, text, fragment):
    spec = get_spec(name)
    with pytest.raises(ContractError) as info:
        spec.parse(text, spec.example)
    assert fragment in str(info.value)
    assert info.value.agent == name and info.value.text == text
    assert isinstance(info.value, ValueError)


def test_load_input_refuses_bad_request():
    with pytest.raises(InvalidAgentInput, match="agent 're_ranker': invalid input: passages: List should have at least 1"):
        get_spec("re_ranker").load_input({"query": "q", "passages": []})
    assert get_spec("re_ranker").load_input('{"query":"q","passages":["p"]}').passages == ["p"]


def test_synthesis_needs_two_articles():
    with pytest.raises(InvalidAgentInput, match="task 'synthesis' needs at least 2 articles, got 1"):
        get_spec("synthesizer").load_input({"task": "synthesis", "articles": [{"title": "t", "text": "x"}]})
    assert get_spec("synthesizer").task_of(get_spec("synthesizer").example) == "synthesis"


def test_schema_for_empty_evidence_compiles_and_allows_only_empty_refs(compiler):
    spec = get_spec("fact_checker")
    inp = spec.load_input({"claims": ["c"], "evidence": []})
    compiled = compiler.compile_json_schema(json.dumps(spec.json_schema(inp)), any_whitespace=False,
                                            separators=(",", ":"), strict_mode=True)
    assert xgr.GrammarMatcher(compiled).accept_string('{"verdicts":[{"verdict":"unverified","evidence":[],"confidence":0.3}]}')
    assert not xgr.GrammarMatcher(compiled).accept_string('{"verdicts":[{"verdict":"unverified","evidence":[0]')
