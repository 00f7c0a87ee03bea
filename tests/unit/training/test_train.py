"""Tiny training runs on the seeded store: the loss falls, the manifest carries the summary, a dry run or a
failed run publishes nothing, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from modelstore.errors import NotFoundError
from training.cli import main
from training.errors import ResumeError, TrainingError
from training.summary import SUMMARY_FILE
from training.trainer import run_training

REF = "critic/mistral_critic_v1@test-1"


def _published(store, ref=REF) -> bool:
    try:
        store.resolve(ref)
        return True
    except NotFoundError:
        return False


def test_tiny_run_lowers_loss_and_publishes_its_summary(store, fast_config):
    result = run_training(fast_config(publish=True), store=store)
    s = result.summary
    assert s["eval_loss"] < s["eval_loss_before"] and s["final_loss"] < s["first_loss"]
    manifest = store.manifest(REF)
    summary = manifest.training_summary
    assert summary["data"]["samples"] == {"train": 64, "eval": 16, "read": 64}
    assert len(summary["data"]["sha256"]) == 64
    assert summary["hyperparameters"]["lora_r"] == 8 and summary["steps"] == 6
    assert {"torch", "transformers", "peft"} <= set(summary["versions"])
    assert summary["wall_time_s"] > 0 and summary["eval_loss"] == s["eval_loss"]
    assert store.current_version("critic/mistral_critic_v1") == "test-1"
    beside = json.loads((store.adapter_path(REF) / SUMMARY_FILE).read_text())
    assert beside["eval_loss"] == s["eval_loss"]
    assert store.verify(REF).ok


def test_dry_run_trains_a_few_steps_and_publishes_nothing(store, fast_config):
    result = run_training(fast_config(dry_run=True, dry_run_steps=2, max_steps=50), store=store)
    assert result.published_ref is None and len(result.losses) == 2 and result.summary["dry_run"]
    assert not _published(store)


def test_bad_data_is_refused_by_line_and_nothing_is_published(store, critic_data, tmp_path, capsys):
    lines = critic_data[0].read_text().splitlines()
    record = json.loads(lines[2])
    record["output"]["verdict"] = "maybe"
    lines[2] = json.dumps(record)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code = main(["train", "--agent", "critic", "--train-files", str(bad), "--store-root", str(store.root),
                 "--output-dir", str(tmp_path / "out"), "--adapter-version", "test-1", "--publish", "--no-progress",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:3:" in err and "verdict" in err
    assert not _published(store)


def test_resumed_run_equals_an_uninterrupted_one(store, fast_config, tmp_path):
    whole = run_training(fast_config(output_dir=tmp_path / "whole"), store=store)
    run_training(fast_config(output_dir=tmp_path / "split", max_steps=3), store=store)
    # The first half's checkpoint has another max_steps (a hyper-parameter), so a resume is refused ...

    with pytest.raises(ResumeError, match="other hyper-parameters"):
        run_training(fast_config(output_dir=tmp_path / "split", resume=True), store=store)
    # ... while a run killed after its 3rd of 6 steps resumes to exactly the uninterrupted losses.
    with pytest.raises(TrainingError, match="interrupted after step 3"):
        run_training(fast_config(output_dir=tmp_path / "cut", save_every=3), store=store, interrupt_after=3)
    resumed = run_training(fast_config(output_dir=tmp_path / "cut", resume=True), store=store)
    assert resumed.losses == whole.losses
