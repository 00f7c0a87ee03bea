"""build_app without a cluster: it fails fast on a store that lacks something, applies an emitted placement
unchanged (round trip: emit, build, compare what Serve receives), and puts explicit args above the plan."""

from __future__ import annotations

import shutil

import pytest
import yaml

from deployments.app import AppBuildError, AppSettings, build_app, plan_placement, pool_settings


def test_a_missing_store_fails_fast_saying_how_to_build_it(tmp_path):
    with pytest.raises(AppBuildError, match="does not exist.*modelstore seed"):
        build_app({"store_root": str(tmp_path / "nowhere"), "inventory": "none"})


def test_a_store_missing_an_adapter_names_the_agent_and_the_ref(store):
    shutil.rmtree(store.root / "critic")
    with pytest.raises(AppBuildError, match=r"(?s)agent 'critic', field 'adapter'.*critic/mistral_critic_v1@current"):
        build_app({"store_root": str(store.root), "inventory": "none"})


def test_the_shipped_serve_config_builds_on_a_seeded_store(seeded_store_root):
    from pathlib import Path

    config = yaml.safe_load((Path(__file__).resolve().parents[3] / "serve_config.yaml").read_text())
    app_cfg = config["applications"][0]
    assert app_cfg["import_path"] == "deployments.app:build_app"
    assert config["http_options"]["host"] == "127.0.0.1"
    args = {**app_cfg["args"], "store_root": str(seeded_store_root), "inventory": "none"}
    assert build_app(args) is not None


def _pools(app) -> dict:
    """Pool name -> its bound Serve deployment, read off the built application (the ingress' bound args)."""
    pools = next(arg for arg in app._bound_deployment.init_args if isinstance(arg, dict) and arg
                 and all(str(k).startswith("BaseLLM-") for k in arg))
    return {name: node._bound_deployment for name, node in pools.items()}


def _serve_options(dep) -> dict:
    """The options Serve receives for one deployment, in the shape of the placement's serve_options."""
    cfg = dep._deployment_config
    auto = cfg.autoscaling_config
    return {"ray_actor_options": dep.ray_actor_options, "max_ongoing_requests": cfg.max_ongoing_requests,
            "autoscaling_config": auto, "user_config": cfg.user_config}


def _agents(app) -> dict:
    """Agent name -> its bound Serve deployment, read off the built application (the ingress' bound args)."""
    agents = next(arg for arg in app._bound_deployment.init_args if isinstance(arg, dict) and "critic" in arg
                  and hasattr(arg["critic"], "_bound_deployment"))
    return {name: node._bound_deployment for name, node in agents.items()}


def _emit(store_root, tmp_path, inventory: str, *extra: str) -> dict:
    """`justnews plan --emit-serve-config` on ``inventory``: the application's args."""
    from cluster.cli import main

    out = tmp_path / "planned.yaml"
    assert main(["plan", "--inventory", inventory, "--store-root", str(store_root), *extra,
                 "--emit-serve-config", str(out)]) == 0
    return yaml.safe_load(out.read_text())["applications"][0]["args"]


def test_an_emitted_plan_builds_unchanged_and_serve_gets_its_options(seeded_store_root, tmp_path):
    args = _emit(seeded_store_root, tmp_path, "h200-1gpu")
    placement = args["placement"]
    pools = _pools(build_app(args))
    assert set(pools) == set(placement["pools"]) == {"BaseLLM-bf16", "BaseLLM-bnb-int8", "BaseLLM-llava_tiny-bf16"}
    _assert_applied(pools, placement, "h200-1gpu")  # the shipped map serves the newsreader: its vision pool too


def test_an_unserved_newsreader_gets_no_vision_pool_route_or_agent(seeded_store_root, tmp_path):
    from tests.unit.cluster import newsreader

    args = _emit(seeded_store_root, tmp_path, "h200-1gpu", "--map", str(newsreader.unserved_map(tmp_path / "map")))
    placement = args["placement"]
    assert set(placement["pools"]) == {"BaseLLM-bf16", "BaseLLM-bnb-int8"} and "newsreader" not in placement["routes"]
    app = build_app(args)
    pools = _pools(app)
    assert set(pools) == set(placement["pools"])
    _assert_applied(pools, placement, "h200-1gpu")
    assert "newsreader" not in _agents(app)


def _assert_applied(pools: dict, placement: dict, inventory: str) -> None:
    """Each pool's deployment got exactly the placement's options and settings."""
    for name, dep in pools.items():
        planned = placement["pools"][name]
        got = _serve_options(dep)
        want = planned["serve_options"]
        assert got["ray_actor_options"] == want["ray_actor_options"]
        assert got["max_ongoing_requests"] == want["max_ongoing_requests"]
        auto = want["autoscaling_config"]
        assert (got["autoscaling_config"].min_replicas, got["autoscaling_config"].max_replicas) == \
            (auto["min_replicas"], auto["max_replicas"])
        assert got["autoscaling_config"].policy.policy_kwargs == auto["policy"]["policy_kwargs"]
        assert {k: got["user_config"][k] for k in want["user_config"]} == want["user_config"]
        settings = dep.init_args[0]
        assert settings["deployment_name"] == name and settings["variant"] == planned["variant"]
        assert settings["device"] == "auto"  # resolved on the replica: CUDA only if it sees a GPU
        assert settings["planned"] == {"pool": name, "variant": planned["variant"], "device": "cuda",
                                       "memory_budget_mb": planned["memory_budget_mb"], "inventory": inventory}
        assert settings["preload_adapters"] == planned["adapters"]
        assert settings["base_ref"] == planned["base_ref"]


@pytest.fixture(scope="module")
def vision_root(tmp_path_factory, seeded_store_root):
    """A copy of the seeded store with a newsreader adapter on the tiny vision base."""
    from modelstore import ModelStore
    from tests.unit.cluster import newsreader

    root = tmp_path_factory.mktemp("vision-app") / "store"
    shutil.copytree(seeded_store_root, root, symlinks=True)
    newsreader.publish_adapter(ModelStore(root))
    return root


VISION_POOL = "BaseLLM-llava_tiny-bf16"  # the entry's first variant, on a GPU


def test_a_served_newsreader_gets_its_vision_pool_and_only_that_route(vision_root, tmp_path):
    from cluster import AppPlacement
    from modelstore.seed import VISION_BASE_REF
    from tests.unit.cluster import newsreader

    map_path = newsreader.served_map(tmp_path / "map")
    args = _emit(vision_root, tmp_path, "h200-1gpu", "--map", str(map_path))
    placement = args["placement"]
    assert args["map_path"] == str(map_path)
    assert list(placement["pools"]) == ["BaseLLM-bf16", "BaseLLM-bnb-int8", VISION_POOL]
    assert placement["pools"][VISION_POOL]["base_ref"] == VISION_BASE_REF
    assert placement["pools"][VISION_POOL]["agents"] == ["newsreader"]
    assert placement["pools"][VISION_POOL]["adapters"] == [newsreader.ADAPTER]
    assert placement["routes"]["newsreader"] == [VISION_POOL]
    assert AppPlacement.model_validate(placement).model_dump(mode="json") == placement  # round trip
    app = build_app(args)
    pools = _pools(app)
    assert set(pools) == set(placement["pools"])
    _assert_applied(pools, placement, "h200-1gpu")  # the vision pool's budget and Serve options, as planned
    agents = _agents(app)
    route = agents["newsreader"].init_args[3]  # AgentDeployment(agent, map_path, strict, llm, ...)
    assert list(route) == [VISION_POOL] and route[VISION_POOL]._bound_deployment is pools[VISION_POOL]
    for name in ("synthesizer", "critic", "analyst"):
        assert VISION_POOL not in agents[name].init_args[3]


def test_a_placement_that_mixes_bases_or_lacks_the_vision_base_is_refused(vision_root, tmp_path):
    from tests.unit.cluster import newsreader

    map_path = newsreader.served_map(tmp_path / "map")
    args = _emit(vision_root, tmp_path, "cpu-only", "--map", str(map_path))
    pool = "BaseLLM-llava_tiny-fp32"  # fp32 ahead of bf16 on a CPU cluster
    assert args["placement"]["routes"]["newsreader"] == [pool]
    bad = yaml.safe_load(yaml.safe_dump(args))
    bad["placement"]["routes"]["newsreader"] = ["BaseLLM-fp32"]
    with pytest.raises(AppBuildError, match=r"agent 'newsreader' may not use pool 'BaseLLM-fp32': it serves "
                                            r"base_models@v1-tiny-mistral, the agent runs on base_models/llava_tiny@"):
        build_app(bad)
    bad = yaml.safe_load(yaml.safe_dump(args))
    bad["placement"]["pools"][pool]["base_ref"] = "base_models/llava_tiny@v9-gone"
    with pytest.raises(AppBuildError, match=rf"pool {pool}: base 'base_models/llava_tiny@v9-gone' is not in the store"):
        build_app(bad)
    settings = {**args, "pools": {pool: {"runtime": {"max_batch_size": 4}}}}  # a vision pool's own args
    assert _pools(build_app(settings))[pool].init_args[0]["runtime"]["max_batch_size"] == 4


def test_a_served_newsreader_whose_base_is_missing_fails_the_build_naming_it(vision_root, tmp_path):
    from tests.unit.cluster import newsreader

    map_path = newsreader.served_map(tmp_path / "map")
    root = tmp_path / "store"
    shutil.copytree(vision_root, root, symlinks=True)
    shutil.rmtree(root / "base_models" / "llava_tiny")
    with pytest.raises(AppBuildError, match=r"(?s)'newsreader'.*base_models/llava_tiny@current"):
        build_app({"store_root": str(root), "inventory": "none", "map_path": str(map_path)})


def test_a_placement_that_sends_a_never_quantized_agent_to_int8_is_refused(seeded_store_root, tmp_path):
    from cluster.cli import main

    out = tmp_path / "planned.yaml"
    assert main(["plan", "--inventory", "cpu-only", "--store-root", str(seeded_store_root),
                 "--emit-serve-config", str(out)]) == 0
    args = yaml.safe_load(out.read_text())["applications"][0]["args"]
    args["placement"]["routes"]["critic"] = ["BaseLLM-bnb-int8"]
    with pytest.raises(AppBuildError, match=r"agent 'critic' may not use pool 'BaseLLM-bnb-int8'"):
        build_app(args)
    del args["placement"]["routes"]["critic"]
    with pytest.raises(AppBuildError, match=r"agent 'critic' has no pool"):
        build_app(args)


def test_placement_then_llm_then_pool_args(seeded_store_root):
    from agent_graph import load_agent_map
    from modelstore import ModelStore

    store = ModelStore(seeded_store_root)
    settings = AppSettings(store_root=str(seeded_store_root), inventory="cpu-only", llm={"num_replicas": 1},
                           pools={"BaseLLM-bnb-int8": {"runtime": {"max_batch_size": 4}}})
    placement = plan_placement(settings, store, load_agent_map())
    assert {n: p.variant for n, p in placement.pools.items()} == {
        "BaseLLM-fp32": "fp32", "BaseLLM-bnb-int8": "bnb-int8", "BaseLLM-llava_tiny-fp32": "fp32"}
    full = pool_settings(settings, store, placement, "BaseLLM-fp32")
    int8 = pool_settings(settings, store, placement, "BaseLLM-bnb-int8")
    assert full.autoscaling_config is None and full.num_replicas == 1  # explicit replicas turn autoscaling off
    assert full.ray_actor_options["memory"] == placement.pools["BaseLLM-fp32"].memory_budget_mb * 1024 * 1024
    assert full.runtime.max_batch_size == 8 and int8.runtime.max_batch_size == 4
    assert int8.runtime.max_num_models_per_replica == 2  # analyst + re_ranker
    # The engine's stacked LoRA buffers hold the adapter slots the plan reserved (adapters_mb), no more.
    assert int8.engine.max_loaded_adapters == 2
    assert full.engine.max_loaded_adapters == full.runtime.max_num_models_per_replica
    # The continuous loop's KV cache is the plan's KV share of the budget, and holds the planned sequences.
    kv_mb = placement.pools["BaseLLM-fp32"].kv_cache_mb
    assert kv_mb and full.engine.kv_cache_bytes == kv_mb * 1024 * 1024
    per_sequence = (full.engine.max_prompt_tokens + full.engine.max_new_tokens_limit) * 2048  # tiny fp32: 2 KiB/token
    assert full.engine.kv_cache_bytes // per_sequence == full.runtime.max_batch_size
    assert full.engine.prefix_cache_bytes == 32 * 1024 * 1024  # no prefix_tokens_per_model: the engine's default
    planned = AppSettings(store_root=str(seeded_store_root), inventory="cpu-only",
                          policy={"prefix_tokens_per_model": 256})
    prefix_placement = plan_placement(planned, store, load_agent_map())
    prefix_mb = prefix_placement.pools["BaseLLM-fp32"].prefix_cache_mb
    models = prefix_placement.pools["BaseLLM-fp32"].serve_options["user_config"]["max_num_models_per_replica"]
    assert prefix_mb == -(-256 * 2048 * (models + 1) // (1024 * 1024))  # tiny fp32: 2 KiB a token, ceil to MiB
    assert pool_settings(planned, store, prefix_placement, "BaseLLM-fp32").engine.prefix_cache_bytes == \
        prefix_mb * 1024 * 1024
    with pytest.raises(ValueError, match=r"llm args \['deployment_name'\] are set by the placement"):
        AppSettings(llm={"deployment_name": "X"})
    with pytest.raises(AppBuildError, match="pool names are 'BaseLLM-<variant>'"):
        build_app({"store_root": str(seeded_store_root), "inventory": "none", "pools": {"BaseLLM": {}}})


def test_bad_settings_name_the_value_and_the_limit(seeded_store_root):
    with pytest.raises(AppBuildError, match=r"max_batch_size \(64\) must be <= engine.max_batch_size \(32\)"):
        build_app({"store_root": str(seeded_store_root), "inventory": "none", "llm.runtime.max_batch_size": 64,
                   "llm.max_ongoing_requests": 64})


def test_a_budget_below_the_largest_reply_is_refused_unless_the_operator_says_so(seeded_store_root, tmp_path):
    import json

    from agent_graph import default_map_path
    from agent_graph.schema import RECOMMENDED_FILE

    data = json.loads(default_map_path().read_text())
    data["agents"]["reasoning"]["max_new_tokens"] = 12
    (tmp_path / "AGENT_MODEL_MAP.json").write_text(json.dumps(data))
    shutil.copy(default_map_path().with_name(RECOMMENDED_FILE), tmp_path / RECOMMENDED_FILE)
    args = {"store_root": str(seeded_store_root), "inventory": "none", "map_path": str(tmp_path / "AGENT_MODEL_MAP.json")}
    with pytest.raises(AppBuildError, match=r"agent 'reasoning', field 'max_new_tokens': max_new_tokens \(12\) is below"):
        build_app(args)
    assert build_app({**args, "check_budgets": False}) is not None
