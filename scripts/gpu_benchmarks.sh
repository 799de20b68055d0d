#!/usr/bin/env bash
# Measures, on a CUDA machine, what docs/attention_paths.md lists: every aggregation path against
# float64 on the GPU, the whole blocks under the default budget and a 1 GiB budget (fp32, TF32,
# bf16), and the NL Mask R-CNN models against stock (fp32 and bf16 autocast). About 10 minutes on
# an H200. Needs a Python with torch (CUDA), detectron2 and nl_detectron importable, plus pytest for
# the first step and tabulate for the model benchmark (on a machine without a package registry, carry
# their wheels too: `pip download --no-deps pytest pluggy iniconfig packaging pygments tabulate`, all
# py3-none-any, into the same folder).
#
# Usage: bash scripts/gpu_benchmarks.sh [OUTPUT_DIR]     (default output/gpu_benchmarks; PYTHON=...)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${1:-output/gpu_benchmarks}"
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"

step() { echo "[gpu_benchmarks] $1" >&2; }

step "paths against float64 on the GPU"
if "$PY" -c "import pytest" 2>/dev/null; then
  "$PY" -m pytest tests/layers -m cuda -q -p no:cacheprovider | tee "$OUT/cuda_tests.txt"
else
  step "pytest is not importable: CUDA tests skipped (see the header for the wheels to carry)"
fi

step "whole blocks, default budget"
"$PY" tools/benchmark_blocks.py --device cuda --dtype fp32 tf32 bf16 --tables block \
  --stages res4 res3 --repeats 5 | tee "$OUT/blocks_default_budget.txt"

step "whole blocks at res3, 1 GiB budget"
"$PY" tools/benchmark_blocks.py --device cuda --dtype fp32 tf32 bf16 --tables block \
  --stages res3 --repeats 5 --budget-mb 1024 | tee "$OUT/blocks_res3_1GiB.txt"

for config in mask_rcnn_nl_R50 mask_rcnn_nl5_R50; do
  for amp in fp32 bf16; do
    step "$config vs stock, $amp"
    amp_args=()
    [ "$amp" = fp32 ] || amp_args=(--amp "$amp")
    "$PY" tools/benchmark_model.py --config-file "configs/$config.yaml" --input-size 800 1333 \
      --batch-size 2 --iters 10 --warmup 3 "${amp_args[@]}" \
      --opts MODEL.WEIGHTS "" MODEL.DEVICE cuda 2>&1 | tee "$OUT/model_${config}_${amp}.txt"
  done
done
step "done: $OUT"
