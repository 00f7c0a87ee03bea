#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: unit (no Ray), integration (local Ray cluster), e2e
# (`serve run serve_config.yaml` in a subprocess), then the multi-node cluster test in its own process
# (one Python process can only join one Ray cluster, and the integration tests keep theirs open).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
python -m pytest -q -p no:cacheprovider --ignore=tests/multinode "$@"
python -m pytest -q -p no:cacheprovider tests/multinode "$@"
