"""NonLocalKRCNNConvDeconvUpsampleHead: stock names, block placement, identity at init, training."""

import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import KRCNNConvDeconvUpsampleHead, build_keypoint_head
from detectron2.structures import Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage

from nl_detectron.layers import NonLocalBlock
from nl_detectron.modeling import NonLocalKRCNNConvDeconvUpsampleHead

ROI_FEATURES = ShapeSpec(channels=256, height=14, width=14)
STOCK_HEAD = ["MODEL.ROI_KEYPOINT_HEAD.NAME", "KRCNNConvDeconvUpsampleHead"]


def _heads(make_cfg, *opts):
    """The stock head and the NL head of one config; the NL head gets the stock weights."""
    torch.manual_seed(0)
    stock = build_keypoint_head(
        make_cfg("keypoint_rcnn_nl_R50.yaml", *opts, *STOCK_HEAD), ROI_FEATURES
    )
    torch.manual_seed(1)
    nl = build_keypoint_head(make_cfg("keypoint_rcnn_nl_R50.yaml", *opts), ROI_FEATURES)
    missing, unexpected = nl.load_state_dict(stock.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("nonlocal") for k in missing)
    return stock, nl


def test_papers_head_setting_keeps_stock_names(make_cfg):
    stock, nl = _heads(make_cfg)
    assert type(stock) is KRCNNConvDeconvUpsampleHead
    assert isinstance(nl, NonLocalKRCNNConvDeconvUpsampleHead)
    expected = []
    for k in range(1, 9):
        expected += [f"conv_fcn{k}", f"conv_fcn_relu{k}"] + ([f"nonlocal{k}"] if k % 2 == 0 else [])
    assert [n for n, _ in nl.named_children()] == expected + ["score_lowres"]
    assert all(isinstance(getattr(nl, f"nonlocal{k}"), NonLocalBlock) for k in (2, 4, 6, 8))
    stock_keys = set(stock.state_dict())
    assert {k for k in nl.state_dict() if not k.startswith("nonlocal")} == stock_keys


def test_blocks_run_after_every_second_conv_and_start_as_identity(make_cfg, record_order):
    stock, nl = _heads(make_cfg)
    stock.eval()
    nl.eval()
    probes = ["conv_fcn_relu2", "nonlocal2", "conv_fcn3", "conv_fcn_relu8", "nonlocal8"]
    probes.append("score_lowres")
    order = record_order(nl, probes)
    x = torch.randn(3, 256, 14, 14)
    with torch.no_grad():
        expected, actual = stock.layers(x), nl.layers(x)
    assert order == probes
    assert actual.shape == (3, 17, 56, 56)
    assert torch.equal(expected, actual)


def test_custom_positions_and_conv_count(make_cfg):
    opts = ["MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", [64, 64, 128], "MODEL.NONLOCAL.REDUCTION", 4]
    opts += ["MODEL.NONLOCAL.KEYPOINT_HEAD_POSITIONS", [1, 3]]
    _, nl = _heads(make_cfg, *opts)
    names = [n for n, _ in nl.named_children()]
    assert names.index("nonlocal1") == names.index("conv_fcn_relu1") + 1
    assert names.index("nonlocal3") == names.index("score_lowres") - 1
    assert nl.nonlocal3.in_channels == 128 and nl.nonlocal3.inter_channels == 32


@pytest.mark.parametrize("positions", [[9], [0], [2, 2]])
def test_bad_head_positions_are_rejected(make_cfg, positions):
    cfg = make_cfg("keypoint_rcnn_nl_R50.yaml", "MODEL.NONLOCAL.KEYPOINT_HEAD_POSITIONS", positions)
    with pytest.raises(ValueError, match=r"MODEL\.NONLOCAL\.KEYPOINT_HEAD_POSITIONS.*1\.\.8"):
        build_keypoint_head(cfg, ROI_FEATURES)


def test_keypoint_model_trains_one_step(make_cfg):
    # A small trainable model (R-18, GN, nothing frozen) with NL blocks in res4 and the head.
    cfg = make_cfg(
        "keypoint_rcnn_nl_R50.yaml",
        "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.NORM", "GN",
        "MODEL.FPN.NORM", "GN",
        "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", [64] * 4,
        "MODEL.NONLOCAL.KEYPOINT_HEAD_POSITIONS", [2, 4],
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).train()
    instances = Instances((96, 96))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 8.0, 70.0, 90.0], [40.0, 20.0, 90.0, 80.0]]))
    instances.gt_classes = torch.zeros(2, dtype=torch.int64)
    xy = torch.rand(2, 17, 2) * 50 + 20
    instances.gt_keypoints = Keypoints(torch.cat([xy, torch.full((2, 17, 1), 2.0)], dim=2))
    batch = [{"image": torch.rand(3, 96, 96) * 255, "instances": instances}]
    with EventStorage():
        losses = model(batch)
    assert "loss_keypoint" in losses
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # Zero init leaves the output scale as the one live path at first: it must get a gradient.
    for name in ("backbone.bottom_up.res4.nonlocal1.block", "roi_heads.keypoint_head.nonlocal2"):
        block = model.get_submodule(name)
        grads = [p.grad for p in block.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
