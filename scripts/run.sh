#!/usr/bin/env bash
# The main job on the embedded offline default: build the default ModelStore if it is missing,
# then list it and run the store's health check. (The serving cluster joins this command when the
# BaseLLM / agent deployments land.)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
export MODEL_STORE_ROOT="${MODEL_STORE_ROOT:-$HOME/.local/share/justnews/model_store}"
echo "==> ModelStore at $MODEL_STORE_ROOT" >&2
modelstore seed
modelstore list
modelstore check
