"""tools/train_net.py pieces that need no training: config loading, evaluator, dataset check."""

import importlib.util
import os

import pytest
from e2e_runner import REPO_ROOT, TRAIN_NET, quick_config

from detectron2.engine import default_argument_parser

from nl_detectron.data import register_builtin_datasets, shapes


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
