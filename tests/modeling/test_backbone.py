"""NL backbones: placement, execution order, identity at init, depths, stock configs, freezing."""

import pytest
import torch
from torch import nn

from detectron2 import model_zoo
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone

from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)
from nl_detectron.modeling import StageContextUnit

# A small, trainable (GN, nothing frozen) ResNet-FPN; FrozenBN from scratch is not trainable.
SMALL_FPN = [
    "MODEL.BACKBONE.NAME", "build_resnet_nl_fpn_backbone",
    "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"],
    "MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res5"],
    "MODEL.RESNETS.NORM", "GN",
    "MODEL.FPN.NORM", "GN",
    "MODEL.BACKBONE.FREEZE_AT", 0,
]  # fmt: skip


def _depth_opts(depth):
    # R18/R34 use BasicBlock, which detectron2 builds only with 64 res2 channels.
    extra = ["MODEL.RESNETS.RES2_OUT_CHANNELS", 64] if depth < 50 else []
    return ["MODEL.RESNETS.DEPTH", depth, *extra]


def _resnet(backbone):
    return getattr(backbone, "bottom_up", backbone)


def _added(backbone):
    """Names of the inserted units, in module order."""
    names = [n for n, _ in _resnet(backbone).named_modules()]
    return [n for n in names if n.split(".")[-1].startswith("nonlocal")]


def _stock_and_nl(make_cfg, opts, stock_name="build_resnet_fpn_backbone"):
    """The stock backbone and the NL backbone of one config; the NL one gets the stock weights."""
    torch.manual_seed(0)
    nl = build_backbone(make_cfg(None, *opts))
    stock = build_backbone(make_cfg(None, *opts, "MODEL.BACKBONE.NAME", stock_name))
    incompatible = nl.load_state_dict(stock.state_dict(), strict=False)
    assert incompatible.unexpected_keys == []
    assert incompatible.missing_keys
    assert all(".nonlocal" in k for k in incompatible.missing_keys)
    return stock, nl


def _assert_same_outputs(stock, nl, x, modes=(False, True)):
    for training in modes:
        stock.train(training)
        nl.train(training)
        with torch.no_grad():
            expected, actual = stock(x), nl(x)
        assert expected.keys() == actual.keys()
        for name in expected:
            assert torch.equal(expected[name], actual[name]), (name, training)


@pytest.mark.parametrize(
    "config_file, prefix, last_unit",
    [
        ("mask_rcnn_nl_R50.yaml", "bottom_up.res4", 5),
        ("mask_rcnn_nl_R101.yaml", "bottom_up.res4", 22),
        ("mask_rcnn_nl_X101_32x8d.yaml", "bottom_up.res4", 22),
        ("mask_rcnn_nl_R50_C4.yaml", "res4", 5),
    ],
)
def test_block_runs_right_before_last_res4_unit(
    make_cfg, record_order, config_file, prefix, last_unit
):
    backbone = build_backbone(make_cfg(config_file)).eval()
    assert _added(backbone) == [f"res4.nonlocal{last_unit}"]
    unit = getattr(_resnet(backbone).res4, f"nonlocal{last_unit}")
    assert isinstance(unit, StageContextUnit) and isinstance(unit.block, NonLocalBlock)
    assert unit.block.instantiation == "embedded_gaussian"
    assert unit.block.inter_channels == 1024 // 2
    names = [f"{prefix}.{last_unit - 1}", f"{prefix}.nonlocal{last_unit}", f"{prefix}.{last_unit}"]
    order = record_order(backbone, names)
    with torch.no_grad():
        backbone(torch.zeros(1, 3, 64, 64))
    assert order == names


@pytest.mark.parametrize(
    "depth, res4_units, channels",
    [(18, 2, 256), (34, 6, 256), (50, 6, 1024), (101, 23, 1024), (152, 36, 1024)],
)
def test_every_depth_gets_blocks_and_starts_as_stock(make_cfg, depth, res4_units, channels):
    opts = SMALL_FPN + _depth_opts(depth)
    opts += ["MODEL.NONLOCAL.STAGES", ["res4", "res5"], "MODEL.NONLOCAL.POSITIONS", [[-1], [0]]]
    stock, nl = _stock_and_nl(make_cfg, opts)
    assert _added(nl) == [f"res4.nonlocal{res4_units - 1}", "res5.nonlocal0"]
    # The block before res5.0 sees res4's output channels.
    assert nl.bottom_up.res5.nonlocal0.in_channels == channels
    _assert_same_outputs(stock, nl, torch.randn(1, 3, 32, 32), modes=(False,))


@pytest.mark.parametrize(
    "opts, block_class",
    [
        (["MODEL.NONLOCAL.INSTANTIATION", "gaussian"], NonLocalBlock),
        (["MODEL.NONLOCAL.INSTANTIATION", "dot_product"], NonLocalBlock),
        (["MODEL.NONLOCAL.INSTANTIATION", "concatenation"], NonLocalBlock),
        (["MODEL.NONLOCAL.SUB_SAMPLE", True, "MODEL.NONLOCAL.NORM", "GN"], NonLocalBlock),
        (["MODEL.NONLOCAL.TYPE", "dnl", "MODEL.NONLOCAL.NORM", ""], DisentangledNonLocalBlock),
        (["MODEL.NONLOCAL.TYPE", "snl"], SpectralNonLocalBlock),
        (["MODEL.NONLOCAL.TYPE", "gc"], ContextBlock),
    ],
)
def test_every_block_type_starts_as_stock(make_cfg, opts, block_class):
    stock, nl = _stock_and_nl(make_cfg, SMALL_FPN + _depth_opts(18) + opts)
    assert type(nl.bottom_up.res4.nonlocal1.block) is block_class
    _assert_same_outputs(stock, nl, torch.randn(2, 3, 64, 64))


def test_papers_five_block_setting(make_cfg, record_order):
    backbone = build_backbone(make_cfg("mask_rcnn_nl5_R50.yaml")).eval()
    added = ["res3.nonlocal1", "res3.nonlocal3", "res4.nonlocal1", "res4.nonlocal3"]
    added.append("res4.nonlocal5")
    assert _added(backbone) == added
    assert [n for n, _ in backbone.bottom_up.res3.named_children()] == [
        "0", "nonlocal1", "1", "2", "nonlocal3", "3"
    ]  # fmt: skip
    probes = ["res3.0", "res3.nonlocal1", "res3.1", "res3.3", "res4.nonlocal1", "res4.1"]
    probes += ["res4.nonlocal5", "res4.5"]
    order = record_order(backbone.bottom_up, probes)
    with torch.no_grad():
        backbone(torch.zeros(1, 3, 64, 64))
    assert order == probes
    assert backbone.bottom_up.res3.nonlocal1.in_channels == 512
    assert backbone.bottom_up.res4.nonlocal1.in_channels == 1024


@pytest.mark.parametrize(
    "zoo_file, name, stages, added",
    [
        (
            "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
            "build_resnet_nl_fpn_backbone",
            ["res4"],
            ["res4.nonlocal5"],
        ),
        (
            "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
            "build_resnet_nl_backbone",
            ["res4"],
            ["res4.nonlocal5"],
        ),
        (
            "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml",
            "build_resnet_nl_backbone",
            ["res5"],
            ["res5.nonlocal2"],
        ),
    ],
)
def test_stock_model_zoo_config_with_nl_backbone(make_cfg, zoo_file, name, stages, added):
    cfg = make_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(zoo_file))
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", name, "MODEL.NONLOCAL.STAGES", stages])
    backbone = build_backbone(cfg).eval()
    assert _added(backbone) == added
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, 64, 64))
    assert set(out) == set(backbone.output_shape())


def test_blocks_train_in_a_frozen_bn_backbone(make_cfg):
    # The stock R50 setting: FrozenBN everywhere, stem and res2 frozen; NL keeps its own BN.
    backbone = build_backbone(make_cfg("mask_rcnn_nl_R50.yaml"))
    resnet = backbone.bottom_up
    block = resnet.res4.nonlocal5.block
    assert all(p.requires_grad for p in block.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert not any(p.requires_grad for p in resnet.res2.parameters())
    assert isinstance(resnet.res4[0].conv1.norm, FrozenBatchNorm2d)
    # Freezing res4 later (ResNet.freeze calls freeze() on each stage child) reaches the block.
    resnet.freeze(4)
    assert not any(p.requires_grad for p in block.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert any(p.requires_grad for p in resnet.res5.parameters())
