"""``justnews --help`` lists every subcommand, the dispatched ones included, without importing torch."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from cluster.cli import DISPATCHED_COMMANDS, TRAINING_COMMANDS, build_parser, main

EVERY_COMMAND = ("plan", "switch-base", "preflight", "kuberay", "launcher", "train", "eval-adapter", "defaults", "synth", "canary", "hitl")


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


def _choices() -> set[str]:
    return set(next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices)


def test_help_lists_every_subcommand_with_a_line_of_help(capsys):
    text = _help(capsys, ["--help"])
    for name in sorted(_choices() | set(EVERY_COMMAND)):
        line = re.search(rf"^    {re.escape(name)}\s+(\S.*)$", text, re.MULTILINE)
        assert line, f"`justnews --help` does not list {name}:\n{text}"
        assert len(line.group(1)) > 10


def test_the_dispatched_commands_are_the_training_and_rollout_parsers():
    from training.cli import build_parser as training_parser

    sub = next(a for a in training_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == set(TRAINING_COMMANDS)
    assert set(DISPATCHED_COMMANDS) == set(TRAINING_COMMANDS) | {"canary", "hitl"}
    assert set(EVERY_COMMAND) <= _choices()


@pytest.mark.parametrize("argv,expected", [
    (["synth", "--help"], "--agent"),
    (["eval-adapter", "--help"], "--adapter"),
    (["canary", "--help"], "rollback"),
    (["canary", "status", "--help"], "--json"),
])
def test_dispatched_subcommands_answer_their_own_help(capsys, argv, expected):
    assert expected in _help(capsys, argv)


def test_help_imports_neither_torch_nor_the_training_package():
    code = ("import sys, contextlib, io\n"
            "from cluster.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'training', 'rollout') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
