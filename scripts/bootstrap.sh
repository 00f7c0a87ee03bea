#!/usr/bin/env bash
# Create .venv in the repository root (if missing) and install the project with its test tools.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "==> creating $ROOT/.venv" >&2
    "$PY" -m venv "$ROOT/.venv"
fi
if ! "$ROOT/.venv/bin/python" -c "import modelstore, ray, peft, xgrammar, pytest" 2>/dev/null \
   || [ "$ROOT/pyproject.toml" -nt "$ROOT/.venv/.installed" ]; then
    echo "==> installing justnews-serve and its dependencies into .venv (first run: a few minutes)" >&2
    "$ROOT/.venv/bin/pip" install --quiet --upgrade pip
    "$ROOT/.venv/bin/pip" install --quiet -e "$ROOT[dev]"
    touch "$ROOT/.venv/.installed"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export TOKENIZERS_PARALLELISM=false
