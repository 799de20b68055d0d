"""How nl_context reaches detectron2: image URIs drawn on read, records, written val splits."""

import json
import os
import re

import cv2
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, detection_utils
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

import nl_detectron.data  # noqa: F401  (registers the nlcontext:// handler on import)
from nl_detectron import add_nonlocal_config
from nl_detectron.data import context, context_source
from nl_detectron.data.context import ContextSpec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAIR_CONFIG = os.path.join(
    REPO, "configs", "quick_schedules", "faster_rcnn_nl_R18_C4_context_pair_quick.yaml"
)
SPEC = ContextSpec("bind", num_images=5, seed=7)


def test_uri_round_trip():
    for spec in (SPEC, ContextSpec("pair", num_images=20_000, seed=20261203, image_size=96)):
        for index in (0, spec.num_images - 1):
            uri = context_source.image_uri(spec, index)
            assert uri.startswith(context_source.PREFIX) and uri.endswith(f"/{index}.png")
            assert context_source.parse_uri(uri) == (spec, index)
    assert context_source.image_uri(SPEC, 3) == "nlcontext://bind/5/7/128/3.png"


@pytest.mark.parametrize(
    "uri",
    [
        "nlcontext://bind/5/7/128/3.jpg",
        "nlcontext://bind/five/7/128/3.png",
        "nlcontext://bind/5/7/3.png",
        "nlcontext://bind/5/-7/128/3.png",
        "file:///tmp/3.png",
        "/tmp/nlcontext/bind/5/7/128/3.png",
    ],
)
def test_malformed_uris_are_named(uri):
    with pytest.raises(ValueError, match=re.escape(f"'{uri}' is not an nl_context image URI")):
        context_source.parse_uri(uri)
    assert not context_source.ContextImageHandler()._exists(uri)


def test_uri_with_a_bad_spec_is_refused():
    with pytest.raises(ValueError, match="rung='triple'"):
        context_source.parse_uri("nlcontext://triple/5/7/128/3.png")
    with pytest.raises(ValueError, match="num_images=0"):
        context_source.parse_uri("nlcontext://pair/0/7/128/0.png")


def test_read_image_draws_the_image():
    """detectron2's read_image on a URI gives the drawn image bit for bit (PNG is lossless)."""
    for index in range(SPEC.num_images):
        uri = context_source.image_uri(SPEC, index)
        drawn = context.draw_image(SPEC, index)[0]
        assert np.array_equal(detection_utils.read_image(uri, format="BGR"), drawn)
        assert np.array_equal(detection_utils.read_image(uri, format="RGB"), drawn[:, :, ::-1])
    assert PathManager.exists(context_source.image_uri(SPEC, 4))
    assert PathManager.isfile(context_source.image_uri(SPEC, 4))
    assert not PathManager.exists("nlcontext://bind/5/7/128/5.png")  # index past the split
    with pytest.raises(IndexError, match=r"image 5 is outside \[0, 5\)"):
        detection_utils.read_image("nlcontext://bind/5/7/128/5.png", format="BGR")


def test_the_handler_is_read_only():
    uri = context_source.image_uri(SPEC, 0)
    for mode in ("wb", "w", "ab", "r+b"):
        with pytest.raises(ValueError, match=re.escape(f"read-only; got mode '{mode}'")):
            PathManager.open(uri, mode)
    with PathManager.open(uri, "rb") as f:
        data = f.read()
    assert data.startswith(b"\x89PNG")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, context.draw_image(SPEC, 0)[0])
    context_source.register_handler()  # a second registration is harmless
    assert PathManager.isfile(uri)


def test_generated_records_match_the_drawing():
    records = context_source.generated_records(SPEC)
    assert len(records) == SPEC.num_images
    for index, record in enumerate(records):
        assert record["file_name"] == context_source.image_uri(SPEC, index)
        assert record["image_id"] == index + 1
        assert record["height"] == record["width"] == SPEC.image_size
        objects = context.annotations(context.draw_image(SPEC, index)[1])
        anns = record["annotations"]
        assert len(anns) == len(objects) == 2 * SPEC.pairs
        for ann, obj in zip(anns, objects):
            assert ann["category_id"] == obj["category_id"] - 1  # contiguous, 0-based
            assert ann["bbox"] == obj["bbox"] and ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert ann["segmentation"] == obj["segmentation"]
            assert ann.get("partner") == obj.get("partner")
            assert "area" not in ann
        # targets first (they name their partner), then the cue objects
        names = [context.CATEGORY_NAMES[a["category_id"]] for a in anns]
        assert all(n in context.TARGET_CATEGORIES for n in names[: SPEC.pairs])
        assert all(n in context.CUE_CATEGORIES for n in names[SPEC.pairs :])
        assert [context.is_target(a) for a in anns] == [True] * 2 + [False] * 2


def test_records_go_through_detectron2s_mapper():
    """The stock DatasetMapper reads a record's URI and keeps its four objects."""
    cfg = get_cfg()
    add_nonlocal_config(cfg)
    cfg.merge_from_file(PAIR_CONFIG)
    mapper = DatasetMapper(cfg, is_train=True)
    record = context_source.generated_records(SPEC)[2]
    out = mapper(dict(record))
    assert tuple(out["image"].shape) == (3, SPEC.image_size, SPEC.image_size)
    classes = [a["category_id"] for a in record["annotations"]]
    assert out["instances"].gt_classes.tolist() == classes
    drawn = torch.as_tensor(context.draw_image(SPEC, 2)[0].transpose(2, 0, 1).copy())
    # the mapped image is the drawn one, flipped or not
    assert torch.equal(out["image"], drawn) or torch.equal(out["image"], drawn.flip(-1))


def test_ensure_written_writes_once(tmp_path):
    root = str(tmp_path)
    spec = ContextSpec("pair", num_images=3, seed=2)
    json_file, image_root = context_source.ensure_written(root, "pair", "val", spec=spec)
    folder = context_source.split_dir(root, "pair", "val")
    assert folder == os.path.join(root, f"nl_context_v{context.GENERATOR_VERSION}", "pair_val")
    assert json_file == os.path.join(folder, "instances.json")
    assert image_root == os.path.join(folder, "images")
    with open(json_file) as f:
        coco = json.load(f)
    assert len(coco["images"]) == 3 and coco["info"]["seed"] == 2
    assert coco["info"]["version"] == str(context.GENERATOR_VERSION)
    for info in coco["images"]:
        image = cv2.imread(os.path.join(image_root, info["file_name"]), cv2.IMREAD_COLOR)
        assert np.array_equal(image, context.draw_image(spec, info["id"] - 1)[0])
    stamps = {p: os.path.getmtime(p) for p in (json_file, os.path.join(image_root, "000000.png"))}

    # a second call finds the split and writes nothing, whatever spec it is given
    again = context_source.ensure_written(root, "pair", "val", spec=ContextSpec("pair", 9, 5))
    assert again == (json_file, image_root)
    assert {p: os.path.getmtime(p) for p in stamps} == stamps
    assert sorted(os.listdir(image_root)) == ["000000.png", "000001.png", "000002.png"]
    # only the split folder (no temporary folder left behind)
    assert os.listdir(os.path.dirname(folder)) == ["pair_val"]
