"""The blocks' lr multiplier and weight decay: they change the blocks' parameter groups and
nothing else; with their defaults the groups are detectron2's."""

import copy
import glob
import inspect
import math
import os

import pytest
import torch
from context_nets import (
    CONFIGS_DIR,
    HEAD_QUICK,
    LAZY_QUICK,
    ContextNet,
    block_parameter_names,
    group_structure,
    hyperparams_by_name,
    quick_cfg,
)

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer, get_default_optimizer_params

from nl_detectron import add_nonlocal_config
from nl_detectron.engine import build_nonlocal_optimizer, get_nonlocal_optimizer_params
from nl_detectron.modeling import check_nonlocal_config

# Every rule of detectron2 in force: bias lr factor, norm and bias decay.
SOLVER = {
    "base_lr": 0.02,
    "weight_decay": 1e-4,
    "weight_decay_norm": 0.0,
    "bias_lr_factor": 2.0,
    "weight_decay_bias": 0.0,
}


def _lr_factor(name):
    return 0.5 if name.startswith("nl.") else 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        SOLVER,
        {
            "base_lr": 0.02,
            "lr_factor_func": _lr_factor,
            "overrides": {"bias": {"weight_decay": 0.0}},
        },
    ],
    ids=["none", "solver", "lr_factor_func"],
)
def test_defaults_give_detectron2s_groups(kwargs):
    model = ContextNet()
    expected = get_default_optimizer_params(model, **copy.deepcopy(kwargs))
    groups = get_nonlocal_optimizer_params(model, **copy.deepcopy(kwargs))
    assert group_structure(groups) == group_structure(expected)


@pytest.mark.parametrize("multiplier, decay", [(10.0, 0.5), (3.0, None), (1.0, 0.0), (0.0, 0.0)])
def test_settings_change_the_blocks_groups_and_nothing_else(multiplier, decay):
    model = ContextNet()
    stock = hyperparams_by_name(model, get_default_optimizer_params(model, **SOLVER))
    groups = get_nonlocal_optimizer_params(
        model, block_lr_multiplier=multiplier, block_weight_decay=decay, **SOLVER
    )
    ours = hyperparams_by_name(model, groups)
    blocks = block_parameter_names(model)
    # Weights, biases (lr x 2, no decay) and norm scales (no decay) of every block type.
    assert {"nl.theta.weight", "nl.theta.bias", "nl.out.norm.weight", "dnl.out.norm.bias"} < blocks
    assert {"snl.w1.weight", "gc.transform.norm.weight", "gc.transform.conv2.weight"} < blocks
    assert (stock["nl.theta.bias"]["lr"], stock["nl.out.norm.weight"]["weight_decay"]) == (0.04, 0)
    assert ours.keys() == stock.keys() == {n for n, _ in model.named_parameters()}
    for name, hyperparams in ours.items():
        if name not in blocks:
            assert hyperparams == stock[name], name
            continue
        assert math.isclose(hyperparams["lr"], stock[name]["lr"] * multiplier), name
        expected_decay = stock[name]["weight_decay"] if decay is None else decay
        assert hyperparams["weight_decay"] == expected_decay, name
    # detectron2's reduction: one group per distinct set of hyperparameters.
    assert len(groups) == len({tuple(sorted(h.items())) for h in ours.values()})


def test_lr_multiplier_multiplies_lr_factor_func():
    model = ContextNet()
    kwargs = {"base_lr": 0.02, "lr_factor_func": _lr_factor}
    ours = hyperparams_by_name(
        model, get_nonlocal_optimizer_params(model, block_lr_multiplier=10.0, **kwargs)
    )
    assert math.isclose(ours["nl.theta.weight"]["lr"], 0.02 * 0.5 * 10)
    assert math.isclose(ours["dnl.theta.weight"]["lr"], 0.02 * 10)
    assert ours["stem.weight"]["lr"] == 0.02


def test_blocks_of_backbone_and_keypoint_head():
    model = build_model(quick_cfg(HEAD_QUICK))
    blocks = block_parameter_names(model)
    assert {n.split(".block.")[0] for n in blocks if ".block." in n} == {
        "backbone.bottom_up.res4.nonlocal1"
    }
    assert any(n.startswith("roi_heads.keypoint_head.nonlocal2.") for n in blocks)
    assert any(n.startswith("roi_heads.keypoint_head.nonlocal4.") for n in blocks)
    stock = hyperparams_by_name(model, get_default_optimizer_params(model, **SOLVER))
    ours = hyperparams_by_name(
        model, get_nonlocal_optimizer_params(model, block_lr_multiplier=10.0, **SOLVER)
    )
    changed = {n for n in ours if ours[n] != stock[n]}
    assert changed == blocks


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"block_lr_multiplier": -1.0}, r"block_lr_multiplier=-1\.0 is invalid.*finite real >= 0"),
        ({"block_lr_multiplier": math.inf}, r"block_lr_multiplier=inf is invalid"),
        ({"block_lr_multiplier": math.nan}, r"block_lr_multiplier=nan is invalid"),
        ({"block_lr_multiplier": True}, r"block_lr_multiplier=True is invalid"),
        ({"block_lr_multiplier": "10"}, r"block_lr_multiplier='10' is invalid"),
        ({"block_weight_decay": -1e-4}, r"block_weight_decay=-0\.0001 is invalid.*None or a"),
        ({"block_weight_decay": "0"}, r"block_weight_decay='0' is invalid"),
        (
            {"block_lr_multiplier": 10.0, "base_lr": None},
            r"block_lr_multiplier=10\.0 needs base_lr",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=r"^get_nonlocal_optimizer_params\(\): " + match):
        get_nonlocal_optimizer_params(ContextNet(), **{"base_lr": 0.02, **kwargs})


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("LR_MULTIPLIER", -1.0, r"MODEL\.NONLOCAL\.LR_MULTIPLIER=-1\.0 is invalid.*finite real"),
        ("LR_MULTIPLIER", math.inf, r"MODEL\.NONLOCAL\.LR_MULTIPLIER=inf is invalid"),
        ("LR_MULTIPLIER", None, r"MODEL\.NONLOCAL\.LR_MULTIPLIER=None is invalid"),
        ("WEIGHT_DECAY", -1e-4, r"MODEL\.NONLOCAL\.WEIGHT_DECAY=-0\.0001 is invalid.*None \("),
        ("WEIGHT_DECAY", "0", r"MODEL\.NONLOCAL\.WEIGHT_DECAY='0' is invalid"),
        ("WEIGHT_DECAY", math.nan, r"MODEL\.NONLOCAL\.WEIGHT_DECAY=nan is invalid"),
    ],
)
def test_bad_config_keys_are_named(key, value, match):
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.MODEL.NONLOCAL[key] = value
    with pytest.raises(ValueError, match=match):
        check_nonlocal_config(cfg)
    with pytest.raises(ValueError, match=match):
        build_nonlocal_optimizer(cfg, ContextNet())


def test_defaults_are_the_config_defaults():
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    parameters = inspect.signature(get_nonlocal_optimizer_params).parameters
    assert parameters["block_lr_multiplier"].default == cfg.MODEL.NONLOCAL.LR_MULTIPLIER == 1.0
    assert parameters["block_weight_decay"].default is cfg.MODEL.NONLOCAL.WEIGHT_DECAY is None


@pytest.mark.parametrize("clip", [False, True])
def test_build_with_defaults_is_detectron2s_build_optimizer(clip):
    cfg = quick_cfg(HEAD_QUICK, "SOLVER.CLIP_GRADIENTS.ENABLED", clip)
    model = build_model(cfg)
    expected, optimizer = build_optimizer(cfg, model), build_nonlocal_optimizer(cfg, model)
    assert type(optimizer).__name__ == type(expected).__name__
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults == expected.defaults
    assert group_structure(optimizer.param_groups) == group_structure(expected.param_groups)


def test_build_applies_the_config_keys():
    opts = ["MODEL.NONLOCAL.LR_MULTIPLIER", 10.0, "MODEL.NONLOCAL.WEIGHT_DECAY", 0.0]
    cfg = quick_cfg(HEAD_QUICK, "SOLVER.WEIGHT_DECAY_NORM", 1e-5, *opts)
    model = build_model(cfg)
    stock = hyperparams_by_name(model, build_optimizer(cfg, model).param_groups)
    ours = hyperparams_by_name(model, build_nonlocal_optimizer(cfg, model).param_groups)
    blocks = block_parameter_names(model)
    for name, hyperparams in ours.items():
        if name in blocks:
            assert math.isclose(hyperparams["lr"], 10 * stock[name]["lr"]), name
            assert hyperparams["weight_decay"] == 0.0, name
        else:
            assert hyperparams == stock[name], name
    gate = "backbone.bottom_up.res4.nonlocal1.block.out.norm.weight"
    assert (stock[gate]["weight_decay"], ours[gate]["weight_decay"]) == (1e-5, 0.0)


def _lazy_optimizer(*overrides):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(LAZY_QUICK), list(overrides))
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model  # as tools/lazyconfig_train_net.py does
    return model, instantiate(cfg.optimizer)


def test_lazyconfig_optimizer_defaults_are_detectron2s():
    model, optimizer = _lazy_optimizer()
    expected = get_default_optimizer_params(model, base_lr=0.02, weight_decay_norm=0.0)
    assert group_structure(optimizer.param_groups) == group_structure(
        torch.optim.SGD(expected, lr=0.02, momentum=0.9, weight_decay=1e-4).param_groups
    )


def test_lazyconfig_optimizer_takes_the_block_settings_from_the_command_line():
    model, optimizer = _lazy_optimizer(
        "optimizer.params.block_lr_multiplier=10.0",
        "optimizer.params.block_weight_decay=0.0",
        "optimizer.lr=0.01",
    )
    blocks = block_parameter_names(model)
    assert blocks
    for name, hyperparams in hyperparams_by_name(model, optimizer.param_groups).items():
        if name in blocks:
            assert (hyperparams["lr"], hyperparams["weight_decay"]) == (0.1, 0.0), name
        else:
            assert hyperparams["lr"] == 0.01, name
            assert hyperparams["weight_decay"] in (1e-4, 0.0), name  # weight, norm


def test_every_python_config_uses_the_nonlocal_optimizer_params():
    paths = glob.glob(os.path.join(CONFIGS_DIR, "**", "*.py"), recursive=True)
    paths = [p for p in paths if os.sep + "common" + os.sep not in p]
    assert paths
    for path in paths:
        optimizer = LazyConfig.load(path).optimizer
        params = optimizer.params
        assert params._target_ is get_nonlocal_optimizer_params, path
        assert (params.block_lr_multiplier, params.block_weight_decay) == (1.0, None), path
        assert params.base_lr == optimizer.lr, path  # the multiplied lr is the optimizer's
