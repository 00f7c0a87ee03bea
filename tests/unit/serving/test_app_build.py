"""build_app without a cluster: it fails fast on a store that lacks something, and applies the plan's
BaseLLM options below explicit args."""

from __future__ import annotations

import shutil

import pytest
import yaml

from deployments.app import AppBuildError, AppSettings, build_app, llm_settings


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


def test_plan_options_apply_and_explicit_args_win(seeded_store_root):
    from modelstore import ModelStore

    store = ModelStore(seeded_store_root)
    planned = llm_settings(AppSettings(store_root=str(seeded_store_root), inventory="cpu-only"), store,
                           "base_models@v1-tiny-mistral")
    assert planned.autoscaling_config and planned.ray_actor_options.get("memory")
    explicit = llm_settings(AppSettings(store_root=str(seeded_store_root), inventory="cpu-only",
                                        llm={"num_replicas": 1, "ray_actor_options": {"num_cpus": 1},
                                             "runtime": {"max_batch_size": 4}}), store, "base_models@v1-tiny-mistral")
    assert explicit.autoscaling_config is None and explicit.num_replicas == 1
    assert explicit.ray_actor_options == {"num_cpus": 1}
    assert explicit.runtime.max_batch_size == 4
    assert explicit.runtime.max_num_models_per_replica == planned.runtime.max_num_models_per_replica


def test_bad_settings_name_the_value_and_the_limit(seeded_store_root):
    with pytest.raises(AppBuildError, match=r"max_batch_size \(64\) must be <= engine.max_batch_size \(32\)"):
        build_app({"store_root": str(seeded_store_root), "inventory": "none", "llm.runtime.max_batch_size": 64,
                   "llm.max_ongoing_requests": 64})
