"""Pretrained compatibility: stock checkpoints load into NL models, which then match stock ones."""

import pickle
import re

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

# Keep the random-weight models cheap at test time: few proposals, every detection kept.
FAST_TEST = [
    "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "TEST.DETECTIONS_PER_IMAGE", 10,
]  # fmt: skip
# GroupNorm keeps random-weight activations in range, so there are detections to compare.
GN = ["MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN"]
STOCK_FPN = ["MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"]


def _models(make_cfg, *opts, config_file="mask_rcnn_nl_R50.yaml"):
    """Stock and NL models of one config, built from different seeds."""
    torch.manual_seed(0)
    stock = build_model(make_cfg(config_file, *FAST_TEST, *opts, *STOCK_FPN)).eval()
    torch.manual_seed(1)
    nl = build_model(make_cfg(config_file, *FAST_TEST, *opts)).eval()
    return stock, nl


def _load(model, path):
    """``DetectionCheckpointer(model).load(path)``; returns the incompatible keys it reports."""
    checkpointer = DetectionCheckpointer(model)
    reported = []
    checkpointer._log_incompatible_keys = reported.append  # load() passes them here to be logged
    checkpointer.load(str(path))
    assert len(reported) == 1
    return reported[0]


def _nl_keys(model):
    return {k for k in model.state_dict() if ".nonlocal" in k}


def _assert_only_nl_missing(missing, model):
    """Every NL parameter is missing and nothing else is (detectron2's BatchNorm2d fills in a
    missing ``num_batches_tracked`` itself, so that buffer may or may not be reported)."""
    nl_params = {k for k, _ in model.named_parameters() if ".nonlocal" in k}
    assert nl_params and nl_params <= set(missing) <= _nl_keys(model)


def test_state_dict_is_stock_plus_nl_keys(make_cfg):
    stock, nl = _models(make_cfg)
    stock_keys, nl_keys = set(stock.state_dict()), set(nl.state_dict())
    added = _nl_keys(nl)
    assert added and all(k.startswith("backbone.bottom_up.res4.nonlocal5.") for k in added)
    assert nl_keys - added == stock_keys
    # Strict loading with exactly the stock key set, both ways round.
    stock.load_state_dict({k: v for k, v in nl.state_dict().items() if k not in added})
    missing, unexpected = nl.load_state_dict(stock.state_dict(), strict=False)
    _assert_only_nl_missing(missing, nl)
    assert unexpected == []


def test_detection_checkpoint_loads_with_only_nl_keys_missing_and_outputs_match(make_cfg, tmp_path):
    stock, nl = _models(make_cfg, *GN)
    DetectionCheckpointer(stock, save_dir=str(tmp_path)).save("stock")
    incompatible = _load(nl, tmp_path / "stock.pth")
    _assert_only_nl_missing(incompatible.missing_keys, nl)
    assert incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []

    # Zero-initialised blocks are the identity: same weights give the same detections.
    image = {"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}
    with torch.no_grad():
        expected, actual = stock([image])[0]["instances"], nl([image])[0]["instances"]
    assert len(expected) > 0
    assert torch.equal(expected.pred_boxes.tensor, actual.pred_boxes.tensor)
    assert torch.equal(expected.scores, actual.scores)
    assert torch.equal(expected.pred_masks, actual.pred_masks)


def _c2_name(d2_name):
    """detectron2 ResNet name -> the Caffe2 ImageNet (R-50.pkl) name; None for buffers it lacks."""
    if d2_name.endswith(("running_mean", "running_var", "num_batches_tracked")):
        return None
    stem = {
        "stem.conv1.weight": "conv1_w",
        "stem.conv1.norm.weight": "res_conv1_bn_s",
        "stem.conv1.norm.bias": "res_conv1_bn_b",
    }
    if d2_name in stem:
        return stem[d2_name]
    m = re.fullmatch(r"(res\d)\.(\d+)\.(conv[123]|shortcut)\.(norm\.)?(weight|bias)", d2_name)
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}
    suffix = {"weight": "s", "bias": "b"}[m.group(5)] if m.group(4) else "w"
    bn = "_bn" if m.group(4) else ""
    return f"{m.group(1)}_{m.group(2)}_{branch[m.group(3)]}{bn}_{suffix}"


def test_caffe2_imagenet_pickle_loads_like_into_the_stock_model(make_cfg, tmp_path):
    stock, nl = _models(make_cfg, *GN)
    # An ImageNet checkpoint in Caffe2 naming (as detectron2://ImageNetPretrained/MSRA/R-50.pkl),
    # with random values, made from the stock backbone's parameter names.
    blobs = {}
    for name, value in stock.backbone.bottom_up.state_dict().items():
        c2 = _c2_name(name)
        if c2 is not None:
            blobs[c2] = torch.randn_like(value).numpy()
    blobs["fc1000_w"], blobs["fc1000_b"] = (
        torch.randn(1000, 2048).numpy(),
        torch.zeros(1000).numpy(),
    )
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)

    missing = {key: set(_load(m, path).missing_keys) for key, m in (("stock", stock), ("nl", nl))}
    # Heads and FPN are missing from an ImageNet checkpoint in both; NL adds only its own keys.
    assert missing["stock"] <= missing["nl"]
    _assert_only_nl_missing(missing["nl"] - missing["stock"], nl)
    res4 = nl.backbone.bottom_up.res4
    assert torch.equal(
        getattr(res4, "5").conv1.weight, torch.from_numpy(blobs["res4_5_branch2a_w"])
    )
    assert torch.equal(
        getattr(res4, "5").conv1.weight, getattr(stock.backbone.bottom_up.res4, "5").conv1.weight
    )
