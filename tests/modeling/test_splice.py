"""Splicing mechanics with a trivial block: names, order, execution and freezing."""

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone

from nl_detectron.modeling.splice import (
    StageContextUnit,
    insert_before,
    insert_stage_units,
    stage_unit_names,
)


class AddOne(nn.Module):
    """A shape-preserving module with a parameter and a BatchNorm, easy to see in outputs."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        return x + self.scale


def _resnet18(freeze_at=0):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def test_insert_before_keeps_names_and_places_module():
    seq = nn.Sequential(nn.Identity(), nn.ReLU(), nn.Identity())
    relu = seq[1]
    insert_before(seq, "1", "extra", AddOne(1))
    assert [n for n, _ in seq.named_children()] == ["0", "extra", "1", "2"]
    assert seq._modules["1"] is relu
    out = seq(torch.full((1, 1, 1, 1), -3.0))
    assert out.item() == 0.0  # (-3 + 1) went through the ReLU, so the new module ran first
    with pytest.raises(ValueError, match="'7'"):
        insert_before(seq, "7", "other", nn.Identity())
    with pytest.raises(ValueError, match="'extra'"):
        insert_before(seq, "2", "extra", nn.Identity())


def test_stage_units_keep_stock_names_and_stage_references():
    resnet = _resnet18()
    stock_keys = set(resnet.state_dict())
    inserted = insert_stage_units(resnet, {"res3": [0, 1], "res4": [1]}, lambda stage, c: AddOne(c))
    assert inserted == ["res3.nonlocal0", "res3.nonlocal1", "res4.nonlocal1"]
    keys = set(resnet.state_dict())
    assert stock_keys <= keys
    assert all(".nonlocal" in k for k in keys - stock_keys)
    assert "res4.nonlocal1.block.scale" in keys
    # ResNet.forward runs ``self.stages``, a list beside the res* attributes: both see the change.
    for name, stage in zip(resnet.stage_names, resnet.stages):
        assert getattr(resnet, name) is stage
    assert [n for n, _ in resnet.res3.named_children()] == ["nonlocal0", "0", "nonlocal1", "1"]
    assert stage_unit_names(resnet.res3) == ["0", "1"]
    # Channels come from the unit the block precedes: res3.0 takes res2's 64 channels.
    assert resnet.res3.nonlocal0.in_channels == 64
    assert resnet.res3.nonlocal1.in_channels == 128


def test_stage_units_execute_before_their_unit():
    resnet = _resnet18().eval()
    insert_stage_units(resnet, {"res4": [1]}, lambda stage, c: AddOne(c))
    order = []
    for name, module in resnet.named_modules():
        if name.count(".") == 1 and name.startswith("res"):
            module.register_forward_hook(lambda m, i, o, name=name: order.append(name))
    resnet(torch.zeros(1, 3, 64, 64))
    assert order.index("res4.nonlocal1") == order.index("res4.0") + 1
    assert order.index("res4.1") == order.index("res4.nonlocal1") + 1


def test_freeze_reaches_inserted_units():
    resnet = _resnet18()
    insert_stage_units(resnet, {"res3": [1]}, lambda stage, c: AddOne(c))
    unit = resnet.res3.nonlocal1
    assert isinstance(unit, StageContextUnit)
    assert unit.block.scale.requires_grad
    # ResNet.freeze calls freeze() on every child of a frozen stage, the inserted unit included.
    resnet.freeze(3)
    assert not unit.block.scale.requires_grad
    assert isinstance(unit.block.norm, FrozenBatchNorm2d)
    assert all(p.requires_grad for p in resnet.res4.parameters())


def test_out_of_range_unit_is_rejected():
    resnet = _resnet18()
    with pytest.raises(ValueError, match="res4 has units 0..1"):
        insert_stage_units(resnet, {"res4": [2]}, lambda stage, c: AddOne(c))
