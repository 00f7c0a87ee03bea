#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: unit (no Ray), integration (local Ray cluster), e2e.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
exec python -m pytest -q -p no:cacheprovider "$@"
