"""End-to-end: tools/lazyconfig_train_net.py trains, evaluates and reloads the quick LazyConfig.

A short CPU schedule of configs/quick_schedules/mask_rcnn_nl_R18_quick.py, started as the README's
command; then ``--eval-only`` on the final checkpoint must reproduce the final evaluation.
"""

import json
import math
import os

import pytest
import torch
from e2e_runner import REPO_ROOT, run_tool

LAZY_TRAIN_NET = os.path.join(REPO_ROOT, "tools", "lazyconfig_train_net.py")
QUICK_PY = os.path.join(REPO_ROOT, "configs", "quick_schedules", "mask_rcnn_nl_R18_quick.py")
ITERS = 20


def _run(datasets_root, *args):
    return run_tool(
        datasets_root, LAZY_TRAIN_NET, "--config-file", QUICK_PY, *args, threads=1
    ).check()


def _same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.slow
def test_quick_lazyconfig_trains_evaluates_and_reloads(datasets_root, tmp_path):
    out = str(tmp_path / "train")
    run = _run(
        datasets_root,
        f"train.max_iter={ITERS}",
        f"train.eval_period={ITERS}",
        f"train.output_dir={out}",
    )
    assert "Inserted 1 'nl' context block(s): bottom_up.res4.nonlocal1" in run.log
    assert "BlockTrainingWarning" not in run.log  # GN block, no decay on its gate
    # It trained: every iteration logged a finite loss, and the final model has the NL block.
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = [json.loads(line) for line in f if "total_loss" in line]
    assert metrics[-1]["iteration"] == ITERS - 1
    assert all(math.isfinite(m["total_loss"]) for m in metrics)
    # The block-health monitor is on by default (every 20 iterations, with the writers).
    assert "nonlocal/res4.nonlocal1/gate" in metrics[-1]
    final = os.path.join(out, "model_final.pth")
    state = torch.load(final, map_location="cpu", weights_only=False)["model"]
    assert any(k.startswith("backbone.bottom_up.res4.nonlocal1.block.") for k in state)
    # It evaluated on nl_shapes_val with FastCOCOEvaluator (boxes and masks).
    assert "Evaluating predictions with faster_coco_eval" in run.log
    assert set(run.results) == {"bbox", "segm"}

    again = _run(
        datasets_root,
        "--eval-only",
        f"train.init_checkpoint={final}",
        f"train.output_dir={tmp_path / 'eval'}",
    )
    assert again.results.keys() == run.results.keys()
    for task, metrics in run.results.items():
        assert all(_same(v, again.results[task][k]) for k, v in metrics.items()), task


@pytest.mark.slow
def test_block_checks_warn_once_when_training_starts(datasets_root, tmp_path):
    # BatchNorm in the block with the config's 2 images per iteration.
    run = _run(
        datasets_root, "train.max_iter=1", f"train.output_dir={tmp_path}", "model.backbone.norm=BN"
    )
    assert run.log.count("BlockTrainingWarning") == 1
    assert (
        "BlockTrainingWarning: Context block backbone.bottom_up.res4.nonlocal1.block: its "
        "BatchNorm out.norm normalises over 2 image(s) per device"
    ) in run.log
