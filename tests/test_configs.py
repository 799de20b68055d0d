"""Every leaf config in configs/ (quick_schedules included) merges, builds and runs on the CPU."""

import glob
import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from nl_detectron import add_nonlocal_config

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
LEAF_CONFIGS = sorted(
    os.path.relpath(path, CONFIGS_DIR)
    for path in glob.glob(os.path.join(CONFIGS_DIR, "**", "*.yaml"), recursive=True)
    if not os.path.basename(path).startswith("Base-")
)
PAPER_CONFIGS = [
    "mask_rcnn_nl_R50.yaml",
    "mask_rcnn_nl_R101.yaml",
    "mask_rcnn_nl_X101_32x8d.yaml",
    "mask_rcnn_dnl_R50.yaml",
    "mask_rcnn_snl_R50.yaml",
    "mask_rcnn_gc_R50.yaml",
    "faster_rcnn_nl_R50.yaml",
    "mask_rcnn_nl_R50_C4.yaml",
    "keypoint_rcnn_nl_R50.yaml",
    "keypoint_rcnn_nl_R101.yaml",
]


def test_the_listed_configs_exist():
    assert set(PAPER_CONFIGS) <= set(LEAF_CONFIGS)


@pytest.mark.parametrize("config_file", LEAF_CONFIGS)
def test_config_builds_and_runs(config_file):
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS_DIR, config_file))
    # Random weights on the CPU; few proposals keep the eval pass cheap.
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    cfg.merge_from_list(["MODEL.RPN.POST_NMS_TOPK_TEST", 20, "TEST.DETECTIONS_PER_IMAGE", 5])
    # Without pretrained statistics FrozenBN normalises nothing and random-weight heatmaps
    # overflow in detectron2's keypoint decoding; GroupNorm keeps them in range.
    cfg.merge_from_list(["MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    nonlocal_blocks = [
        n for n, _ in model.named_modules() if n.split(".")[-1].startswith("nonlocal")
    ]
    assert nonlocal_blocks, "every shipped config should use at least one context block"
    with torch.no_grad():
        (output,) = model([{"image": torch.rand(3, 64, 96) * 255, "height": 64, "width": 96}])
    instances = output["instances"]
    assert instances.image_size == (64, 96)
    assert instances.has("pred_masks") == cfg.MODEL.MASK_ON
    assert instances.has("pred_keypoints") == cfg.MODEL.KEYPOINT_ON
