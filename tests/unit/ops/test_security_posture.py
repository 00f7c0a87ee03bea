"""Secure by default: Ray token auth and the ingress' tokens in the generated manifests, the VM dashboard on
loopback, and secret files 0600 (scripts/ray_token.py, scripts/run.sh, the launcher's env file)."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster import load_inventory
from cluster.cli import main as justnews
from cluster.rayservice import TOKEN_SECRET_KEYS, dump_manifest, rayservice_manifest
from cluster.vm_launcher import launcher_config, validate_launcher

REPO = Path(__file__).resolve().parents[3]
SERVE_CONFIG = (REPO / "serve_config.yaml").read_text()
COMMITTED_MANIFEST = REPO / "cluster" / "kuberay" / "rayservice.yaml"
COMMITTED_LAUNCHER = REPO / "cluster" / "launcher" / "justnews-vms.yaml"
RAY_TOKEN = REPO / "scripts" / "ray_token.py"


def _containers(doc: dict) -> list[dict]:
    rc = doc["spec"]["rayClusterConfig"]
    groups = [rc["headGroupSpec"], *rc["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def check_rayservice_security(doc: dict, secret: str) -> None:
    assert doc["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
    for container in _containers(doc):
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        assert refs == {env: {"name": secret, "key": key, "optional": False} for env, key in TOKEN_SECRET_KEYS.items()}
        assert not any("TOKEN" in e["name"] and "value" in e for e in container["env"]), "a token in plain text"


@pytest.mark.parametrize("kwargs,secret", [({}, "justnews-api-tokens"), ({"name": "news"}, "news-api-tokens"),
                                           ({"api_token_secret": "vault-synced"}, "vault-synced")])
def test_rayservice_turns_on_ray_token_auth_and_reads_the_ingress_tokens_from_a_secret(kwargs, secret):
    manifest = rayservice_manifest(SERVE_CONFIG, load_inventory("rtx3090-2node"), **kwargs)
    text = dump_manifest(manifest, "serve_config.yaml")
    check_rayservice_security(yaml.safe_load(text), secret)
    assert f"kubectl create secret generic {secret}" in text  # the header says what to create first


def test_kuberay_cli_passes_the_secret_name(tmp_path, capsys):
    out = tmp_path / "rs.yaml"
    assert justnews(["kuberay", "--serve-config", str(REPO / "serve_config.yaml"), "--inventory", "rtx3090-2node",
                     "--api-token-secret", "jn-tokens", "--out", str(out)]) == 0
    check_rayservice_security(yaml.safe_load(out.read_text()), "jn-tokens")


def test_the_committed_rayservice_is_secured():
    check_rayservice_security(yaml.safe_load(COMMITTED_MANIFEST.read_text()), "justnews-api-tokens")


def _launcher(**kw) -> dict:
    config = launcher_config(load_inventory("rtx3090-2node"), head_ip="10.0.0.10",
                             worker_ips=["10.0.0.11", "10.0.0.12"], **kw)
    validate_launcher(config)
    return config


def check_launcher_security(config: dict) -> None:
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2
    (head,) = [c for c in starts if "--head" in c]
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in yaml.safe_dump(config)
    assert all(c.startswith("source ~/.justnews.env && ") for c in starts)  # RAY_AUTH_MODE before every start
    (env_cmd,) = [c for c in config["setup_commands"] if "> ~/.justnews.env" in c]
    assert env_cmd.startswith("umask 077 && ") and "export RAY_AUTH_MODE=token" in env_cmd
    assert "chmod 600 ~/.justnews.env ~/.ray/auth_token" in env_cmd
    assert config["setup_commands"].index(env_cmd) == 0  # secured before anything else runs
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_launcher_keeps_the_dashboard_on_loopback_and_turns_on_token_auth():
    config = _launcher(ray_token_file="/secure/ray_token")
    check_launcher_security(config)
    assert config["file_mounts"]["~/.ray/auth_token"] == "/secure/ray_token"


def test_the_committed_launcher_config_is_secured():
    text = COMMITTED_LAUNCHER.read_text()
    check_launcher_security(yaml.safe_load(text))
    assert "scripts/ray_token.py" in text and "ray dashboard" in text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ray_token(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    return subprocess.run([sys.executable, str(RAY_TOKEN), *args], capture_output=True, text=True, timeout=60,
                          env={**base, **env})


def test_ray_token_creates_a_private_token(tmp_path):
    path = tmp_path / "home" / ".ray" / "auth_token"
    proc = _ray_token(HOME=str(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    assert _mode(path) == 0o600 and re.fullmatch(r"[0-9a-f]{64}", path.read_text())
    assert path.read_text() not in proc.stderr + proc.stdout  # never printed


def test_ray_token_makes_a_world_readable_token_private_and_keeps_it(tmp_path):
    path = tmp_path / "auth_token"
    path.write_text("existing-token")
    path.chmod(0o644)  # what `ray start` leaves behind
    proc = _ray_token(RAY_AUTH_TOKEN_PATH=str(path))
    assert proc.returncode == 0 and "0644 -> 0600" in proc.stderr
    assert _mode(path) == 0o600 and path.read_text() == "existing-token"


def test_ray_token_needs_no_file_when_the_token_is_in_the_environment(tmp_path):
    proc = _ray_token(HOME=str(tmp_path), RAY_AUTH_TOKEN="x" * 64)
    assert proc.returncode == 0 and not (tmp_path / ".ray").exists()


def test_run_sh_secures_the_ray_token_before_serve_starts():
    # joined as bash reads them: a line ending in a backslash continues on the next
    script = (REPO / "scripts" / "run.sh").read_text().replace("\\\n", " ")
    lines = [l.strip() for l in script.splitlines() if not l.startswith("#")]
    auth = lines.index('export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"')
    token = next(i for i, l in enumerate(lines) if shlex.split(l)[:2] == ["python", "scripts/ray_token.py"])
    serve = next(i for i, l in enumerate(lines) if l.startswith("exec serve run"))
    assert auth < token < serve


def test_the_runbook_has_a_security_posture_section():
    text = (REPO / "docs" / "runbook.md").read_text()
    section = text[re.search(r"^## (\d+\. )?Security posture$", text, re.MULTILINE).start():]
    for needle in ("JUSTNEWS_API_TOKEN", "JUSTNEWS_ADMIN_TOKEN", "RAY_AUTH_MODE=token", "127.0.0.1", "0600",
                   "/stats", "/canary", "403"):
        assert needle in section, needle
