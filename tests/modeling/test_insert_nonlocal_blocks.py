"""insert_nonlocal_blocks: the config-free front door (LazyConfig) to the same splice as the cfg."""

import inspect

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from nl_detectron import add_nonlocal_config
from nl_detectron.layers import ContextBlock, NonLocalBlock
from nl_detectron.modeling import add_nonlocal_blocks, insert_nonlocal_blocks


def _resnet18(freeze_at=0):
    torch.manual_seed(0)
    return ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm="GN"),
        stages=ResNet.make_default_stages(depth=18, norm="GN"),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=freeze_at,
    )


def _fpn(resnet):
    return FPN(
        bottom_up=resnet,
        in_features=["res2", "res3", "res4", "res5"],
        out_channels=32,
        norm="GN",
        top_block=LastLevelMaxPool(),
    )


def _added(module):
    return [n for n, _ in module.named_modules() if n.split(".")[-1].startswith("nonlocal")]


def test_defaults_are_the_config_defaults():
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    parameters = inspect.signature(insert_nonlocal_blocks).parameters
    arguments = {name: p.default for name, p in parameters.items() if name != "module"}
    # The keypoint head and the builder are chosen elsewhere in a LazyConfig (the model's tree),
    # the blocks' lr and weight decay by the optimizer's get_nonlocal_optimizer_params, the
    # health records by the training script's hook (train.block_health_period).
    elsewhere = {
        "KEYPOINT_HEAD_POSITIONS",
        "BACKBONE",
        "LR_MULTIPLIER",
        "WEIGHT_DECAY",
        "MONITOR_PERIOD",
    }
    keys = set(cfg.MODEL.NONLOCAL) - elsewhere
    assert {name.upper() for name in arguments} == keys
    for name, default in arguments.items():
        value = cfg.MODEL.NONLOCAL[name.upper()]
        if isinstance(default, tuple):  # immutable defaults for the config's lists
            default = [list(d) if isinstance(d, tuple) else d for d in default]
        assert default == value, name


@pytest.mark.parametrize("holder", ["resnet", "fpn", "model"])
def test_finds_the_resnet_and_starts_as_stock(holder):
    stock = _fpn(_resnet18()).eval()
    nl = _fpn(_resnet18()).eval()
    wrap = {
        "resnet": lambda m: m.bottom_up,
        "fpn": lambda m: m,
        "model": lambda m: nn.ModuleDict({"backbone": m}),
    }[holder]
    returned = insert_nonlocal_blocks(wrap(nl), stages=["res3", "res4"], positions=[[0], [-1]])
    assert _added(returned) and all(
        n.endswith(("res3.nonlocal0", "res4.nonlocal1")) for n in _added(returned)
    )
    assert _added(nl.bottom_up) == ["res3.nonlocal0", "res4.nonlocal1"]
    assert isinstance(nl.bottom_up.res4.nonlocal1.block, NonLocalBlock)
    assert nl.bottom_up.res3.nonlocal0.in_channels == 64  # res3.0 takes res2's output
    missing, unexpected = nl.load_state_dict(stock.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".nonlocal" in k for k in missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, actual = stock(x), nl(x)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_config_and_keyword_doors_build_the_same_blocks():
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    opts = ["TYPE", "gc", "STAGES", ["res4", "res5"], "POSITIONS", [[1], [0, 1]], "GC_RATIO", 0.25]
    opts += ["AFFINITY_BUDGET_MB", 64.0]
    cfg.merge_from_list([f"MODEL.NONLOCAL.{k}" if i % 2 == 0 else k for i, k in enumerate(opts)])
    from_cfg = add_nonlocal_blocks(_resnet18(), cfg)
    from_args = insert_nonlocal_blocks(
        _resnet18(),
        type="gc",
        stages=["res4", "res5"],
        positions=[[1], [0, 1]],
        gc_ratio=0.25,
        affinity_budget_mb=64,
    )
    assert (
        _added(from_cfg)
        == _added(from_args)
        == ["res4.nonlocal1", "res5.nonlocal0", "res5.nonlocal1"]
    )
    assert isinstance(from_args.res5.nonlocal0.block, ContextBlock)
    for resnet in (from_cfg, from_args):
        assert resnet.res4.nonlocal1.block.affinity_budget_mb == 64.0
    shapes = {k: v.shape for k, v in from_cfg.state_dict().items()}
    assert shapes == {k: v.shape for k, v in from_args.state_dict().items()}


@pytest.mark.parametrize("kwargs", [{}, {"instantiation": "concatenation"}, {"type": "dnl"}])
def test_use_triton_reaches_the_blocks(kwargs):
    resnet = insert_nonlocal_blocks(_resnet18(), use_triton=True, **kwargs)
    assert resnet.res4.nonlocal1.block.use_triton is True
    assert insert_nonlocal_blocks(_resnet18(), **kwargs).res4.nonlocal1.block.use_triton is False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"type": "nonlocal"}, r"^insert_nonlocal_blocks\(\): type='nonlocal' is invalid.*'nl'"),
        ({"norm": "FrozenBN"}, r"norm='FrozenBN' with zero_init=True cannot learn"),
        ({"stages": ["res6"], "positions": [[0]]}, r"stages=\['res6'\].*\['res2', .*, 'res5'\]"),
        ({"positions": [[2]]}, r"positions=\[\[2\]\].*res4 \(it has 2 units\): -2\.\.1"),
        ({"positions": [[0], [1]]}, r"positions=.*one list per entry of stages="),
        ({"affinity_budget_mb": 0}, r"affinity_budget_mb=0 is invalid; allowed: None .* > 0"),
        ({"use_triton": "yes"}, r"use_triton='yes' is invalid; allowed: True or False"),
        ({"type": "gc", "use_triton": True}, r"use_triton=True .* got 'gc'"),
        ({"reduction": 1024}, r"reduction=1024.*1\.\.256 for the 256-channel block at res4"),
    ],
)  # fmt: skip
def test_bad_argument_names_argument_value_and_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        insert_nonlocal_blocks(_resnet18(), **kwargs)


def test_frozen_stage_is_rejected():
    with pytest.raises(
        ValueError, match=r"stages has 'res3', which the ResNet freezes.*\['res4', 'res5'\]"
    ):
        insert_nonlocal_blocks(_resnet18(freeze_at=3), stages=["res3"])
    assert _added(insert_nonlocal_blocks(_resnet18(freeze_at=3))) == ["res4.nonlocal1"]


def test_module_without_or_with_two_resnets_is_rejected():
    with pytest.raises(
        ValueError,
        match=r"the Sequential given to insert_nonlocal_blocks\(\) holds no detectron2 ResNet",
    ):
        insert_nonlocal_blocks(nn.Sequential(nn.Conv2d(3, 8, 3)))
    two = nn.ModuleDict({"rgb": _resnet18(), "depth": _resnet18()})
    with pytest.raises(ValueError, match=r"holds 2 detectron2 ResNets \(rgb, depth\)"):
        insert_nonlocal_blocks(two)
