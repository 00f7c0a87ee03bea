#!/usr/bin/env bash
# Download, here, the wheels the lent GPU machine lacks, into .device-wheels/ (git-ignored), at this .venv's
# versions: that machine has no registry, and its image holds torch, an older transformers (5.17), peft,
# accelerate, safetensors, triton and pytest, but no pydantic or xgrammar. Carry the folder with the device
# tool and run bench/on_device.sh there:
#   bash scripts/device_wheels.sh
#   run(command="bash bench/on_device.sh", carry=[".device-wheels"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.device-wheels
rm -rf "$dest" && mkdir -p "$dest"
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for name in pydantic pydantic_core annotated_types typing_inspection typing_extensions xgrammar apache-tvm-ffi \
            transformers tokenizers huggingface_hub peft accelerate safetensors; do
    pins+=("$name==$(version "$name")")
done
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --dest "$dest" --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any "${pins[@]}"
du -sh "$dest"
ls "$dest"
