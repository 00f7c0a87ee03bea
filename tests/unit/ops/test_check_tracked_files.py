"""scripts/check_tracked_files.py against throwaway git repositories, and its place in scripts/test.sh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "check_tracked_files.py"


def _repo(path: Path, files: dict[str, bytes]) -> Path:
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    subprocess.run(["git", "-C", str(path), "add", "--", *files], check=True)
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_a_clean_repository_passes(tmp_path):
    root = _repo(tmp_path / "clean", {"README.md": b"# hi\n", "pkg/mod.py": b"x = 1\n",
                                      "notes/binary_search.md": b"not a .bin file\n"})
    proc = _run("--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert "3 tracked files" in proc.stderr


def test_weights_and_large_files_are_each_listed(tmp_path):
    root = _repo(tmp_path / "bad", {
        "ok.py": b"x = 1\n",
        "out/adapter_model.safetensors": b"\0" * 10,
        "ckpt/model.PT": b"\0",
        "cache/obj.pkl": b"\0",
        "data/huge.csv": b"a" * (3 * 1024 * 1024),
    })
    (root / "untracked.bin").write_bytes(b"\0")  # not in git: not an offender
    proc = _run("--root", str(root))
    assert proc.returncode == 1
    lines = [l.strip() for l in proc.stderr.splitlines() if l.startswith("  ")]
    assert sorted(l.split(" ")[0] for l in lines) == ["cache/obj.pkl", "ckpt/model.PT", "data/huge.csv",
                                                      "out/adapter_model.safetensors"]
    assert "4 tracked file(s)" in proc.stderr
    assert "3,145,728 bytes is over the 2,097,152-byte limit" in proc.stderr
    assert "untracked.bin" not in proc.stderr


def test_the_size_limit_is_configurable(tmp_path):
    root = _repo(tmp_path / "r", {"a.txt": b"a" * 100})
    assert _run("--root", str(root), "--max-bytes", "99").returncode == 1
    assert _run("--root", str(root), "--max-bytes", "100").returncode == 0


def test_outside_a_git_checkout_it_skips_with_a_message(tmp_path):
    proc = _run("--root", str(tmp_path))
    assert proc.returncode == 0
    assert "not a git checkout" in proc.stderr


@pytest.mark.parametrize("line_before,line_after", [("check_tracked_files.py", "python -m pytest")])
def test_the_ci_path_runs_the_check_before_pytest(line_before, line_after):
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    lines = (REPO / "scripts" / "test.sh").read_text().splitlines()
    first = next(i for i, l in enumerate(lines) if line_before in l and not l.startswith("#"))
    assert first < next(i for i, l in enumerate(lines) if l.startswith(line_after))
