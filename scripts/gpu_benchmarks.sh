#!/usr/bin/env bash
# Measures, on a CUDA machine, what docs/attention_paths.md lists, in two parts:
#   goals: the whole blocks under the default budget and a 1 GiB budget (fp32, TF32, bf16) and the
#          NL Mask R-CNN models against stock (fp32 and bf16 autocast): the issue's goal cells;
#   paths: every aggregation path against float64 on the GPU (the cuda-marked tests, Triton
#          kernels included), then every block forced onto each of its paths, Triton's included.
# Each part is meant to fit one 10-minute device call on an H200 (not yet timed; every step has
# its own time limit). Needs a Python with torch (CUDA), detectron2 and nl_detectron importable,
# plus pytest for the CUDA tests and tabulate for the model benchmark (on a machine without a
# package registry, carry their wheels too: `pip download --no-deps pytest pluggy iniconfig
# packaging pygments tabulate`, all py3-none-any, into the same folder).
#
# Usage: bash scripts/gpu_benchmarks.sh [OUTPUT_DIR [PART...]]
#   (default output/gpu_benchmarks, parts "goals paths"; PYTHON=...)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${1:-output/gpu_benchmarks}"
shift || true
if [ "$#" -gt 0 ]; then PARTS=("$@"); else PARTS=(goals paths); fi
for part in "${PARTS[@]}"; do
  case "$part" in
    goals | paths) ;;
    *) echo "unknown part '$part'; allowed: goals, paths" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"

failed=()
# run_step NAME SECONDS OUTPUT_FILE COMMAND...: one measurement, bounded in time; a failing or
# overrunning step is recorded and the next one still runs (one GPU session measures everything).
run_step() {
  local name="$1" seconds="$2" file="$3"
  shift 3
  echo "[gpu_benchmarks] $name (at most ${seconds} s)" >&2
  local t0=$SECONDS
  if ! timeout "$seconds" "$@" 2>&1 | tee "$file"; then
    failed+=("$name")
    echo "[gpu_benchmarks] FAILED or timed out: $name" >&2
  fi
  echo "[gpu_benchmarks] $name took $((SECONDS - t0)) s" >&2
}

"$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" |
  tee "$OUT/device.txt"

goals() {
  run_step "whole blocks, default budget" 300 "$OUT/blocks_default_budget.txt" \
    "$PY" tools/benchmark_blocks.py --device cuda --dtype fp32 tf32 bf16 --tables block \
    --stages res4 res3 --repeats 5

  run_step "whole blocks at res3, 1 GiB budget" 180 "$OUT/blocks_res3_1GiB.txt" \
    "$PY" tools/benchmark_blocks.py --device cuda --dtype fp32 tf32 bf16 --tables block \
    --stages res3 --repeats 5 --budget-mb 1024

  for config in mask_rcnn_nl_R50 mask_rcnn_nl5_R50; do
    for amp in bf16 fp32; do
      amp_args=()
      [ "$amp" = fp32 ] || amp_args=(--amp "$amp")
      run_step "$config vs stock, $amp" 240 "$OUT/model_${config}_${amp}.txt" \
        "$PY" tools/benchmark_model.py --config-file "configs/$config.yaml" --input-size 800 1333 \
        --batch-size 2 --iters 10 --warmup 3 "${amp_args[@]}" \
        --opts MODEL.WEIGHTS "" MODEL.DEVICE cuda
    done
  done
}

paths() {
  if "$PY" -c "import pytest" 2>/dev/null; then
    run_step "paths against float64 on the GPU" 200 "$OUT/cuda_tests.txt" \
      "$PY" -m pytest tests/layers -m cuda -q -p no:cacheprovider
  else
    echo "[gpu_benchmarks] pytest is not importable: CUDA tests skipped (see the header)" >&2
    failed+=("cuda tests (no pytest)")
  fi

  # Every block forced onto each path it can take (chunks sized for 1 GiB): what a change of the
  # policy's table would be made from.
  run_step "each path forced, res4 and res3" 360 "$OUT/blocks_each_path.txt" \
    "$PY" tools/benchmark_blocks.py --device cuda --dtype fp32 tf32 bf16 --tables paths \
    --stages res4 res3 --repeats 3 --budget-mb 1024
}

for part in "${PARTS[@]}"; do
  "$part"
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "[gpu_benchmarks] failed steps: ${failed[*]}; outputs in $OUT" >&2
  exit 1
fi
echo "[gpu_benchmarks] done: $OUT" >&2
