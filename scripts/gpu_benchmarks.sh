#!/usr/bin/env bash
# Measures, on a CUDA machine, what docs/attention_paths.md lists, in three parts:
#   goals:  the whole blocks under the default budget and a 1 GiB budget (fp32, TF32, bf16) and
#           the NL Mask R-CNN models against stock (fp32 and bf16 autocast): the issue's goal cells;
#   paths:  every PyTorch aggregation path against float64 on the GPU (the cuda-marked tests),
#           then every block forced onto each of those paths: what the policy's table is set from;
#   triton: the Triton kernels against float64 on the GPU, then every block forced onto them.
# Each part is meant to fit one 10-minute device call on an H200 (not yet timed; every step has
# its own time limit). Triton compiles each kernel once per launch configuration, widths and
# dtype (roughly a second each, several hundred in the triton part): compiled kernels go to
# TRITON_CACHE_DIR (default .triton_cache/ in the checkout, git-ignored), so a rerun on the same
# machine skips them, and the triton part's tests run in parallel processes where pytest-xdist is
# importable. Needs a Python with torch (CUDA), detectron2 and nl_detectron importable, plus
# pytest for the CUDA tests and tabulate for the model benchmark (on a machine without a package
# registry, carry their wheels too: `pip download --no-deps pytest pluggy iniconfig packaging
# pygments tabulate pytest-xdist execnet`, all py3-none-any, into the same folder).
#
# Usage: bash scripts/gpu_benchmarks.sh [OUTPUT_DIR [PART...]]
#   (default output/gpu_benchmarks, parts "goals paths triton"; PYTHON=...; DRY_RUN=1 prints
#   each step's command instead of running it, on any machine: tests/tools check them)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${1:-output/gpu_benchmarks}"
shift || true
if [ "$#" -gt 0 ]; then PARTS=("$@"); else PARTS=(goals paths triton); fi
for part in "${PARTS[@]}"; do
  case "$part" in
    goals | paths | triton) ;;
    *) echo "unknown part '$part'; allowed: goals, paths, triton" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$ROOT/.triton_cache}"
DRY_RUN="${DRY_RUN:-}"
[ -n "$DRY_RUN" ] ||
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"

failed=()
# run_step NAME SECONDS OUTPUT_FILE COMMAND...: one measurement, bounded in time; a failing or
# overrunning step is recorded and the next one still runs (one GPU session measures everything).
run_step() {
  local name="$1" seconds="$2" file="$3"
  shift 3
  if [ -n "$DRY_RUN" ]; then
    printf 'step %q:' "$name"
    printf ' %q' "$@"
    printf '\n'
    return
  fi
  echo "[gpu_benchmarks] $name (at most ${seconds} s)" >&2
  local t0=$SECONDS
  if ! timeout "$seconds" "$@" 2>&1 | tee "$file"; then
    failed+=("$name")
    echo "[gpu_benchmarks] FAILED or timed out: $name" >&2
  fi
  echo "[gpu_benchmarks] $name took $((SECONDS - t0)) s" >&2
}

[ -n "$DRY_RUN" ] ||
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

TRITON_TESTS=(tests/layers/test_triton_{relu_pair_sum,softmax_attention,blocks}.py)
PYTORCH_PATHS=(fused kept chunked sorted chunked_concat)
TRITON_PATHS=(triton triton_concat)

# cuda_tests NAME SECONDS FILE PYTEST_ARGS...: the cuda-marked tests among PYTEST_ARGS.
cuda_tests() {
  local name="$1" seconds="$2" file="$3"
  shift 3
  if ! "$PY" -c "import pytest" 2>/dev/null; then
    echo "[gpu_benchmarks] pytest is not importable: $name skipped (see the header)" >&2
    failed+=("$name (no pytest)")
    return
  fi
  run_step "$name" "$seconds" "$file" "$PY" -m pytest -m cuda -q -p no:cacheprovider "$@"
}

paths() {
  cuda_tests "PyTorch paths against float64 on the GPU" 150 "$OUT/cuda_tests.txt" \
    tests/layers "${TRITON_TESTS[@]/#/--ignore=}"

  # Every block forced onto each path it can take (chunks sized for 1 GiB): what a change of the
  # policy's table would be made from.
  run_step "each PyTorch path forced, res4 and res3" 300 "$OUT/blocks_each_path.txt" \
    "$PY" tools/benchmark_blocks.py --device cuda --dtype fp32 tf32 bf16 --tables paths \
    --stages res4 res3 --repeats 3 --budget-mb 1024 --paths "${PYTORCH_PATHS[@]}"
}

triton() {
  # Compiling dominates these tests: one process per 2 cores where pytest-xdist is there.
  local parallel=()
  if "$PY" -c "import xdist" 2>/dev/null; then
    parallel=(-n "$(($(nproc) / 2 > 1 ? $(nproc) / 2 : 1))")
  fi
  cuda_tests "Triton kernels against float64 on the GPU" 240 "$OUT/cuda_tests_triton.txt" \
    "${parallel[@]}" "${TRITON_TESTS[@]}"

  # The first call of each row compiles and autotunes (its own column); autotuning results are
  # kept in TRITON_CACHE_DIR too, so that a rerun times the same launch configurations.
  TRITON_CACHE_AUTOTUNING=1 run_step "each block on the Triton paths, res4 and res3" 420 \
    "$OUT/blocks_triton_paths.txt" \
    "$PY" tools/benchmark_blocks.py --device cuda --dtype fp32 tf32 bf16 --tables paths \
    --stages res4 res3 --repeats 3 --budget-mb 1024 --paths "${TRITON_PATHS[@]}"
}

for part in "${PARTS[@]}"; do
  "$part"
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "[gpu_benchmarks] failed steps: ${failed[*]}; outputs in $OUT" >&2
  exit 1
fi
echo "[gpu_benchmarks] done: $OUT" >&2
