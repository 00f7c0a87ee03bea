#!/usr/bin/env bash
# On the lent GPU (the device tool runs it in a copy of this tree, .device-wheels/ carried; see
# scripts/device_wheels.sh): install the carried wheels beside the image's torch and triton, check the CUDA-only
# engine paths (tests/gpu: captured decode graphs, compiled Triton BGMV kernels, tokens equal to the eager path),
# then measure the engine at Mistral-7B's shape (bench/gpu_engine.py, issue 11). Everything goes to $OUT as it
# runs, so a timeout still returns what was measured.
set -uo pipefail
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install --quiet --no-deps --no-index --target /tmp/site .device-wheels/*.whl >"$OUT/pip.log" 2>&1 \
    || { echo "wheel install failed"; tail -20 "$OUT/pip.log"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD"
{ nvidia-smi; python3 -c "import torch, transformers, triton, xgrammar, peft; print(torch.__version__, \
torch.cuda.get_device_name(), transformers.__version__, triton.__version__, xgrammar.__version__, peft.__version__)"; } \
    >"$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt" | tail -1
timeout 180 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/gpu 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
timeout "${BENCH_TIMEOUT_S:-390}" python3 bench/gpu_engine.py --shape mistral-7b --out "$OUT" "$@" 2>&1 \
    | tee "$OUT/gpu_engine.log" | tail -40
