"""A killed publish is finished by re-running it; staging leftovers have a command that clears them.

The publisher is the real CLI in a subprocess that ``kill -9``s itself at a named phase
(``MODELSTORE_CRASH_AT``, see :mod:`modelstore.crashpoints`); the runbook's answer to any crash is to
run the same publish again, and that must end with the version complete, current and ``check`` clean.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from filelock import FileLock

from modelstore import ModelStoreError, VersionExistsError
from modelstore.cli import main
from modelstore.crashpoints import CRASH_ENV, PHASES, crash_point
from modelstore.health import version_names
from modelstore.refs import BaseRef
from modelstore.seed import BASE_VERSION, adapter_ref
from tests.store_helpers import corrupt_weights, publish_copy

# What a kill at each phase leaves: (v2 is under versions/, current points at v2).
AFTER_KILL = {"staging": (False, False), "hashing": (False, False), "manifest": (False, False),
              "rename": (True, False), "flip": (True, True)}
CRITIC = "critic/mistral_critic_v1"


def _publish_cmd(store, src, meta):
    return [sys.executable, "-m", "modelstore.cli", "--root", str(store.root), "publish", "base", "--version", "v2",
            "--from-dir", str(src), "--metadata", str(meta)]


def _publish_events(store, version):
    history = json.loads((store.root / "base_models" / "history.json").read_text())
    return [ev for ev in history if ev["version"] == version and ev["action"] == "publish"]


def test_every_phase_is_covered():
    assert tuple(AFTER_KILL) == PHASES


@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_at_each_phase_then_the_same_publish_completes(store, tmp_path, phase):
    src = shutil.copytree(store.resolve("base_models@current").path, tmp_path / "src",
                          ignore=shutil.ignore_patterns("manifest.json"))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"license": "Apache-2.0", "approx_vram_mb": {"fp32": 6}}))
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    cmd = _publish_cmd(store, src, meta)

    killed = subprocess.run(cmd, env={**env, CRASH_ENV: phase}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    exists, flipped = AFTER_KILL[phase]
    assert ("v2" in version_names(store, BaseRef())) == exists
    assert store.current_version("base_models") == ("v2" if flipped else BASE_VERSION)
    problems = store.check(checksums=False)
    if exists:  # a complete version that is not (yet logged as) current is a legal store
        assert problems == []
    else:
        assert len(problems) == 1 and "modelstore gc --staging" in problems[0], problems

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "published base_models@v2" in rerun.stdout and "made it current" in rerun.stdout
    assert store.current_version("base_models") == "v2"
    assert store.verify("base_models@v2").ok
    assert store.check() == []
    assert not any((store.root / ".staging").iterdir())
    assert len(_publish_events(store, "v2")) == 1  # the flip is logged once, however many runs it took
    assert str(store.rollback("base_models")) == f"base_models@{BASE_VERSION}"


def test_identical_republish_completes_a_version_that_is_not_current(store, tmp_path):
    publish_copy(store, adapter_ref("critic"), CRITIC, "v2", tmp_path, promote=False)  # as a kill after rename
    src = tmp_path / "critic-mistral_critic_v1-v2"
    assert store.current_version(CRITIC) == "seed-1"
    first = store.manifest(f"{CRITIC}@v2")
    for _ in range(2):  # the re-run completes it; a third run changes nothing
        m = store.publish_adapter("critic", "mistral_critic_v1", src, "v2")
        assert m == first and store.current_version(CRITIC) == "v2"
    history = json.loads((store.root / CRITIC.replace("/", "/adapters/") / "history.json").read_text())
    assert [ev["version"] for ev in history].count("v2") == 1
    assert str(store.rollback(CRITIC)) == f"{CRITIC}@seed-1"


@pytest.mark.parametrize("change, needle", [
    (lambda src: (src / "NOTES.md").write_text("new"), "NOTES.md is not in the published version"),
    (lambda src: (src / "README.md").unlink(), "README.md is published but not in the source"),
    (lambda src: (src / "README.md").write_text("shorter"), "README.md: size 7 != published"),
    (lambda src: (src / "README.md").write_bytes((src / "README.md").read_bytes().swapcase()),
     "README.md: sha256 differs"),
])
def test_different_content_under_an_existing_version_is_refused(store, tmp_path, change, needle):
    publish_copy(store, adapter_ref("critic"), CRITIC, "v2", tmp_path, promote=False)
    src = tmp_path / "critic-mistral_critic_v1-v2"
    change(src)
    with pytest.raises(VersionExistsError, match=f"{CRITIC}@v2 already exists with different content") as exc:
        store.publish_adapter("critic", "mistral_critic_v1", src, "v2")
    assert needle in str(exc.value) and "--force" in str(exc.value)
    assert store.current_version(CRITIC) == "seed-1"
    store.publish_adapter("critic", "mistral_critic_v1", src, "v2", force=True)
    assert store.current_version(CRITIC) == "v2" and store.verify(f"{CRITIC}@v2").ok


def test_identical_republish_over_a_damaged_version_is_refused(store, tmp_path):
    publish_copy(store, adapter_ref("critic"), CRITIC, "v2", tmp_path, promote=False)
    corrupt_weights(store, f"{CRITIC}@v2")
    with pytest.raises(VersionExistsError, match="fails verification .*adapter_model.safetensors"):
        store.publish_adapter("critic", "mistral_critic_v1", tmp_path / "critic-mistral_critic_v1-v2", "v2")
    assert store.current_version(CRITIC) == "seed-1"  # never made current


def test_gc_staging_clears_leftovers_but_never_a_live_publishers(store, capsys):
    staging = store.root / ".staging"
    (staging / "9f2c" / "sub").mkdir(parents=True)
    (staging / "gc-77ab").mkdir()
    problems = store.check(checksums=False)
    assert len(problems) == 1 and "2 leftover(s)" in problems[0] and "`modelstore gc --staging`" in problems[0]

    with FileLock(str(store.root / ".lock")):  # a publisher is running: its staging is live
        assert store.check(checksums=False) == []
        with pytest.raises(ModelStoreError, match="store lock .* is still held"):
            store.clean_staging(timeout=0.1)
        assert main(["--root", str(store.root), "gc", "--staging", "--lock-timeout", "0.1"]) == 2
    assert sorted(p.name for p in staging.iterdir()) == ["9f2c", "gc-77ab"]

    capsys.readouterr()
    assert main(["--root", str(store.root), "gc", "--staging"]) == 0
    assert "removed 2 staging leftover(s): 9f2c, gc-77ab" in capsys.readouterr().out
    assert not any(staging.iterdir()) and store.check() == []
    assert main(["--root", str(store.root), "gc"]) == 2  # neither a ref nor --staging
    assert "--staging" in capsys.readouterr().err


def test_crash_point_does_nothing_unset_and_refuses_an_unknown_phase(monkeypatch):
    monkeypatch.delenv(CRASH_ENV, raising=False)
    crash_point("rename")
    monkeypatch.setenv(CRASH_ENV, "renmae")
    with pytest.raises(ModelStoreError, match="'renmae' names no publish phase; choose one of staging, hashing"):
        crash_point("rename")


def test_kill_9_after_an_adapter_rename_then_the_runbook_rerun_completes(store, tmp_path):
    src = shutil.copytree(store.adapter_path(adapter_ref("critic")), tmp_path / "src",
                          ignore=shutil.ignore_patterns("manifest.json"))
    cmd = [sys.executable, "-m", "modelstore.cli", "--root", str(store.root), "publish", "adapter", "--agent", "critic",
           "--name", "mistral_critic_v1", "--version", "v2", "--from-dir", str(src)]
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    killed = subprocess.run(cmd, env={**env, CRASH_ENV: "rename"}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "v2" in store.versions(CRITIC) and store.current_version(CRITIC) == "seed-1"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert store.current_version(CRITIC) == "v2" and store.check() == []
