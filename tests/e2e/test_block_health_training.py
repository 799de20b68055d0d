"""tools/train_net.py records the blocks' health: where its hook goes, and a short DDP run."""

import importlib.util
import json
import os

import pytest
from e2e_runner import TRAIN_NET, quick_config

from detectron2.engine import default_argument_parser, hooks

from nl_detectron.engine import BlockHealthMonitor

MAIN = quick_config("mask_rcnn_nl_R18_kp_quick.yaml")


@pytest.fixture(scope="module")
def trainer_class():
    spec = importlib.util.spec_from_file_location("nl_train_net_health", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Trainer, module.load_config


def _hooks(trainer_class, monkeypatch, tmp_path, *opts):
    trainer, load_config = trainer_class
    args = ["--config-file", MAIN, "OUTPUT_DIR", str(tmp_path), *opts]
    cfg = load_config(default_argument_parser().parse_args(args))
    # No data: only the hooks are looked at.
    monkeypatch.setattr(trainer, "build_train_loader", classmethod(lambda cls, cfg: []))
    return [type(h) for h in trainer(cfg)._hooks]


def test_monitor_runs_before_evaluation_and_the_writers(trainer_class, monkeypatch, tmp_path):
    kinds = _hooks(trainer_class, monkeypatch, tmp_path)
    monitor = kinds.index(BlockHealthMonitor)
    assert kinds.index(hooks.LRScheduler) < monitor < kinds.index(hooks.EvalHook)
    assert monitor < kinds.index(hooks.PeriodicWriter)
    off = _hooks(trainer_class, monkeypatch, tmp_path, "MODEL.NONLOCAL.MONITOR_PERIOD", "0")
    assert BlockHealthMonitor not in off
    with pytest.raises(ValueError, match=r"MODEL\.NONLOCAL\.MONITOR_PERIOD=-1 is invalid"):
        _hooks(trainer_class, monkeypatch, tmp_path, "MODEL.NONLOCAL.MONITOR_PERIOD", "-1")


@pytest.mark.slow
def test_ddp_run_writes_the_health_into_metrics_json(train_net, tmp_path):
    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2", "DATASETS.TEST", "()"]
    opts += ["MODEL.NONLOCAL.MONITOR_PERIOD", "2"]
    run = train_net(MAIN, str(tmp_path), "--num-gpus", "2", opts=opts, threads=1).check()
    # Records at iterations 1 and 3; the writers (period 20) write the last iteration only.
    assert "block health @ iter 1: res4.nonlocal1 gate " in run.log
    assert "block health @ iter 3: res4.nonlocal1 gate " in run.log
    with open(tmp_path / "log.txt.rank1") as f:
        assert "block health @ iter 3: res4.nonlocal1 gate " in f.read()  # its own statistics
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        lines = [json.loads(line) for line in f]
    recorded = [line for line in lines if any(k.startswith("nonlocal/") for k in line)]
    assert [line["iteration"] for line in recorded] == [3]
    assert "total_loss" in recorded[0]  # the same line as the iteration's losses
    prefix = "nonlocal/res4.nonlocal1/"
    stats = {prefix + s for s in ("gate", "share", "entropy", "diversity", "path/kept")}
    assert {k for k in recorded[0] if k.startswith("nonlocal/")} == stats
    assert 0.0 < recorded[0][prefix + "gate"]
    assert 0.0 <= recorded[0][prefix + "entropy"] <= 1.0 + 1e-6
