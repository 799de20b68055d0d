"""End-to-end: tools/train_net.py trains and evaluates on the built-in data, resumes, runs DDP.

The training runs are short CPU schedules of the quick configs (R-18, 160 px images). Each run is
a subprocess started exactly like the README's commands. The learning checks compare with the
score of the same model untrained, measured here too.
"""

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from e2e_runner import REPO_ROOT, TRAIN_NET, quick_config

MAIN = quick_config("mask_rcnn_nl_R18_kp_quick.yaml")
TYPES = ("nl", "dnl", "snl", "gc")
# The learning checks' schedule: a third of the main job's, with its own learning-rate decay
# (most of the early gain comes right after the first decay).
LEARN_OPTS = ["SOLVER.MAX_ITER", "200", "SOLVER.STEPS", "(150, 190)", "SOLVER.WARMUP_ITERS", "30"]
# (task, metric, margin in AP points over the untrained model). After 200 iterations the DNL model
# scored bbox AP50 8.9, segm AP50 6.3, keypoints AP50 7.5 here; untrained, all are below 0.1.
LEARNING_MARGINS = (("bbox", "AP50", 4.0), ("segm", "AP50", 2.0), ("keypoints", "AP50", 2.0))
# Runs that only need to start, step and stop: no evaluation.
NO_EVAL = ["DATASETS.TEST", "()"]
SHARED_MINI = os.path.join(REPO_ROOT, "..", "shared", "data", "coco_person_mini")


def _ap(results, task, metric):
    value = results[task][metric]
    return 0.0 if math.isnan(value) else value


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _has_params(checkpoint, prefix):
    return any(name.startswith(prefix) for name in _load(checkpoint)["model"])


@pytest.fixture(scope="module")
def untrained(train_net, tmp_path_factory):
    """COCO metrics of the main quick model at initialisation (seeded), on nl_shapes_val."""
    out = str(tmp_path_factory.mktemp("untrained"))
    run = train_net(MAIN, out, "--eval-only", opts=["MODEL.WEIGHTS", ""], threads=1).check()
    assert set(run.results) == {"bbox", "segm", "keypoints"}
    return run.results


@pytest.mark.slow
def test_untrained_model_scores_near_zero(untrained):
    # The data must not be solvable by chance: random weights find (almost) nothing.
    for task in ("bbox", "segm", "keypoints"):
        assert _ap(untrained, task, "AP") < 1.0, untrained


@pytest.mark.slow
@pytest.mark.parametrize("block", TYPES)
def test_each_block_type_trains_and_learns(block, train_net, untrained, tmp_path):
    config = quick_config(f"mask_rcnn_{block}_R18_kp_quick.yaml")
    run = train_net(config, str(tmp_path), opts=LEARN_OPTS, threads=1).check()
    assert _has_params(tmp_path / "model_final.pth", "backbone.bottom_up.res4.nonlocal1.")
    res = run.results
    assert set(res) == {"bbox", "segm", "keypoints"}, run.log[-3000:]
    # Clearly above the untrained model on every task (AP in percent).
    for task, metric, margin in LEARNING_MARGINS:
        before, after = _ap(untrained, task, metric), _ap(res, task, metric)
        assert after > before + margin, f"{block} {task} {metric}: {before} -> {after}\n{res}"


@pytest.mark.slow
def test_c4_variant_trains_and_evaluates(train_net, tmp_path):
    config = quick_config("mask_rcnn_nl_R18_C4_quick.yaml")
    # Score threshold 0: after 20 iterations the mask branch still gets boxes to segment.
    opts = ["SOLVER.MAX_ITER", "20", "SOLVER.WARMUP_ITERS", "10"]
    opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    run = train_net(config, str(tmp_path), opts=opts, threads=1).check()
    assert _has_params(tmp_path / "model_final.pth", "backbone.res4.nonlocal1.")
    assert set(run.results) == {"bbox", "segm"}


@pytest.mark.slow
def test_keypoint_head_variant_trains(train_net, tmp_path):
    config = quick_config("keypoint_rcnn_nlhead_R18_quick.yaml")
    opts = ["SOLVER.MAX_ITER", "10", "SOLVER.WARMUP_ITERS", "5", *NO_EVAL]
    run = train_net(config, str(tmp_path), opts=opts, threads=1).check()
    for k in (2, 4):
        assert _has_params(tmp_path / "model_final.pth", f"roi_heads.keypoint_head.nonlocal{k}.")
    assert "loss_keypoint" in run.log


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SHARED_MINI), reason="../shared/data is absent")
def test_trains_and_evaluates_on_real_coco_persons(train_net, tmp_path):
    # Same tool and config on coco_person_mini (4 real photos, 17 COCO keypoints); the OKS sigmas
    # come from the dataset's metadata once the config's 13 are cleared.
    mini = '("coco_person_mini",)'
    opts = ["SOLVER.MAX_ITER", "10", "SOLVER.WARMUP_ITERS", "5"]
    opts += ["DATASETS.TRAIN", mini, "DATASETS.TEST", mini, "MODEL.ROI_HEADS.NUM_CLASSES", "1"]
    opts += ["MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "17", "TEST.KEYPOINT_OKS_SIGMAS", "[]"]
    opts += ["INPUT.MIN_SIZE_TRAIN", "(320,)", "INPUT.MAX_SIZE_TRAIN", "480"]
    opts += ["INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "480"]
    opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # boxes to score after 10 steps
    run = train_net(MAIN, str(tmp_path), opts=opts, threads=1).check()
    assert set(run.results) == {"bbox", "segm", "keypoints"}


def _last_checkpoint(out_dir):
    with open(os.path.join(out_dir, "last_checkpoint")) as f:
        return f.read().strip()


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_checkpoint(datasets_root, train_net, tmp_path):
    out = str(tmp_path)
    opts = ["SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "10", *NO_EVAL]
    cmd = [sys.executable, TRAIN_NET, "--config-file", MAIN, "OUTPUT_DIR", out, *opts]
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, OMP_NUM_THREADS="1")
    # Own session, so the kill reaches the data-loader worker as well.
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while not os.path.exists(os.path.join(out, "last_checkpoint")):
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    last = _last_checkpoint(out)
    assert last.startswith("model_0") and last != "model_final.pth"
    done = int(last[len("model_") : -len(".pth")])  # the iteration the checkpoint ended
    assert not os.path.exists(os.path.join(out, "model_final.pth"))

    run = train_net(MAIN, out, "--resume", opts=opts, threads=1).check()
    assert f"Starting training from iteration {done + 1}" in run.log
    final = _load(os.path.join(out, "model_final.pth"))
    assert final["iteration"] == 29
    assert _last_checkpoint(out) == "model_final.pth"


@pytest.mark.slow
def test_two_process_ddp_on_cpu(train_net, tmp_path):
    # launch() falls back to GLOO without a GPU; each process gets one image per batch.
    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2", *NO_EVAL]
    run = train_net(MAIN, str(tmp_path), "--num-gpus", "2", opts=opts, threads=1).check()
    assert "Rank of current process: 0. World size: 2" in run.log
    # Other ranks log to their own file only.
    with open(tmp_path / "log.txt.rank1") as f:
        assert "Rank of current process: 1. World size: 2" in f.read()
    state = _load(tmp_path / "model_final.pth")
    assert state["iteration"] == 3
    # The checkpoint holds the bare model, not the DDP wrapper ("module." prefixes).
    assert not any(k.startswith("module.") for k in state["model"])


def test_missing_coco_stops_with_a_clear_message(tmp_path):
    json_file = os.path.join(str(tmp_path), "coco", "annotations", "instances_train2017.json")
    assert not os.path.exists(json_file)
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    cmd = [sys.executable, TRAIN_NET, "--config-file", "configs/mask_rcnn_nl_R50.yaml"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    message = proc.stderr
    assert "Cannot run configs/mask_rcnn_nl_R50.yaml" in message
    assert json_file in message
    assert "coco/annotations/instances_{train,val}2017.json" in message
    assert "configs/quick_schedules/mask_rcnn_nl_R18_kp_quick.yaml" in message
    assert "Traceback" not in message
