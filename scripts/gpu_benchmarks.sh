#!/usr/bin/env bash
# Measures on a CUDA machine what docs/attention_paths.md lists, in parts that each fit one device
# call: every step has a time limit, the limits of a part add up to at most 8 minutes, and a part
# writes at most 3 files. Estimates for an H200 (not yet timed as a whole) come from the earlier
# H200 figures (docs/attention_paths.md: res3 blocks 10-110 ms per forward + backward, res4 about
# an eighth of that), plus ~0.1 s of bookkeeping per timed call, ~15 s to start each process, and
# 0.5-1 s per Triton compile:
#
#   part           what it runs                                             est.     limits  files
#   goals-blocks   every block at res4 and res3 in fp32, TF32, bf16 at the  2-3 min  480 s   3
#                  default budget, and at res3 under a 1 GiB budget
#   goals-models   Mask R-CNN R50-FPN with 1 and 5 NL blocks against stock, 2-3 min  480 s   3
#                  800x1333, batch 2, fp32 (TF32 off) and bf16 autocast
#   paths          the PyTorch paths' CUDA tests, then every block forced   2-3 min  480 s   3
#                  onto each path (`efficient` included: the Gaussian's
#                  candidate), chunks sized for 1 GiB, beside the policy's
#   triton-tests   the Triton kernels' CUDA tests against float64 (several  ~1.5 min 480 s   1
#                  hundred compiles; 5-6 min without pytest-xdist)
#   triton-tables  every block forced onto the Triton paths, res4 and res3  4-5 min  480 s   3
#
# Files: OUT/<part>.log (all a part printed, step by step, with each step's seconds) and, for the
# measuring parts, OUT/summary.md and OUT/summary.json, shared: every goal cell of issue #9 in one
# table (variant x stage x dtype x budget, or model x precision: ratio against explicit or stock,
# peak memory, path taken, target, met; unmeasured cells say so) and the forced paths beside the
# policy's choice. A part run later into the same folder adds its rows; all five parts write 7
# files. Summaries of runs into separate folders merge into one:
# `python scripts/gpu_benchmarks.py summary DIR OTHER/summary.json` (no GPU needed).
#
# A machine with torch (CUDA), triton, numpy and pytest but no detectron2 and no package registry:
# carry wheels in a git-ignored folder of the checkout (.whl/ below). Prepare them where a registry
# is reachable, from the checkout (all pure Python but pycocotools):
#   mkdir -p .whl && { grep -qxF /.whl/ .git/info/exclude || echo /.whl/ >> .git/info/exclude; }
#   pip download --no-deps --only-binary=:all: --python-version 3.10 --platform any -d .whl \
#     sal-detectron2==0.7.2     # detectron2; rename its cp310-none-any wheel to py3-none-any
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
#     pycocotools yacs omegaconf==2.3.0 termcolor portalocker cloudpickle tabulate \
#     pytest-xdist execnet
#   pip wheel --no-deps -w .whl fvcore==0.1.5.post20221221 iopath==0.1.10 \
#     antlr4-python3-runtime==4.9.3
# (--python-version: the GPU machine's Python.) detectron2's other runtime needs
# (scripts/requirements-detectron2.txt) were on the H200 machine: Pillow, PyYAML, tqdm, opencv,
# matplotlib, packaging; hydra-core and faster-coco-eval are not imported by these parts. The
# preflight names anything still missing, e.g. "missing: detectron2 (carry the sal-detectron2
# wheel; ...)", and stops before any measurement (exit status 3). There, from the checkout:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site bash scripts/gpu_benchmarks.sh "$OUT" goals-blocks goals-models
# Every tool puts the checkout on sys.path itself; nothing needs installing.
#
# Usage: bash scripts/gpu_benchmarks.sh [OUTPUT_DIR [PART...]]
#   default output/gpu_benchmarks and every part; "goals" = goals-blocks goals-models, "triton" =
#   triton-tests triton-tables. PYTHON=... picks the interpreter. DRY_RUN=1 lists each part (its
#   steps' total limit and its files) and each step (its limit and command) without running them,
#   on any machine (tests/tools/test_gpu_benchmarks_script.py checks them). Compiled Triton kernels
#   go to TRITON_CACHE_DIR (default .triton_cache/ in the checkout, git-ignored): a rerun on the
#   same machine skips them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${1:-output/gpu_benchmarks}"
shift || true
ALL_PARTS=(goals-blocks goals-models paths triton-tests triton-tables)
[ "$#" -gt 0 ] || set -- "${ALL_PARTS[@]}"
PARTS=()
for part in "$@"; do
  case "$part" in
    goals) PARTS+=(goals-blocks goals-models) ;;
    triton) PARTS+=(triton-tests triton-tables) ;;
    goals-blocks | goals-models | paths | triton-tests | triton-tables) PARTS+=("$part") ;;
    *)
      echo "unknown part '$part'; allowed: ${ALL_PARTS[*]} (goals, triton: both of theirs)" >&2
      exit 2
      ;;
  esac
done
mkdir -p "$OUT"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$ROOT/.triton_cache}"
export PYTHONUNBUFFERED=1 # a step stopped at its limit leaves all it printed in the log
DRY_RUN="${DRY_RUN:-}"
EXIT_MISSING=3 # the preflight's status when something is missing (scripts/gpu_benchmarks.py)

# The tools' rows (--json) wait here for the summary, outside OUT.
SCRATCH="${TMPDIR:-/tmp}/gpu_benchmarks.rows"
if [ -z "$DRY_RUN" ]; then
  SCRATCH="$(mktemp -d)"
  trap 'rm -rf "$SCRATCH"' EXIT
fi

failed=()
# run_step SECONDS NAME COMMAND...: one step, bounded in time, its output appended to the part's
# log and its exit status left in STEP_STATUS; a failing or overrunning step is recorded and the
# next one still runs.
run_step() {
  local seconds="$1" name="$2"
  shift 2
  STEP_STATUS=0
  if [ -n "$DRY_RUN" ]; then
    printf 'step %s %q:' "$seconds" "$name"
    printf ' %q' "$@"
    printf '\n'
    return
  fi
  echo "[gpu_benchmarks] $name (at most ${seconds} s)" | tee -a "$LOG" >&2
  local t0=$SECONDS
  timeout --kill-after=10 "$seconds" "$@" 2>&1 | tee -a "$LOG" || STEP_STATUS=$?
  if [ "$STEP_STATUS" -ne 0 ]; then
    failed+=("$name")
    echo "[gpu_benchmarks] FAILED or timed out (status $STEP_STATUS): $name" | tee -a "$LOG" >&2
  fi
  echo "[gpu_benchmarks] $name took $((SECONDS - t0)) s" | tee -a "$LOG" >&2
}

# part NAME SECONDS FILES...: start a part whose steps' limits add up to SECONDS and which writes
# FILES into OUT; its preflight first, which stops the script if anything is missing.
part() {
  local name="$1" seconds="$2"
  shift 2
  LOG="$OUT/$name.log"
  ROWS="$SCRATCH/$name.jsonl"
  if [ -n "$DRY_RUN" ]; then
    echo "part $name: at most $seconds s, files: $*"
  else
    : >"$LOG"
  fi
  run_step 45 "preflight" "$PY" scripts/gpu_benchmarks.py preflight "$name"
  if [ "$STEP_STATUS" -ne 0 ]; then
    echo "[gpu_benchmarks] $name: nothing measured, the preflight failed (above)" >&2
    exit "$EXIT_MISSING"
  fi
}

summary() {
  run_step 15 "summary" "$PY" scripts/gpu_benchmarks.py summary "$OUT" "$ROWS"
}

BLOCKS=("$PY" tools/benchmark_blocks.py --device cuda --dtype fp32 tf32 bf16)

goals-blocks() {
  part goals-blocks 480 goals-blocks.log summary.json summary.md
  run_step 240 "whole blocks, default budget" "${BLOCKS[@]}" --tables block \
    --stages res4 res3 --repeats 5 --json "$ROWS"
  run_step 180 "whole blocks at res3, 1 GiB budget" "${BLOCKS[@]}" --tables block \
    --stages res3 --repeats 5 --budget-mb 1024 --json "$ROWS"
  summary
}

goals-models() {
  part goals-models 480 goals-models.log summary.json summary.md
  local config amp amp_args
  for config in mask_rcnn_nl_R50 mask_rcnn_nl5_R50; do
    for amp in bf16 fp32; do
      amp_args=()
      [ "$amp" = fp32 ] || amp_args=(--amp "$amp")
      run_step 105 "$config vs stock, $amp" "$PY" tools/benchmark_model.py \
        --config-file "configs/$config.yaml" --input-size 800 1333 --batch-size 2 --iters 10 \
        --warmup 3 "${amp_args[@]}" --json "$ROWS" --opts MODEL.WEIGHTS "" MODEL.DEVICE cuda
    done
  done
  summary
}

TRITON_TESTS=(tests/layers/test_triton_{relu_pair_sum,softmax_attention,blocks}.py)
PYTORCH_PATHS=(fused kept chunked efficient sorted chunked_concat)
PYTEST=("$PY" -m pytest -m cuda -q -p no:cacheprovider)

paths() {
  part paths 480 paths.log summary.json summary.md
  run_step 150 "PyTorch paths against float64 on the GPU" "${PYTEST[@]}" tests/layers \
    "${TRITON_TESTS[@]/#/--ignore=}"
  # Every block forced onto each path it can take (chunks sized for 1 GiB), and the policy's own
  # choice beside it: what a change of the policy's table would be made from.
  run_step 270 "each PyTorch path forced, res4 and res3" "${BLOCKS[@]}" --tables paths \
    --stages res4 res3 --repeats 3 --budget-mb 1024 --paths "${PYTORCH_PATHS[@]}" \
    --json "$ROWS"
  summary
}

triton-tests() {
  part triton-tests 480 triton-tests.log
  # Compiling dominates: one process per 2 cores where pytest-xdist is there.
  local parallel=()
  if [ -z "$DRY_RUN" ] && "$PY" -c "import xdist" 2>/dev/null; then
    parallel=(-n "$(($(nproc) / 2 > 1 ? $(nproc) / 2 : 1))")
  fi
  run_step 280 "Triton softmax kernels against float64 on the GPU" "${PYTEST[@]}" \
    "${parallel[@]}" tests/layers/test_triton_softmax_attention.py
  run_step 155 "Triton concatenation kernels and blocks against float64 on the GPU" \
    "${PYTEST[@]}" "${parallel[@]}" tests/layers/test_triton_{relu_pair_sum,blocks}.py
}

triton-tables() {
  part triton-tables 480 triton-tables.log summary.json summary.md
  # The first call of each row compiles and autotunes (its own column); autotuning results are
  # kept in TRITON_CACHE_DIR too. res4 and res3 have widths of their own, so each compiles half.
  local stage seconds
  for stage in res4 res3; do
    seconds=$([ "$stage" = res4 ] && echo 200 || echo 220)
    TRITON_CACHE_AUTOTUNING=1 run_step "$seconds" "each block on the Triton paths, $stage" \
      "${BLOCKS[@]}" --tables paths --stages "$stage" --repeats 3 --budget-mb 1024 \
      --paths triton triton_concat --json "$ROWS"
  done
  summary
}

for part in "${PARTS[@]}"; do
  "$part"
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "[gpu_benchmarks] failed steps: ${failed[*]}; outputs in $OUT" >&2
  exit 1
fi
[ -n "$DRY_RUN" ] || echo "[gpu_benchmarks] done: $OUT" >&2
