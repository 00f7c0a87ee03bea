"""AGENT_MODEL_MAP.json: the shipped map loads, and every kind of mistake names its agent and field."""

from __future__ import annotations

import copy
import json

import pytest

from agent_graph import AgentMapError, UnknownAgent, agent_names, load_agent_map
from agent_graph.schema import AgentEntry, AgentMap
from modelstore import ModelStore
from modelstore.seed import TEXT_AGENTS, adapter_ref

ALL_AGENTS = {*TEXT_AGENTS, "scout", "memory", "newsreader"}


def test_shipped_map_covers_every_agent():
    agent_map = load_agent_map()
    assert set(agent_map.agents) == ALL_AGENTS and len(ALL_AGENTS) == 11
    assert set(agent_names()) <= set(agent_map.agents)
    for agent in TEXT_AGENTS:
        entry = agent_map.entry(agent)
        assert entry.kind == "llm"
        assert entry.adapter == adapter_ref(agent, "current")
        assert entry.base == "base_models@v1-tiny-mistral"
        assert entry.fallback[-1] == "legacy" and agent_map.legacy[agent].scheme == "heuristic"
    assert {agent_map.entry(a).kind for a in ("scout", "memory")} == {"embedding"}
    assert agent_map.entry("newsreader").kind == "multimodal" and agent_map.entry("newsreader").served


def test_entry_round_trips_json():
    agent_map = load_agent_map()
    again = AgentMap.model_validate_json(agent_map.model_dump_json())
    assert again == agent_map


def test_unknown_agent_lists_known():
    with pytest.raises(UnknownAgent, match="known agents: analyst, chief_editor"):
        load_agent_map().entry("nobody")


def _set(path: str, value):
    """An edit of the map JSON: set (or, with value ``...``, delete) ``agents.<agent>.<field>``."""

    def edit(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value

    return edit


# (edit, agent, field, message fragment)
MISTAKES = [
    (_set("agents.critic.adapter", "../x"), "critic", "adapter", "invalid model ref '../x'"),
    (_set("agents.critic.adapter", "base_models@v1"), "critic", "adapter", "an adapter must be"),
    (_set("agents.critic.base", "critic/x@v1"), "critic", "base", "a base must be"),
    (_set("agents.critic.adapter", "analyst/mistral_analyst_v1@current"), "critic", "adapter",
     "adapter of agent 'analyst'"),
    (_set("agents.analyst.variant_preference", ["fp16", "int3"]), "analyst", "variant_preference[1]", "'int3'"),
    (_set("agents.analyst.variant_preference", []), "analyst", "variant_preference", "at least 1"),
    (_set("agents.critic.variant_preference", ["bf16", "bnb-4bit"]), "critic", "variant_preference",
     "allow_quantized is false"),
    (_set("agents.critic.variant_preference", ["bf16", "bf16"]), "critic", "variant_preference", "more than once"),
    (_set("agents.critic.base", ...), "critic", "base", "needs a base ref"),
    (_set("agents.critic.kind", ...), "critic", "kind", "Field required"),
    (_set("agents.critic.kind", "robot"), "critic", "kind", "'robot'"),
    (_set("agents.critic.kind", "embedding"), "critic", "base", "keeps its own weights"),
    (_set("agents.critic.fallback", []), "critic", "fallback", "at least 1"),
    (_set("agents.critic.fallback", ["adapter", "teleport"]), "critic", "fallback[1]", "'teleport'"),
    (_set("agents.critic.fallback", ["base", "base"]), "critic", "fallback", "more than once"),
    (_set("agents.scout.fallback", ["adapter", "legacy"]), "scout", "fallback", "step 'adapter' but the entry has no adapter"),
    (_set("agents.critic.max_new_tokens", 0), "critic", "max_new_tokens", "greater than or equal to 1"),
    (_set("agents.critic.temperature", 9.0), "critic", "temperature", "less than or equal to 2"),
    (_set("agents.critic.colour", "red"), "critic", "colour", "Extra inputs are not permitted"),
    (_set("agents.scout.model", ...), "scout", "model", "needs its specialised model id"),
    (_set("agents.scout.adapter", "scout/x@v1"), "scout", "adapter", "keeps its own weights"),
    (_set("agents.synthesizer.task_adapters", {"summary": "../evil"}), "synthesizer", "task_adapters",
     "task 'summary': invalid model ref '../evil'"),
    (_set("agents.synthesizer.task_adapters", {"Bad Task": "synthesizer/a@v1"}), "synthesizer", None, "should match"),
    (_set("agents.Bad-Name", {}), "Bad-Name", None, "should match pattern"),
    (_set("agents.critic", ...), "critic", None, "has a contract but no entry"),
    (_set("agents.oracle", {"kind": "llm", "base": "base_models@v1", "variant_preference": ["fp16"],
                            "fallback": ["base"]}), "oracle", "kind", "no contract"),
    (_set("agents.scout.kind", "multimodal"), "scout", "kind", "its contract is 'embedding'"),
]


@pytest.mark.parametrize("edit,agent,field,fragment", MISTAKES, ids=[f"{m[1]}-{m[2]}-{i}" for i, m in enumerate(MISTAKES)])
def test_map_mistake_names_agent_and_field(write_map, shipped_map_json, edit, agent, field, fragment):
    data = copy.deepcopy(shipped_map_json)
    edit(data)
    with pytest.raises(AgentMapError) as info:
        load_agent_map(write_map(data))
    problems = [p for p in info.value.problems if p.agent == agent and (field is None or p.field == field)]
    assert problems, f"no problem for agent {agent!r} field {field!r} in:\n{info.value}"
    assert any(fragment in p.message for p in problems), str(info.value)
    text = str(info.value)
    assert text.startswith("AGENT_MODEL_MAP.json: ") and f"agent {agent!r}" in text
    if field is not None:
        assert f"field {field!r}" in text


def test_message_shape_for_a_bad_ref(write_map, shipped_map_json):
    data = copy.deepcopy(shipped_map_json)
    data["agents"]["critic"]["adapter"] = "../x"
    with pytest.raises(AgentMapError, match=r"^AGENT_MODEL_MAP.json: agent 'critic', field 'adapter': invalid model ref '../x'"):
        load_agent_map(write_map(data))


def test_all_mistakes_reported_at_once(write_map, shipped_map_json):
    data = copy.deepcopy(shipped_map_json)
    data["agents"]["critic"]["adapter"] = "../x"
    data["agents"]["analyst"]["temperature"] = -1
    data["agents"]["scout"]["fallback"] = []
    with pytest.raises(AgentMapError) as info:
        load_agent_map(write_map(data))
    assert {(p.agent, p.field) for p in info.value.problems} >= {
        ("critic", "adapter"), ("analyst", "temperature"), ("scout", "fallback")}


@pytest.mark.parametrize("legacy,fragment", [
    ({"ref": "heuristic:crystal_ball"}, "unknown heuristic 'heuristic:crystal_ball'"),
    ({"ref": "heuristic:token_overlap"}, "answers agent 're_ranker'"),
    ({"ref": "ftp:somewhere"}, "should match pattern"),
])
def test_legacy_mistakes(write_map, shipped_recommended_json, legacy, fragment):
    rec = copy.deepcopy(shipped_recommended_json)
    rec["legacy"]["critic"] = legacy
    with pytest.raises(AgentMapError) as info:
        load_agent_map(write_map(recommended_json=rec))
    assert any(p.agent == "critic" and fragment in p.message for p in info.value.problems), str(info.value)


def test_legacy_step_needs_a_legacy_entry(write_map, shipped_recommended_json):
    rec = copy.deepcopy(shipped_recommended_json)
    del rec["legacy"]["critic"]
    with pytest.raises(AgentMapError, match="agent 'critic', field 'fallback': step 'legacy'"):
        load_agent_map(write_map(recommended_json=rec))


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "not readable JSON"),
    ("[]", "expected a JSON object"),
    ('{"schema_version": 1, "agents": {}, "legacy": {}}', "belong in AGENT_MODEL_RECOMMENDED.json"),
    ('{"schema_version": 2, "agents": {}}', "schema_version"),
])
def test_malformed_files(write_map, content, fragment):
    path = write_map()
    path.write_text(content)
    with pytest.raises(AgentMapError, match=fragment):
        load_agent_map(path)


def test_missing_file(tmp_path):
    with pytest.raises(AgentMapError, match="file not found"):
        load_agent_map(tmp_path / "nope.json")


def test_task_router_picks_task_adapter():
    entry = AgentEntry(kind="llm", base="base_models@v1", adapter="synthesizer/a@v1",
                       task_adapters={"synthesis": "synthesizer/b@v2"}, variant_preference=["fp16"],
                       fallback=["adapter", "base"])
    assert entry.adapter_for("synthesis") == "synthesizer/b@v2"
    assert entry.adapter_for("summary") == entry.adapter_for(None) == "synthesizer/a@v1"
    assert entry.adapter == "synthesizer/a@v1" and str(entry.base_ref) == "base_models@v1"


def test_refs_are_canonicalised():
    entry = AgentEntry(kind="llm", base="base_models", adapter="critic/a", variant_preference=["fp16"],
                       fallback=["adapter"])
    assert (entry.base, entry.adapter) == ("base_models@current", "critic/a@current")


def test_shipped_map_resolves_in_seeded_store(seeded_store_root):
    load_agent_map().validate_against_store(ModelStore(seeded_store_root))


def test_store_problems_reported_all_at_once(seeded_store_root, write_map, shipped_map_json):
    data = copy.deepcopy(shipped_map_json)
    data["agents"]["critic"]["adapter"] = "critic/mistral_critic_v1@seed-99"
    data["agents"]["analyst"]["base"] = "base_models@v9-missing"
    data["agents"]["synthesizer"]["task_adapters"] = {"synthesis": "synthesizer/never_published@v1"}
    agent_map = load_agent_map(write_map(data))
    store = ModelStore(seeded_store_root)
    problems = agent_map.store_problems(store)
    where = {(p.agent, p.field) for p in problems}
    assert {("critic", "adapter"), ("analyst", "base"), ("synthesizer", "task_adapters.synthesis")} <= where
    with pytest.raises(AgentMapError) as info:
        agent_map.validate_against_store(store)
    text = str(info.value)
    assert "seed-99" in text and "v9-missing" in text and "never_published" in text
    assert len(info.value.problems) == len(problems) >= 3


def test_store_problem_for_adapter_on_other_base(store):
    # Re-publish critic's adapter as if validated against another base version.
    from modelstore import parse_ref

    resolved = store.resolve(adapter_ref("critic", "current"))
    manifest = json.loads((resolved.path / "manifest.json").read_text())
    manifest["adapter"]["base_ref"] = "base_models@v0-other"
    (resolved.path / "manifest.json").write_text(json.dumps(manifest))
    problems = load_agent_map().store_problems(store)
    assert [(p.agent, p.field) for p in problems] == [("critic", "adapter")]
    assert "base_models@v0-other" in problems[0].message
    assert parse_ref(adapter_ref("critic", "current")).agent == "critic"


def test_store_problem_when_base_offers_no_acceptable_variant(store):
    resolved = store.resolve("base_models@v1-tiny-mistral")
    manifest = json.loads((resolved.path / "manifest.json").read_text())
    manifest["approx_vram_mb"] = {"bnb-4bit": manifest["approx_vram_mb"]["bnb-4bit"]}
    manifest["quantized_variants"] = ["bnb-4bit"]
    manifest["variant_preference"] = ["bnb-4bit"]
    (resolved.path / "manifest.json").write_text(json.dumps(manifest))
    problems = load_agent_map().store_problems(store)
    # No shipped llm entry accepts bnb-4bit, so every one of them is flagged.
    flagged = {p.agent for p in problems if p.field == "variant_preference"}
    assert flagged == set(TEXT_AGENTS)
    assert all("offers ['bnb-4bit']" in p.message for p in problems if p.field == "variant_preference")
