"""Crash safety and concurrency of publish, with real processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelstore import ModelStore
from modelstore.seed import adapter_ref

PUBLISH = """
import sys
from modelstore import ModelStore
store = ModelStore(sys.argv[1])
store.publish_base(sys.argv[2], sys.argv[3], measure=lambda d: {"fp32": 6})
print("PUBLISHED", flush=True)
"""


def _big_source(store: ModelStore, dst: Path, n_files: int = 24, size: int = 4 << 20) -> Path:
    import shutil

    shutil.copytree(store.resolve("base_models@current").path, dst, ignore=shutil.ignore_patterns("manifest.json"))
    rnd = os.urandom(size)
    for i in range(n_files):
        (dst / f"shard-{i:03d}.safetensors.extra").write_bytes(rnd)  # bulk so the copy takes a while
    return dst


def _snapshot(store: ModelStore):
    return store.list(), {str(r): store.current_version(r) for r in store.namespaces()}


def test_kill_9_mid_publish_leaves_store_as_it_was_and_retry_succeeds(store, tmp_path):
    src = _big_source(store, tmp_path / "src")
    before = _snapshot(store)
    proc = subprocess.Popen([sys.executable, "-c", PUBLISH, str(store.root), str(src), "v2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = store.root / ".staging"
    deadline = time.monotonic() + 60
    # Kill once the publisher is demonstrably half way: some shards copied into its staging dir.
    while time.monotonic() < deadline:
        staged = list(staging.glob("*/shard-*")) if staging.is_dir() else []
        if len(staged) >= 3:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    else:
        pytest.fail("publisher never started copying")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert any(staging.iterdir()), "the kill landed after the publish finished; enlarge the source"

    assert _snapshot(store) == before
    assert "v2" not in store.versions("base_models")
    assert store.current_version("base_models") == "v1-tiny-mistral"
    assert store.verify("base_models@current").ok
    problems = store.check(checksums=False)
    assert len(problems) == 1 and "interrupted publish" in problems[0]

    manifest = store.publish_base(src, "v2", measure=lambda d: {"fp32": 6})  # the retry
    assert store.current_version("base_models") == "v2"
    assert store.verify("base_models@v2").ok and manifest.total_bytes > 24 * (4 << 20)
    assert not any(staging.iterdir())
    assert store.check(checksums=False) == []


def _cli(root, *args):
    return subprocess.Popen([sys.executable, "-m", "modelstore.cli", "--root", str(root), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_publishers_never_corrupt(store, tmp_path):
    import shutil

    src = tmp_path / "adapter"
    shutil.copytree(store.adapter_path(adapter_ref("critic")), src, ignore=shutil.ignore_patterns("manifest.json"))
    other = shutil.copytree(src, tmp_path / "other")
    (other / "NOTES.md").write_text("a different adapter under the same version tag")
    common = ("publish", "adapter", "--agent", "critic", "--name", "mistral_critic_v1")
    procs = [_cli(store.root, *common, "--from-dir", str(d), "--version", v)
             for d, v in ((src, "v2"), (src, "v3"), (src, "same"), (other, "same"))]
    results = [(p.wait(), *p.communicate()) for p in procs]
    codes = [r[0] for r in results]
    assert codes[0] == 0 and codes[1] == 0, results
    # two publishers of one version with different files: exactly one wins, the other is refused cleanly
    assert sorted(codes[2:]) == [0, 2], results
    loser = results[2] if codes[2] == 2 else results[3]
    assert "already exists with different content" in loser[2] and "NOTES.md" in loser[2]
    assert set(store.versions("critic/mistral_critic_v1")) == {"seed-1", "v2", "v3", "same"}
    assert store.current_version("critic/mistral_critic_v1") in {"v2", "v3", "same"}
    assert store.check() == []
