"""The partner-attention statistic of the long-range benchmark and visualize_attention --dataset."""

import json
import os

import cv2
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model
from detectron2.structures.masks import polygons_to_bitmask

from nl_detectron import add_nonlocal_config
from nl_detectron.analysis import (
    Grid,
    capture_inputs,
    cells_covered,
    find_nonlocal_blocks,
    partner_attention,
    target_attention_shares,
)
from nl_detectron.data import context

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_nl_R18_context_quick.yaml")
BLOCK = "backbone.bottom_up.res4.nonlocal1.block"
STRIDE = 16  # res4; 128 px images are neither resized nor padded
DATASET = "nl_context_partner_test"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Three nl_context images registered as DATASET; yields their dataset dicts."""
    out = str(tmp_path_factory.mktemp("context"))
    coco = context.generate_split(
        out, context.SplitSpec(num_images=3, seed=3, image_size=context.IMAGE_SIZE)
    )
    json_file = os.path.join(out, "instances.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    image_root = os.path.join(out, "images")
    DatasetCatalog.register(
        DATASET, lambda: load_coco_json(json_file, image_root, DATASET, ["partner"])
    )
    yield DatasetCatalog.get(DATASET)
    DatasetCatalog.remove(DATASET)
    MetadataCatalog.remove(DATASET)


def _model(opts):
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(opts)
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def _transform(cfg):
    return T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)


def test_cells_covered_marks_the_cells_under_a_mask():
    grid = Grid(shape=(8, 8), cell_size=(16.0, 16.0), scale=(1.0, 1.0), original_size=(128, 128))
    mask = np.zeros((128, 128), dtype=bool)
    mask[20:40, 70:90] = True  # rows 1-2, columns 4-5
    covered = cells_covered(grid, mask).reshape(8, 8)
    assert sorted(zip(*np.nonzero(covered))) == [(1, 4), (1, 5), (2, 4), (2, 5)]
    with pytest.raises(ValueError, match=r"\(64, 64\).*\(128, 128\)"):
        cells_covered(grid, mask[:64, :64])


def test_uniform_attention_gives_the_uniform_share(records):
    # GC with average pooling attends to every key cell alike: share == uniform share
    cfg, model = _model(
        ["MODEL.NONLOCAL.TYPE", "gc", "MODEL.NONLOCAL.GC_POOLING", "avg"]
        + ["MODEL.NONLOCAL.GC_RATIO", "0.25"]
    )
    (name,) = find_nonlocal_blocks(model)
    stat = partner_attention(model, name, records, _transform(cfg), cfg.INPUT.FORMAT)
    assert stat.num_queries == 2 * len(records)
    assert stat.partner_share == pytest.approx(stat.partner_uniform, rel=1e-5)
    assert stat.distractor_share == pytest.approx(stat.distractor_uniform, rel=1e-5)
    assert 0.01 < stat.partner_uniform < 0.2  # a partner covers a few of the 64 cells


def test_shares_are_the_blocks_weights_on_the_partner_cells(records):
    cfg, model = _model([])
    block = dict(model.named_modules())[BLOCK]
    with torch.no_grad():  # peaked attention, so that the shares differ from uniform
        block.theta.weight.mul_(60)
        block.phi.weight.mul_(60)
    record = records[0]
    shares = target_attention_shares(model, BLOCK, record, _transform(cfg), cfg.INPUT.FORMAT)

    # the same numbers from the block's input and weights, with the geometry done by hand
    bgr = cv2.imread(record["file_name"])  # the config's INPUT.FORMAT
    image = torch.as_tensor(np.ascontiguousarray(bgr.transpose(2, 0, 1)).astype("float32"))
    with torch.no_grad(), capture_inputs({"nl": block}) as captured:
        model.backbone(model.preprocess_image([{"image": image}]).tensor)
    x = captured["nl"]
    assert tuple(x.shape[2:]) == (128 // STRIDE, 128 // STRIDE)
    partner_cells = []
    for ann in record["annotations"]:
        polygons = [np.asarray(p) for p in ann["partner"]["segmentation"]]
        ys, xs = np.nonzero(polygons_to_bitmask(polygons, 128, 128))
        partner_cells.append(sorted(set((ys // STRIDE * 8 + xs // STRIDE).tolist())))
    for i, ann in enumerate(record["annotations"]):
        x0, y0, w, h = ann["bbox"]
        query = int((y0 + h / 2) // STRIDE) * 8 + int((x0 + w / 2) // STRIDE)
        with torch.no_grad():
            weights = block.attention_weights(x, torch.tensor([query]))[0, 0]
        assert shares[i]["partner_share"] == pytest.approx(
            float(weights[partner_cells[i]].sum()), rel=1e-5
        )
        assert shares[i]["partner_uniform"] == pytest.approx(len(partner_cells[i]) / 64)
        other = sorted(set(partner_cells[1 - i]))
        assert shares[i]["distractor_share"] == pytest.approx(float(weights[other].sum()), rel=1e-5)
    assert any(abs(s["partner_share"] - s["partner_uniform"]) > 0.01 for s in shares)


def test_a_dataset_without_partners_is_rejected(records):
    cfg, model = _model([])
    record = dict(records[0], annotations=[{"bbox": [0, 0, 5, 5]}, {"bbox": [9, 9, 5, 5]}])
    with pytest.raises(ValueError, match="without 'partner'.*nl_context_val"):
        target_attention_shares(model, BLOCK, record, _transform(cfg), cfg.INPUT.FORMAT)


def test_visualize_attention_on_a_dataset(load_tool, records, tmp_path):
    cfg, model = _model([])
    weights = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    tool = load_tool("visualize_attention")
    base = ["--config-file", CONFIG, "--output", str(tmp_path / "out")]
    written = tool.main(
        base + ["--dataset", DATASET, "--max-images", "1", "--overview"]
        + ["--opts", "MODEL.WEIGHTS", weights]
    )  # fmt: skip
    names = [os.path.basename(p) for p in written]
    stem = os.path.splitext(os.path.basename(records[0]["file_name"]))[0]
    assert names == [
        f"{stem}_res4.nonlocal1_q0.png",
        f"{stem}_res4.nonlocal1_q1.png",
        f"{stem}_overview.png",
        "partner_attention.json",
    ]
    with open(written[-1]) as f:
        saved = json.load(f)["blocks"]["res4.nonlocal1"]
    expected = partner_attention(model, BLOCK, records, _transform(cfg), cfg.INPUT.FORMAT)
    assert saved["num_queries"] == 2 * len(records)
    assert saved["partner_share"] == pytest.approx(expected.partner_share, rel=1e-5)
    with pytest.raises(ValueError, match="--input and --dataset both given"):
        tool.main(base + ["--dataset", DATASET, "--input", written[0], "--opts"])
    with pytest.raises(ValueError, match="no images"):
        tool.main(base + ["--opts"])
