#!/usr/bin/env bash
# The CUDA backend on a GPU machine (docs/gpu.md): bash benchmarks/gpu_check.sh OUTDIR  -> OUTDIR/gpu_check.json
# Runs in under 8 minutes on an H200 with what that machine has (python3 with CUDA torch, triton, transformers);
# what it lacks travels in .whl/ (installed from there if present), the real models in .gpu-models/ (chunks,
# reassembled into a store here). Every section is written to the report as it ends.
set -u
OUT=${1:?usage: gpu_check.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
started=$(date +%s)

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# The C core (the CPU reference path's kernels) for this machine's Python.
$PY setup.py build_ext --inplace -q > "$OUT/build_ext.log" 2>&1 || { echo "build_ext failed: see build_ext.log"; }

# Real models: .gpu-models/NAME/{manifest.json, FILE.NN chunks} (benchmarks/gpu_carry.sh, one chunk a call) -> the
# store's own layout, $DEEPROOTS_HOME/models/NAME/{manifest.json, FILE}.
export DEEPROOTS_HOME=${DEEPROOTS_HOME:-/tmp/deeproots-home}
for manifest in .gpu-models/*/manifest.json; do
  [ -e "$manifest" ] || continue
  name=$(basename "$(dirname "$manifest")")
  file=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['file'])" "$manifest")
  mkdir -p "$DEEPROOTS_HOME/models/$name"
  cp "$manifest" "$DEEPROOTS_HOME/models/$name/"
  [ -s "$DEEPROOTS_HOME/models/$name/$file" ] || cat ".gpu-models/$name/$file."* > "$DEEPROOTS_HOME/models/$name/$file"
done

budget=$(( 450 - ($(date +%s) - started) ))
timeout $(( budget + 20 )) $PY benchmarks/gpu_check.py "$OUT" --budget "$budget"
echo "gpu_check: $(( $(date +%s) - started )) s, report in $OUT/gpu_check.json"
