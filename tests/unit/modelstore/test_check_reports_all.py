"""`check` and `verify` report every problem of a store and never crash on a damaged file.

Each damage here made the old checker raise an uncaught ``SafetensorError`` (truncated or corrupt
weights), stop at the first unreadable manifest, skip a version without a manifest, or (``--fast``)
call a store with a corrupt safetensors header OK.
"""

import json
import os
from pathlib import Path

import pytest

from modelstore.cli import main
from modelstore.integrity import safetensors_problem
from modelstore.seed import adapter_ref
from tests.store_helpers import corrupt_weights, truncate_weights

HEALTHY = ("base_models@v1-tiny-mistral", "synthesizer/mistral_synthesizer_v1@seed-1")


def _damage_everything(store) -> dict[str, list[str]]:
    """One of each finding in one store; returns what the report must say about each, by ref."""
    paths = {agent: store.adapter_path(adapter_ref(agent))
             for agent in ("analyst", "critic", "journalist", "reasoning", "fact_checker")}
    size = truncate_weights(store, adapter_ref("analyst"))
    corrupt_weights(store, adapter_ref("critic"))  # same size: only sha256 or the header tells
    (paths["journalist"] / "adapter_config.json").unlink()
    (paths["reasoning"] / "manifest.json").write_text("{not json")
    (paths["fact_checker"] / "manifest.json").unlink()
    (store.root / ".staging" / "0123abcd" / "shard").mkdir(parents=True)
    return {
        "analyst/mistral_analyst_v1@seed-1": ["adapter_model.safetensors", f"size {size} != manifest", "truncated"],
        "critic/mistral_critic_v1@seed-1": ["adapter_model.safetensors", "safetensors header length 0 is impossible"],
        "journalist/mistral_journalist_v1@seed-1": ["adapter_config.json: missing"],
        "reasoning/mistral_reasoning_v1@seed-1": ["manifest.json does not validate"],
        "fact_checker/mistral_fact_checker_v1@seed-1": ["manifest.json is missing"],
        ".staging": ["1 leftover(s) of an interrupted publish", "run `modelstore gc --staging`"],
    }


@pytest.mark.parametrize("fast", [False, True], ids=["full", "fast"])
def test_check_reports_every_problem_and_goes_on(store, capsys, fast):
    expected = _damage_everything(store)
    problems = store.check(checksums=not fast)
    for where, needles in expected.items():
        hits = [p for p in problems if where in p]
        assert len(hits) == 1, (where, problems)
        assert all(n in hits[0] for n in needles), (where, hits[0])
    assert len(problems) == len(expected), problems
    assert not any(ref in p for p in problems for ref in HEALTHY)

    assert main(["--root", str(store.root), "check", *(["--fast"] if fast else [])]) == 1
    out = capsys.readouterr().out
    assert "store OK" not in out and out.count("FAIL ") == len(expected)
    assert len(out.splitlines()) == len(expected)  # one line per problem, a manifest's too
    assert main(["--root", str(store.root), "--json", "check"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and len(report["problems"]) == len(expected)


def test_verify_reports_every_version(store, capsys):
    expected = _damage_everything(store)
    del expected[".staging"]  # verify checks versions; the staging leftover is check's finding
    assert main(["--root", str(store.root), "verify"]) == 1
    out = capsys.readouterr().out
    for ref, needles in expected.items():
        block = out.split(f"BAD {ref}", 1)[1].split("\nOK ", 1)[0].split("\nBAD ", 1)[0]
        assert all(n in block for n in needles), (ref, block)
    for ref in HEALTHY:
        assert f"OK  {ref}" in out
    assert main(["--root", str(store.root), "--json", "verify"]) == 1
    rows = {r["ref"]: r for r in json.loads(capsys.readouterr().out)}
    assert {ref for ref, r in rows.items() if not r["ok"]} == set(expected)
    assert main(["--root", str(store.root), "verify", "reasoning/mistral_reasoning_v1@seed-1"]) == 1
    assert main(["--root", str(store.root), "verify", "critic/mistral_critic_v1@v9"]) == 2  # unknown: a bad request
    assert "version 'v9' not found" in capsys.readouterr().err


def _rewrite_header(path: Path, edit) -> None:
    data = bytearray(path.read_bytes())
    edit(data)
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def _flip_header_json(data: bytearray) -> None:
    data[8] = ord("[")  # '{' -> '[': the header no longer parses as an object


def _impossible_length(data: bytearray) -> None:
    data[:8] = (len(data) * 2).to_bytes(8, "little")


def _zeros(data: bytearray) -> None:
    data[:] = bytes(len(data))


@pytest.mark.parametrize("edit", [_flip_header_json, _impossible_length, _zeros])
@pytest.mark.parametrize("target", ["base", "adapter"])
def test_fast_check_is_never_ok_for_a_same_size_file_whose_header_does_not_parse(store, capsys, edit, target):
    if target == "base":
        ref, path = HEALTHY[0], store.resolve("base_models@current").path / "model.safetensors"
    else:
        ref = "critic/mistral_critic_v1@seed-1"
        path = store.adapter_path(ref) / "adapter_model.safetensors"
    size = path.stat().st_size
    _rewrite_header(path, edit)
    assert path.stat().st_size == size
    problems = store.check(checksums=False)
    assert problems and all(ref in p and path.name in p and "safetensors" in p for p in problems), problems
    assert main(["--root", str(store.root), "check", "--fast"]) == 1
    assert "store OK" not in capsys.readouterr().out


def _write_safetensors(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(4, 8), "b": torch.ones(3)}, str(path))
    return path


@pytest.mark.parametrize("edit, needle", [
    (lambda d: None, None),
    (lambda d: d.__delitem__(slice(-4, None)), "truncated: the tensors need 140 bytes of data, the file holds 136"),
    (lambda d: d.extend(b"\0" * 4), "4 bytes after its last tensor"),
    (lambda d: d.__delitem__(slice(5, None)), "too short to hold a header"),
    (lambda d: d.__setitem__(slice(0, 8), (1 << 40).to_bytes(8, "little")), "header length 1099511627776 is impossible"),
    (lambda d: d.__setitem__(9, 0xFF), "header is not valid JSON"),
    (lambda d: d.__setitem__(slice(9, 10), b"["), "header is not valid JSON"),
])
def test_safetensors_header_findings(tmp_path, edit, needle):
    path = _write_safetensors(tmp_path / "w.safetensors")
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))
    problem = safetensors_problem(path)
    assert (problem is None) if needle is None else (needle in problem), problem


def test_safetensors_entry_without_offsets_is_named(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1]}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    assert "entry 'w' lacks a valid dtype, shape or data_offsets" in safetensors_problem(path)


def test_cli_check_on_a_freshly_seeded_store_then_on_one_corrupt_adapter(store, capsys):
    root = str(store.root)
    assert main(["--root", root, "seed"]) == 0  # the fixture seeded through the same code: nothing to add
    assert "already complete" in capsys.readouterr().out
    assert main(["--root", root, "check"]) == 0
    assert capsys.readouterr().out.strip() == "store OK"

    corrupt_weights(store, adapter_ref("synthesizer"))
    for fast in ([], ["--fast"]):
        assert main(["--root", root, "check", *fast]) == 1
        fails = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL ")]
        assert len(fails) == 1, fails
        assert fails[0].startswith("FAIL synthesizer/mistral_synthesizer_v1@seed-1: adapter_model.safetensors: ")
