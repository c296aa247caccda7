#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.sh needs that the GPU machine lacks (docs/gpu.md): run here, in the repo root.
#   .whl/          wheels of runtime/test deps missing there (its python3 is 3.12 with torch, triton, transformers)
#   .gpu-models/   the store's real models cut in 56 MiB chunks: a call carries 64 MiB at most, so each chunk travels
#                  in its own call (warm calls keep what earlier ones carried); gpu_check.sh reassembles them.
# Prints the carry list of each call.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 -d .whl \
  platformdirs==4.14.9 llguidance==1.9.1 gguf==0.19.0
rm -rf .gpu-models
for name in "$@"; do  # store names, e.g. smollm2-135m gemma3-270m
  path=$($PY -c "import sys; from deeproots.store import ModelStore as S; print(S().resolve(sys.argv[1]))" "$name")
  folder=$(dirname "$path")
  mkdir -p ".gpu-models/$name"
  cp "$folder/manifest.json" ".gpu-models/$name/"
  file=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['file'])" "$folder/manifest.json")
  split -b 56M -d "$folder/$file" ".gpu-models/$name/$file."
done
echo "carry, one call each:"
find .gpu-models -name '*.gguf.*' | sort | sed 's/^/  /'
echo "then: bash benchmarks/gpu_check.sh \$OUT, carry [\".whl\", \".gpu-models/NAME/manifest.json\", ...]"
