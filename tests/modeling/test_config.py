"""add_nonlocal_config and the up-front checks of MODEL.NONLOCAL."""

import pytest

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone

from nl_detectron import add_nonlocal_config


def test_node_defaults_are_the_papers_detection_setting():
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    c = cfg.MODEL.NONLOCAL
    assert (c.TYPE, c.INSTANTIATION) == ("nl", "embedded_gaussian")
    assert (c.STAGES, c.POSITIONS) == (["res4"], [[-1]])
    assert c.ZERO_INIT and c.REDUCTION == 2
    assert c.KEYPOINT_HEAD_POSITIONS == [2, 4, 6, 8]


def test_add_is_idempotent_and_leaves_global_defaults_alone():
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.MODEL.NONLOCAL.TYPE = "gc"
    add_nonlocal_config(cfg)  # a second call (e.g. by a tool and a test) keeps merged values
    assert cfg.MODEL.NONLOCAL.TYPE == "gc"
    assert "NONLOCAL" not in get_cfg().MODEL


def test_missing_node_is_explained(make_cfg):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_nl_fpn_backbone"
    with pytest.raises(ValueError, match=r"add_nonlocal_config"):
        build_backbone(cfg)


@pytest.mark.parametrize(
    "opts, match",
    [
        (["TYPE", "nonlocal"], r"MODEL\.NONLOCAL\.TYPE='nonlocal'.*'nl', 'dnl', 'snl', 'gc'"),
        (["INSTANTIATION", "cosine"], r"MODEL\.NONLOCAL\.INSTANTIATION='cosine'.*'gaussian'"),
        (["NORM", "LN"], r"MODEL\.NONLOCAL\.NORM='LN'.*'SyncBN'"),
        (["NORM", "FrozenBN"], r"MODEL\.NONLOCAL\.NORM='FrozenBN'.*ZERO_INIT.*cannot learn"),
        (["REDUCTION", 0], r"MODEL\.NONLOCAL\.REDUCTION=0.*integer >= 1"),
        (["REDUCTION", 1.5], r"MODEL\.NONLOCAL\.REDUCTION=1\.5"),
        (["REDUCTION", 4096], r"MODEL\.NONLOCAL\.REDUCTION=4096.*1\.\.1024.*res4"),
        (["STAGES", ["res5"]], r"MODEL\.NONLOCAL\.STAGES=\['res5'\].*\['res2', 'res3', 'res4'\]"),
        (["STAGES", ["res2"]], r"MODEL\.NONLOCAL\.STAGES has 'res2'.*FREEZE_AT, is at least 2"),
        (["POSITIONS", [[6]]], r"MODEL\.NONLOCAL\.POSITIONS=\[\[6\]\].*-6\.\.5"),
        (["POSITIONS", [[-7]]], r"MODEL\.NONLOCAL\.POSITIONS=\[\[-7\]\].*6 units"),
        (["POSITIONS", [[5, -1]]], r"MODEL\.NONLOCAL\.POSITIONS=.*distinct units of res4"),
        (["POSITIONS", [[-1], [0]]], r"MODEL\.NONLOCAL\.POSITIONS=.*one list per entry"),
        (["POSITIONS", [[]]], r"MODEL\.NONLOCAL\.POSITIONS=\[\[\]\].*non-empty"),
        (["TYPE", "snl", "SUB_SAMPLE", True], r"MODEL\.NONLOCAL\.SUB_SAMPLE=True.*'snl'"),
        (["TYPE", "snl", "SNL_ORDER", 1], r"MODEL\.NONLOCAL\.SNL_ORDER=1.*>= 2"),
        (["DNL_TEMPERATURE", 0.0], r"MODEL\.NONLOCAL\.DNL_TEMPERATURE=0\.0.*> 0"),
        (["GC_RATIO", 0.0], r"MODEL\.NONLOCAL\.GC_RATIO=0\.0.*\(0, 1\]"),
        (["TYPE", "gc", "GC_RATIO", 1e-4], r"MODEL\.NONLOCAL\.GC_RATIO=0\.0001.*1/1024"),
        (["AFFINITY_BUDGET_MB", 0.0], r"MODEL\.NONLOCAL\.AFFINITY_BUDGET_MB=0\.0.*MiB > 0"),
        (["AFFINITY_BUDGET_MB", "64"], r"MODEL\.NONLOCAL\.AFFINITY_BUDGET_MB='64'.*None"),
        (["USE_TRITON", 1], r"MODEL\.NONLOCAL\.USE_TRITON=1.*True or False"),
        (
            ["INSTANTIATION", "dot_product", "USE_TRITON", True],
            r"USE_TRITON=True.*INSTANTIATION other than 'dot_product'; got 'nl' / 'dot_product'",
        ),
        (["TYPE", "snl", "USE_TRITON", True], r"MODEL\.NONLOCAL\.USE_TRITON=True.*got 'snl'"),
        (["GC_POOLING", "max"], r"MODEL\.NONLOCAL\.GC_POOLING='max'.*'attention', 'avg'"),
        (["GC_FUSIONS", ["channel_cat"]], r"MODEL\.NONLOCAL\.GC_FUSIONS=.*channel_add"),
        (
            ["TYPE", "gc", "GC_FUSIONS", ["channel_mul"]],
            r"MODEL\.NONLOCAL\.GC_FUSIONS=.*ZERO_INIT=True",
        ),
    ],
)
def test_bad_config_names_key_value_and_allowed(make_cfg, opts, match):
    # The C4 R-50 setting: a backbone of res2..res4 with 6 units in res4, stem and res2 frozen.
    cfg = make_cfg("mask_rcnn_nl_R50_C4.yaml")
    # Set in code rather than merged: yacs would already reject some types (e.g. a float
    # REDUCTION), and configs built in code must be checked too.
    for key, value in zip(opts[::2], opts[1::2]):
        setattr(cfg.MODEL.NONLOCAL, key, value)
    with pytest.raises(ValueError, match=match):
        build_backbone(cfg)


def test_frozen_bn_without_zero_init_is_allowed(make_cfg):
    cfg = make_cfg(
        "mask_rcnn_nl_R50_C4.yaml",
        "MODEL.NONLOCAL.NORM",
        "FrozenBN",
        "MODEL.NONLOCAL.ZERO_INIT",
        False,
    )
    block = build_backbone(cfg).res4.nonlocal5.block
    assert any(p.requires_grad for p in block.parameters())


def test_empty_placement_builds_the_stock_backbone(make_cfg):
    cfg = make_cfg("mask_rcnn_nl_R50_C4.yaml", "MODEL.NONLOCAL.STAGES", [])
    cfg.MODEL.NONLOCAL.POSITIONS = []
    backbone = build_backbone(cfg)
    assert not any("nonlocal" in n for n, _ in backbone.named_modules())
