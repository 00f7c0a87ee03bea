"""One JustNews cluster for the e2e tests, started the way an operator starts it: ``serve run`` on a config.

The config is what ``justnews plan --emit-serve-config`` writes for this machine (a CPU inventory) over a
temporary seeded store and a copy of the agent map whose synthesizer routes its ``summary`` task to a
corrupt adapter (the fallback tests): three base pools (fp32 with two replicas, bnb-int8 and the newsreader's
vision pool with one each); the test then sets a free port,
the embeddings' CPU share and a small in-flight limit (the overload test). The placement is applied unchanged.
``RAY_ADDRESS=local`` makes ``serve run`` start its own Ray cluster, so a cluster another process runs
on this machine is never joined; the bearer token comes from the environment, as in production.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.store_helpers import corrupt_weights, publish_copy

REPO = Path(__file__).resolve().parents[2]
TOKEN = "e2e-secret-token"
MAX_IN_FLIGHT = 12
BROKEN_ADAPTER = "synthesizer/mistral_broken_v1@v1"
TRUNCATED_TOKENS = 12
STARTUP_TIMEOUT_S = 300
POOL_REPLICAS = {"BaseLLM-fp32": 2, "BaseLLM-bnb-int8": 1, "BaseLLM-llava_tiny-fp32": 1}


@dataclass
class Cluster:
    """The running application."""

    url: str
    token: str
    store_root: Path
    log: Path
    ray_tmp: Path

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint of the cluster's (one) node metrics agent."""
        [port_file] = self.ray_tmp.glob("ray/session_latest/metrics_export_port_*")  # Ray adds "ray/"
        return f"http://127.0.0.1:{port_file.read_text().strip()}/metrics"

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client with the bearer token."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"},
                            timeout=kwargs.pop("timeout", 300), **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _seed_store(root: Path, scratch: Path) -> None:
    from modelstore import ModelStore
    from modelstore.seed import adapter_ref, seed_default_store

    store = ModelStore(root)
    seed_default_store(store)
    target, version = BROKEN_ADAPTER.split("@")
    publish_copy(store, adapter_ref("synthesizer"), target, version, scratch)
    corrupt_weights(store, BROKEN_ADAPTER)


def _write_map(directory: Path) -> Path:
    from agent_graph import default_map_path
    from agent_graph.schema import RECOMMENDED_FILE

    source = default_map_path()
    data = json.loads(source.read_text())
    data["agents"]["synthesizer"]["task_adapters"] = {"summary": BROKEN_ADAPTER}
    # Too few tokens for any reasoning reply: every model step breaks the contract (schema failures,
    # counted for the monitoring test) and the legacy heuristic answers.
    data["agents"]["reasoning"]["max_new_tokens"] = TRUNCATED_TOKENS
    path = directory / source.name
    path.write_text(json.dumps(data, indent=2))
    shutil.copy(source.with_name(RECOMMENDED_FILE), directory / RECOMMENDED_FILE)
    return path


# This machine as an operator would describe it: one CPU node (2 cores on CI).
E2E_INVENTORY = {"name": "e2e-cpu", "nodes": [{"name": "e2e", "cpus": 2, "memory_gb": 12}]}


def _write_config(path: Path, port: int, store_root: Path, map_path: Path) -> None:
    """``justnews plan --emit-serve-config`` (the map asks for fp32, bnb-int8 and vision pools), then the test knobs."""
    from cluster.cli import main as justnews

    inventory = path.with_name("inventory.yaml")
    inventory.write_text(yaml.safe_dump(E2E_INVENTORY))
    # Two replicas per pool where they fit (a dead replica's requests retry on the other): at half a CPU each
    # the 2 cores hold four replicas, and the planner gives the fp32 pool (six agents) two, the bnb-int8 pool
    # and the newsreader's vision pool one each (min = max, so nothing scales mid-test).
    assert justnews(["plan", "--inventory", str(inventory), "--store-root", str(store_root), "--map", str(map_path),
                     "--set", "num_cpus_per_replica=0.5", "--set", "preferred_min_replicas=2",
                     "--emit-serve-config", str(path)]) == 0
    config = yaml.safe_load(path.read_text())
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    assert {n: p["serve_options"]["autoscaling_config"]["min_replicas"]
            for n, p in args["placement"]["pools"].items()} == POOL_REPLICAS
    args["embeddings"] = {"ray_actor_options": {"num_cpus": 0}}  # the pools hold both logical CPUs
    args["ingress"] = {"max_in_flight": MAX_IN_FLIGHT}
    args["check_budgets"] = False  # reasoning's budget is cut on purpose (TRUNCATED_TOKENS)
    args["canary"] = {"interval_s": 1}  # the gate ticks every second (the rollout tests use short windows)
    path.write_text(yaml.safe_dump(config))


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT (serve run shuts Serve down), then SIGTERM / SIGKILL to the group it leads (its local Ray)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)
        proc.poll()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Cluster:
    """Seed a store, write the config, ``serve run`` it, and wait until every deployment is healthy."""
    work = tmp_path_factory.mktemp("e2e")
    store_root, scratch, map_dir = work / "store", work / "scratch", work / "map"
    scratch.mkdir()
    map_dir.mkdir()
    _seed_store(store_root, scratch)
    port = _free_port()
    config = work / "serve_config.yaml"
    _write_config(config, port, store_root, _write_map(map_dir))
    # Its own Ray temp dir (short: Ray's socket paths must fit 107 bytes) tells the test where the metrics
    # agent listens. (Not RAY_metrics_report_interval_ms: with it set, Ray 2.60 stops exporting gauges.)
    ray_tmp = Path(tempfile.mkdtemp(prefix="jn-ray-", dir="/tmp"))
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "JUSTNEWS_API_TOKEN": TOKEN, "RAY_TMPDIR": str(ray_tmp)}
    serve_cli = Path(sys.executable).with_name("serve")
    log = work / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(serve_cli), "run", str(config)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    cluster = Cluster(url=f"http://127.0.0.1:{port}", token=TOKEN, store_root=store_root, log=log, ray_tmp=ray_tmp)
    try:
        _wait_healthy(cluster, proc)
        yield cluster
    finally:
        _stop(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _wait_healthy(cluster: Cluster, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer"
    with cluster.client(timeout=15) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"serve run exited with {proc.returncode}:\n{cluster.log.read_text()[-4000:]}")
            try:
                reply = client.get("/healthz")
                last = f"{reply.status_code} {reply.text[:500]}"
                if reply.status_code == 200 and reply.json()["status"] == "ok":
                    return
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(2)
    pytest.fail(f"cluster not healthy after {STARTUP_TIMEOUT_S}s (last: {last}):\n{cluster.log.read_text()[-4000:]}")
