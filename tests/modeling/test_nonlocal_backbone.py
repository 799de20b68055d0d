"""build_nonlocal_backbone: stock model-zoo YAMLs switch on with two overrides, start as stock."""

import pytest
import torch
from torch import nn

from detectron2 import model_zoo
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_backbone, build_model

FPN, C4 = "backbone.bottom_up", "backbone"  # where the ResNet sits in the model
# (model-zoo YAML, its MODEL.BACKBONE.NAME, the ResNet's path)
ZOO_CONFIGS = [
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "build_resnet_fpn_backbone", FPN),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml", "build_resnet_backbone", C4),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml", "build_resnet_backbone", C4),
    ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "build_resnet_fpn_backbone", FPN),
    ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "build_retinanet_resnet_fpn_backbone", FPN),
    ("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml", "build_resnet_fpn_backbone", FPN),
    ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "build_resnet_fpn_backbone", FPN),
    ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", "build_resnet_fpn_backbone", FPN),
]  # fmt: skip
# Random weights, cheap to run: few proposals and detections, all kept; GroupNorm keeps the
# activations of an untrained 50-layer network (and keypoint heatmaps) in range.
CHEAP = [
    "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0,
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST", 50,
    "TEST.DETECTIONS_PER_IMAGE", 5,
    "MODEL.RESNETS.NORM", "GN",
    "MODEL.FPN.NORM", "GN",
]  # fmt: skip


def _zoo_cfg(make_cfg, zoo_file, *opts):
    cfg = make_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(zoo_file))
    cfg.merge_from_list([*CHEAP, *opts])
    return cfg


def _added(model):
    return [n for n, _ in model.named_modules() if n.split(".")[-1].startswith("nonlocal")]


@pytest.mark.parametrize("zoo_file, stock_name, resnet_path", ZOO_CONFIGS)
def test_stock_zoo_config_switches_on_with_two_overrides(
    make_cfg, assert_same_outputs, zoo_file, stock_name, resnet_path
):
    cfg = _zoo_cfg(make_cfg, zoo_file)
    assert cfg.MODEL.BACKBONE.NAME == stock_name
    torch.manual_seed(0)
    stock = build_model(cfg).eval()
    nl_cfg = cfg.clone()
    nl_cfg.merge_from_list(
        ["MODEL.BACKBONE.NAME", "build_nonlocal_backbone", "MODEL.NONLOCAL.BACKBONE", stock_name]
    )
    torch.manual_seed(1)
    nl = build_model(nl_cfg).eval()

    # Placement: one block right before the last unit of res4 (R-50: res4.5).
    assert _added(nl) == [f"{resnet_path}.res4.nonlocal5"]
    # Names: the stock state dict loads with only the block's own entries missing.
    incompatible = nl.load_state_dict(stock.state_dict(), strict=False)
    assert incompatible.unexpected_keys == []
    assert incompatible.missing_keys
    assert all(k.startswith(f"{resnet_path}.res4.nonlocal5.") for k in incompatible.missing_keys)
    # Identity at init: with the stock weights, the NL model computes the stock outputs.
    image = {"image": torch.rand(3, 64, 96) * 255, "height": 64, "width": 96}
    with torch.no_grad():
        expected, actual = stock([image]), nl([image])
    assert assert_same_outputs(expected, actual) > 0


def test_old_builder_names_are_the_wrapper_with_a_fixed_builder(make_cfg):
    fpn = build_backbone(make_cfg("mask_rcnn_nl_R50.yaml"))
    assert fpn.bottom_up.res4.nonlocal5 is not None
    c4 = make_cfg("mask_rcnn_nl_R50_C4.yaml", "MODEL.NONLOCAL.BACKBONE", "build_resnet_backbone")
    assert _added(build_backbone(c4)) == ["res4.nonlocal5"]
    asks_for_other = make_cfg(
        "mask_rcnn_nl_R50.yaml", "MODEL.NONLOCAL.BACKBONE", "build_retinanet_resnet_fpn_backbone"
    )
    with pytest.raises(
        ValueError,
        match=r"MODEL\.NONLOCAL\.BACKBONE='build_retinanet_resnet_fpn_backbone' is not used by "
        r"MODEL\.BACKBONE\.NAME='build_resnet_nl_fpn_backbone'.*'build_nonlocal_backbone'",
    ):
        build_backbone(asks_for_other)


@pytest.mark.parametrize(
    "builder, match",
    [
        ("build_resnet_fpn", r"'build_resnet_fpn' is not registered; allowed: .*_resnet_fpn_"),
        ("build_resnet_nl_fpn_backbone", r"'build_resnet_nl_fpn_backbone' already inserts blocks"),
        ("build_nonlocal_backbone", r"'build_nonlocal_backbone' already inserts blocks"),
    ],
)  # fmt: skip
def test_unknown_or_nonlocal_builder_is_rejected(make_cfg, builder, match):
    cfg = make_cfg(
        "mask_rcnn_nl_R50.yaml",
        "MODEL.BACKBONE.NAME", "build_nonlocal_backbone",
        "MODEL.NONLOCAL.BACKBONE", builder,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"MODEL\.NONLOCAL\.BACKBONE=" + match):
        build_backbone(cfg)


class _PlainConvBackbone(Backbone):
    """A backbone without a ResNet: one strided conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)

    def forward(self, x):
        return {"c1": self.conv(x)}


@BACKBONE_REGISTRY.register()
def _test_plain_conv_backbone(cfg, input_shape):
    return _PlainConvBackbone()


def test_backbone_without_resnet_is_explained(make_cfg):
    cfg = make_cfg(
        None,
        "MODEL.BACKBONE.NAME", "build_nonlocal_backbone",
        "MODEL.NONLOCAL.BACKBONE", "_test_plain_conv_backbone",
    )  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"_PlainConvBackbone built by '_test_plain_conv_backbone' "
        r"\(MODEL\.NONLOCAL\.BACKBONE\) holds no detectron2 ResNet",
    ):
        build_backbone(cfg)
