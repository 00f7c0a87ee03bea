#!/usr/bin/env bash
# The main job on the embedded offline default: build the default ModelStore where anything is missing
# (idempotent, ~15 s the first time, instant afterwards), train and publish the default agents' adapters
# (the eight text agents' and the newsreader's, on the vision base)
# on their synthetic tasks where the store lacks them (one worker process per core, progress on stderr;
# skipped when they are there; JUSTNEWS_SKIP_TRAINING=1 skips it), then start the JustNews cluster from
# serve_config.yaml in the foreground: `serve run` starts a local Ray cluster (or joins the one
# RAY_ADDRESS / `ray start --head` names) and serves on http://127.0.0.1:8000 until Ctrl-C.
# Extra arguments go to `serve run` (e.g. --non-blocking). Ray token authentication is on (RAY_AUTH_MODE=token
# unless set otherwise) and the token file (~/.ray/auth_token) is made before Ray starts, readable by its owner
# only (scripts/ray_token.py): Ray itself would write it world-readable.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
export MODEL_STORE_ROOT="${MODEL_STORE_ROOT:-$HOME/.local/share/justnews/model_store}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
echo "==> ModelStore at $MODEL_STORE_ROOT" >&2
modelstore seed
if [ "${JUSTNEWS_SKIP_TRAINING:-0}" != 1 ]; then
    echo "==> default adapters: train + publish <agent>/mistral_<agent>_v1@trained-1 and" \
         "newsreader/llava_newsreader_v1@trained-1 (its synthetic images, on the vision base) where missing" >&2
    justnews-train defaults
fi
modelstore list
cd "$ROOT"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [ "$RAY_AUTH_MODE" = token ]; then
    python scripts/ray_token.py
fi
echo "==> serve run serve_config.yaml (http://127.0.0.1:8000; Ctrl-C stops it)" >&2
exec serve run serve_config.yaml "$@"
