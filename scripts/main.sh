#!/usr/bin/env bash
# Main job: trains a quick NL Mask R-CNN with keypoints on the built-in generated data (nl_shapes,
# drawn on first use) on the CPU, then evaluates it on the val split and prints the COCO AP tables
# for box, mask and keypoints. Extra arguments go to tools/train_net.py, e.g.
#   bash scripts/main.sh SOLVER.MAX_ITER 100       # shorter
#   bash scripts/main.sh --num-gpus 2              # two CPU processes (DDP over GLOO)
# Output (checkpoints, logs, metrics, predictions): output/main_job/ (override: NL_MAIN_OUTPUT).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/ensure_env.sh
OUT="${NL_MAIN_OUTPUT:-output/main_job}"
echo "[main] training + evaluation on the built-in data; output in $OUT" >&2
start=$SECONDS
"${NL_DETECTRON_VENV:-.venv}/bin/python" tools/train_net.py \
  --config-file configs/quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml \
  "$@" OUTPUT_DIR "$OUT"
echo "[main] done in $((SECONDS - start)) s; AP tables above, details in $OUT/log.txt" >&2
