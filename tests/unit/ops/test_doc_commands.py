"""Every ``modelstore``, ``justnews``, ``justnews-train`` and ``serve`` command the README and the runbook name exists.

Commands are taken from shell code blocks and inline code; each one's subcommand words (up to the first option,
placeholder, path or ref-like argument) get ``--help``, which must exit 0. The project's CLIs run in-process through
their ``main(argv)``; ``serve`` (Ray's click CLI) runs as ``.venv/bin/serve <sub> --help``.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DOCS = ("README.md", "docs/runbook.md")
PROGRAMS = ("justnews-train", "justnews", "modelstore", "serve")  # justnews-train before justnews
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")  # one-line inline code, or one wrapped onto a second line
_COMMAND = re.compile(r"(?<![\w/.$-])(" + "|".join(re.escape(p) for p in PROGRAMS) + r")(?=\s|$)(.*)")
_WORD = re.compile(r"^[a-z][a-z0-9_-]*$")  # a subcommand (or a plain positional such as base_models)


def _snippets(text: str) -> list[str]:
    """Shell code blocks' lines (comments cut) and inline code spans; Python and YAML blocks are not commands."""
    found = []
    for lang, body in _FENCE.findall(text):
        if lang in ("", "bash", "sh", "console", "shell"):
            found += [line.split(" #")[0] for line in body.splitlines() if not line.lstrip().startswith("#")]
    prose = _FENCE.sub("", text)
    found += [m.replace("\n", " ") for m in _INLINE.findall(prose)]
    return found


def doc_commands(text: str) -> set[tuple[str, ...]]:
    """``(program, subcommand, ...)`` for every command the text names."""
    commands = set()
    for snippet in _snippets(text):
        for match in _COMMAND.finditer(snippet):
            words = []
            for token in match.group(2).split():
                if not _WORD.match(token) or token in PROGRAMS:
                    break
                words.append(token)
            commands.add((match.group(1), *words))
    return commands


def _in_process(program: str, argv: list[str]) -> tuple[int, str]:
    from cluster.cli import main as justnews
    from modelstore.cli import main as modelstore
    from training.cli import main as justnews_train

    main = {"justnews": justnews, "modelstore": modelstore, "justnews-train": justnews_train}[program]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help exits 0, an unknown subcommand exits 2
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue() + err.getvalue()


def help_exit_code(command: tuple[str, ...]) -> tuple[int, str]:
    """Exit code and output of ``<command> --help``."""
    program, *words = command
    if program == "serve":
        proc = subprocess.run([str(Path(sys.executable).with_name("serve")), *words, "--help"], capture_output=True,
                              text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "RAY_USAGE_STATS_ENABLED": "0"})
        return proc.returncode, proc.stdout + proc.stderr
    return _in_process(program, [*words, "--help"])


DOC_COMMANDS = sorted(set().union(*(doc_commands((REPO / d).read_text()) for d in DOCS)))


def test_the_docs_name_the_commands_an_operator_needs():
    """The extraction itself works: these are named in the docs, so an empty or broken parse fails here."""
    for expected in [("modelstore", "publish", "adapter"), ("modelstore", "publish", "base"), ("modelstore", "seed"),
                     ("justnews", "canary", "start"), ("justnews", "plan"), ("justnews-train", "defaults"),
                     ("serve", "run"), ("serve", "status"), ("justnews", "train")]:
        assert expected in DOC_COMMANDS, f"{' '.join(expected)} not found in {DOCS}"
    assert not any("import" in c for c in DOC_COMMANDS), "a Python block was read as shell"


@pytest.mark.parametrize("command", [c for c in DOC_COMMANDS if c[0] != "serve"], ids=" ".join)
def test_documented_project_command_exists(command):
    code, output = help_exit_code(command)
    assert code == 0, f"`{' '.join(command)} --help` exited {code}:\n{output[-2000:]}"
    assert "usage:" in output


def test_documented_serve_commands_exist():
    for command in [c for c in DOC_COMMANDS if c[0] == "serve"]:
        code, output = help_exit_code(command)
        assert code == 0, f"`{' '.join(command)} --help` exited {code}:\n{output[-2000:]}"
        assert "Usage:" in output


@pytest.mark.parametrize("snippet,missing", [
    ("Publish it: `modelstore publish-adapter --agent critic`.", ("modelstore", "publish-adapter")),
    ("```bash\njustnews deploy --inventory x   # no such command\n```\n", ("justnews", "deploy")),
])
def test_a_command_that_does_not_exist_is_caught(snippet, missing):
    assert missing in doc_commands(snippet)
    code, _ = help_exit_code(missing)
    assert code == 2
