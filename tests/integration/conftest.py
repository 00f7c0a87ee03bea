"""Shared fixtures of the integration tests: one seeded ModelStore and one local Ray cluster per session.

The BaseLLM application is deployed declaratively (import path + args, as ``serve_config.yaml`` does),
because only then does a change of ``user_config`` alone reach the running replica through
``reconfigure`` instead of replacing it: ``serve.run`` gives every deploy a fresh code version.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

AGENTS = ("synthesizer", "journalist", "critic", "analyst")
BROKEN_ADAPTER = "critic/mistral_broken_v1@v1"
APP_NAME = "llm"
ROUTE = "/llm"
DEPLOYMENT = "BaseLLM"
INITIAL_RUNTIME = {"max_batch_size": 8, "batch_wait_timeout_s": 0.3, "max_num_models_per_replica": 4}


from tests.store_helpers import corrupt_weights, publish_copy
from tests.waiting import wait_for  # noqa: F401  (re-exported to the tests)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A store seeded with the tiny base, four agents' adapters and one adapter corrupted after publishing."""
    from modelstore import ModelStore
    from modelstore.seed import adapter_ref, seed_default_store

    root = tmp_path_factory.mktemp("model_store")
    store = ModelStore(root)
    seed_default_store(store, agents=AGENTS)
    staged = tmp_path_factory.mktemp("broken_adapter")
    target, version = BROKEN_ADAPTER.split("@")
    publish_copy(store, adapter_ref("critic"), target, version, staged)
    corrupt_weights(store, BROKEN_ADAPTER)
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def serve_cluster():
    """One local Ray cluster with Serve's HTTP proxy on a free port, for the whole session."""
    import ray
    from ray import serve

    port = _free_port()
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        namespace="justnews-integration",
        _system_config={"metrics_report_interval_ms": 1000},  # metrics tests poll; don't wait 10 s
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@dataclass
class LLMApp:
    """The deployed BaseLLM application and helpers to drive it."""

    store_root: Path
    http_url: str

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint of this node's metrics agent."""
        import ray

        return f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"

    def deploy(self, runtime: dict[str, Any]) -> None:
        """Deploy (or update) the app declaratively; returns once ``stats()`` shows ``runtime`` applied."""
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        config = ServeDeploySchema.model_validate({
            "applications": [{
                "name": APP_NAME,
                "route_prefix": ROUTE,
                "import_path": "deployments.base_llm.deployment:app_builder",
                "args": {"store_root": str(self.store_root), "ray_actor_options": {"num_cpus": 1}},
                "deployments": [{"name": DEPLOYMENT, "user_config": runtime}],
            }]
        })
        _get_global_client().deploy_apps(config, _blocking=True)
        wait_for(lambda: self._runtime_is(runtime), what=f"runtime {runtime} to be applied")

    def _runtime_is(self, runtime: dict[str, Any]) -> bool:
        try:
            stats = self.stats()
        except Exception:  # a replica being replaced; keep polling
            return False
        return all(stats["runtime"].get(k) == v for k, v in runtime.items())

    @property
    def handle(self):
        from ray import serve

        return serve.get_app_handle(APP_NAME)

    def generate(self, model_id: str, prompt: str = "[INST] Summarise the news [/INST]", **params) -> Any:
        """Start one request through the handle; returns the DeploymentResponse."""
        body = {"prompt": prompt, "max_new_tokens": 4, **params}
        return self.handle.options(multiplexed_model_id=model_id).generate.remote(body)

    def stats(self) -> dict[str, Any]:
        return self.handle.stats.remote().result(timeout_s=30)


@pytest.fixture(scope="session")
def llm_app(model_store, serve_cluster) -> LLMApp:
    """The BaseLLM app on the shared cluster; each test sets the runtime config it needs."""
    app = LLMApp(store_root=model_store, http_url=serve_cluster)
    app.deploy(INITIAL_RUNTIME)
    return app
