"""The partner-attention statistic of the long-range benchmark and visualize_attention --dataset."""

import json
import math
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
from nl_detectron.data import context, context_source

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(
    REPO, "configs", "quick_schedules", "faster_rcnn_nl_R18_C4_context_bind_quick.yaml"
)
BLOCK = "backbone.res4.nonlocal1.block"
STRIDE = 16  # res4; 128 px images are neither resized nor padded
DATASET = "nl_context_partner_test"
PAIR_DATASET = "nl_context_partner_pair_test"


def _register(tmp_path_factory, name, rung, num_images):
    """``num_images`` nl_context images of ``rung`` written as a val split, registered as
    ``name``; returns their dataset dicts."""
    root = str(tmp_path_factory.mktemp(name))
    spec = context.ContextSpec(rung, num_images=num_images, seed=3)
    json_file, image_root = context_source.ensure_written(root, rung, "val", spec=spec)
    extra = list(context.EXTRA_ANNOTATION_KEYS)
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name, extra))
    return DatasetCatalog.get(name)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Three bind images (two pairs each) registered as DATASET; yields their dataset dicts."""
    yield _register(tmp_path_factory, DATASET, "bind", 3)
    DatasetCatalog.remove(DATASET)
    MetadataCatalog.remove(DATASET)


@pytest.fixture(scope="module")
def pair_records(tmp_path_factory):
    """Two pair images (one pair each) registered as PAIR_DATASET."""
    yield _register(tmp_path_factory, PAIR_DATASET, "pair", 2)
    DatasetCatalog.remove(PAIR_DATASET)
    MetadataCatalog.remove(PAIR_DATASET)


def _targets(record):
    return [a for a in record["annotations"] if "partner" in a]


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


def _peaked_model():
    """The config's model with an embedded-Gaussian block (the config's Gaussian has no
    embeddings) whose embeddings are scaled up: peaked attention, shares far from uniform."""
    cfg, model = _model(["MODEL.NONLOCAL.INSTANTIATION", "embedded_gaussian"])
    block = dict(model.named_modules())[BLOCK]
    with torch.no_grad():
        block.theta.weight.mul_(60)
        block.phi.weight.mul_(60)
    return cfg, model


def test_shares_are_the_blocks_weights_on_the_partner_cells(records):
    cfg, model = _peaked_model()
    block = dict(model.named_modules())[BLOCK]
    record = records[0]
    shares = target_attention_shares(model, BLOCK, record, _transform(cfg), cfg.INPUT.FORMAT)

    # the same numbers from the block's input and weights, with the geometry done by hand
    bgr = cv2.imread(record["file_name"])  # the config's INPUT.FORMAT
    image = torch.as_tensor(np.ascontiguousarray(bgr.transpose(2, 0, 1)).astype("float32"))
    with torch.no_grad(), capture_inputs({"nl": block}) as captured:
        model.backbone(model.preprocess_image([{"image": image}]).tensor)
    x = captured["nl"]
    assert tuple(x.shape[2:]) == (128 // STRIDE, 128 // STRIDE)
    targets = _targets(record)
    assert len(targets) == 2 and len(record["annotations"]) == 4  # and two cue objects
    partner_cells = []
    for ann in targets:
        polygons = [np.asarray(p) for p in ann["partner"]["segmentation"]]
        ys, xs = np.nonzero(polygons_to_bitmask(polygons, 128, 128))
        partner_cells.append(sorted(set((ys // STRIDE * 8 + xs // STRIDE).tolist())))
    assert len(shares) == len(targets)
    for i, ann in enumerate(targets):
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
        assert shares[i]["distractor_uniform"] == pytest.approx(len(other) / 64)
    assert any(abs(s["partner_share"] - s["partner_uniform"]) > 0.01 for s in shares)


def test_cue_objects_are_not_queried(records):
    """Only the targets are queried, wherever the cue objects stand in the annotations."""
    cfg, model = _peaked_model()
    record = records[1]
    shares = target_attention_shares(model, BLOCK, record, _transform(cfg), cfg.INPUT.FORMAT)
    assert len(shares) == 2
    cues_first = dict(record, annotations=record["annotations"][::-1])
    reordered = target_attention_shares(model, BLOCK, cues_first, _transform(cfg), cfg.INPUT.FORMAT)
    assert reordered == shares[::-1]
    only_targets = dict(record, annotations=_targets(record))
    assert (
        target_attention_shares(model, BLOCK, only_targets, _transform(cfg), cfg.INPUT.FORMAT)
        == shares
    )


def test_one_pair_has_no_distractor(records, pair_records):
    """pair images: one query each, distractor shares NaN; averages skip the NaNs."""
    cfg, model = _peaked_model()
    transform = _transform(cfg)
    pair_shares = [
        target_attention_shares(model, BLOCK, r, transform, cfg.INPUT.FORMAT) for r in pair_records
    ]
    for shares in pair_shares:
        (share,) = shares
        assert math.isnan(share["distractor_share"]) and math.isnan(share["distractor_uniform"])
        assert 0 < share["partner_uniform"] < 0.2 and 0 <= share["partner_share"] <= 1
    stat = partner_attention(model, BLOCK, pair_records, transform, cfg.INPUT.FORMAT)
    assert stat.num_queries == len(pair_records)
    assert stat.partner_share == pytest.approx(
        np.mean([s[0]["partner_share"] for s in pair_shares])
    )
    assert math.isnan(stat.distractor_share) and math.isnan(stat.as_dict()["distractor_lift"])
    # mixed: partner shares over every target, distractor shares over the bind targets only
    bind_shares = [
        s for r in records for s in target_attention_shares(model, BLOCK, r, transform, "BGR")
    ]
    mixed = partner_attention(model, BLOCK, pair_records + records, transform, cfg.INPUT.FORMAT)
    assert mixed.num_queries == len(pair_records) + 2 * len(records)
    every = [s[0] for s in pair_shares] + bind_shares
    assert mixed.partner_share == pytest.approx(np.mean([s["partner_share"] for s in every]))
    for key in ("distractor_share", "distractor_uniform"):
        assert getattr(mixed, key) == pytest.approx(np.mean([s[key] for s in bind_shares]))


def test_a_dataset_without_partners_is_rejected(records):
    cfg, model = _model([])
    # cue objects alone (no annotation names a partner): nothing to query
    cues = [a for a in records[0]["annotations"] if "partner" not in a]
    for annotations in (cues, [{"bbox": [0, 0, 5, 5]}, {"bbox": [9, 9, 5, 5]}]):
        record = dict(records[0], annotations=annotations)
        with pytest.raises(ValueError, match="no annotation names a 'partner'.*nl_context_bind"):
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
