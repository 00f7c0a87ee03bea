#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: unit (no Ray), integration (local Ray cluster), e2e
# (`serve run serve_config.yaml` in a subprocess), then the multi-node cluster test in its own process
# (one Python process can only join one Ray cluster, and the integration tests keep theirs open).
# First, before any test: no tracked weight file and no tracked file over 2 MiB (scripts/check_tracked_files.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
python scripts/check_tracked_files.py
python -m pytest -q -p no:cacheprovider --ignore=tests/multinode "$@"
python -m pytest -q -p no:cacheprovider tests/multinode "$@"
