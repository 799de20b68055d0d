"""tools/train_net.py pieces that need no training: config loading and checks, evaluator, dataset
check, optimizer, the checks before the first iteration."""

import importlib.util
import os
import sys

import pytest
from e2e_runner import REPO_ROOT, TRAIN_NET, quick_config

from detectron2.engine import default_argument_parser

from nl_detectron.data import register_builtin_datasets, shapes
from nl_detectron.engine import BlockTrainingChecks, BlockTrainingWarning


@pytest.fixture(scope="module")
def train_net_module():
    spec = importlib.util.spec_from_file_location("nl_train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def datasets_in(tmp_path):
    register_builtin_datasets(str(tmp_path))
    yield str(tmp_path)
    register_builtin_datasets()


def _args(config, *opts):
    return default_argument_parser().parse_args(["--config-file", config, *opts])


def test_load_config_adds_the_nonlocal_node(train_net_module):
    cfg = train_net_module.load_config(
        _args(quick_config("mask_rcnn_gc_R18_kp_quick.yaml"), "SOLVER.MAX_ITER", "7")
    )
    assert cfg.MODEL.NONLOCAL.TYPE == "gc"
    assert cfg.SOLVER.MAX_ITER == 7
    assert cfg.DATASETS.TRAIN == ("nl_shapes_train",)


def test_builtin_config_named_in_the_message_exists(train_net_module):
    assert os.path.isfile(os.path.join(REPO_ROOT, train_net_module.BUILTIN_DATA_CONFIG))


def test_quick_configs_pass_the_dataset_check(train_net_module, datasets_in):
    cfg = train_net_module.load_config(_args(quick_config("mask_rcnn_nl_R18_kp_quick.yaml")))
    train_net_module.check_datasets(cfg, "quick")  # returns: nothing is missing


def test_evaluator_takes_oks_sigmas_from_metadata_when_the_config_has_none(
    train_net_module, datasets_in, tmp_path
):
    cfg = train_net_module.load_config(
        _args(quick_config("mask_rcnn_nl_R18_kp_quick.yaml"), "TEST.KEYPOINT_OKS_SIGMAS", "[]")
    )
    # Building the evaluator draws the val split: it reads the annotation file at once.
    evaluator = train_net_module.Trainer.build_evaluator(cfg, "nl_shapes_val", str(tmp_path))
    assert list(evaluator._kpt_oks_sigmas) == list(shapes.KEYPOINT_OKS_SIGMAS)
    assert os.path.isfile(os.path.join(shapes.split_dir(datasets_in, "val"), "instances.json"))


def test_trainer_builds_the_optimizer_with_the_blocks_lr_and_decay(train_net_module):
    cfg = train_net_module.load_config(
        _args(
            quick_config("mask_rcnn_nl_R18_kp_quick.yaml"),
            *("MODEL.NONLOCAL.LR_MULTIPLIER", "10.0", "MODEL.NONLOCAL.WEIGHT_DECAY", "0.0"),
        )
    )
    model = train_net_module.Trainer.build_model(cfg)
    optimizer = train_net_module.Trainer.build_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    blocks = {
        (group["lr"], group["weight_decay"])
        for group in optimizer.param_groups
        for p in group["params"]
        if ".nonlocal1.block." in names[id(p)]
    }
    others = {
        (group["lr"], group["weight_decay"])
        for group in optimizer.param_groups
        for p in group["params"]
        if ".nonlocal1.block." not in names[id(p)]
    }
    assert blocks == {(0.2, 0.0)}
    assert others == {(0.02, 1e-4), (0.02, 0.0)}  # weights; norms (SOLVER.WEIGHT_DECAY_NORM)


def test_trainer_checks_the_blocks_before_the_first_iteration(
    train_net_module, monkeypatch, tmp_path
):
    cfg = train_net_module.load_config(
        _args(quick_config("mask_rcnn_nl_R18_kp_quick.yaml"), "MODEL.NONLOCAL.NORM", "BN")
    )
    cfg.OUTPUT_DIR = str(tmp_path)
    # No data: only the hooks are looked at.
    monkeypatch.setattr(
        train_net_module.Trainer, "build_train_loader", classmethod(lambda cls, cfg: [])
    )
    trainer = train_net_module.Trainer(cfg)
    checks = [h for h in trainer._hooks if isinstance(h, BlockTrainingChecks)]
    assert len(checks) == 1
    with pytest.warns(
        BlockTrainingWarning,
        match=r"^Context block backbone\.bottom_up\.res4\.nonlocal1\.block: its BatchNorm",
    ):
        checks[0].before_train()


def test_syncbn_on_the_cpu_stops_before_any_process_starts(train_net_module, monkeypatch):
    config = quick_config("mask_rcnn_nl_R18_kp_quick.yaml")
    argv = ["train_net.py", "--config-file", config, "MODEL.NONLOCAL.NORM", "SyncBN"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(train_net_module, "launch", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(ValueError, match=r"MODEL\.NONLOCAL\.NORM='SyncBN' is invalid with MODEL"):
        train_net_module.invoke_main()
