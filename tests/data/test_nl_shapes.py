"""The generated nl_shapes dataset: valid COCO, deterministic, annotations that match the pixels."""

import json
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from nl_detectron.data import shapes
from nl_detectron.data.shapes import SplitSpec, ensure_split, generate_split

SMALL = SplitSpec(num_images=12, seed=7)


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """A 12-image split written like a real one: (json_file, image_root, COCO api)."""
    out = str(tmp_path_factory.mktemp("shapes_small"))
    coco = generate_split(out, SMALL)
    json_file = os.path.join(out, "instances.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    return json_file, os.path.join(out, "images"), COCO(json_file)


def _read(image_root, info):
    return cv2.imread(os.path.join(image_root, info["file_name"]), cv2.IMREAD_COLOR)


def test_json_is_valid_coco(small_split):
    _, image_root, api = small_split
    assert len(api.getImgIds()) == SMALL.num_images
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == list(shapes.CATEGORY_NAMES)
    anns = api.loadAnns(api.getAnnIds())
    assert len(anns) >= SMALL.num_images  # at least one object per image
    for ann in anns:
        info = api.imgs[ann["image_id"]]
        assert _read(image_root, info).shape == (info["height"], info["width"], 3)
        mask = api.annToMask(ann)
        assert mask.shape == (info["height"], info["width"])
        assert mask.sum() > 0
        assert ann["iscrowd"] == 0
        assert len(ann["keypoints"]) == 3 * len(shapes.KEYPOINT_NAMES)
        # The stored area is the painted pixel count; pycocotools' rasterisation of the same
        # polygons may differ only along the boundary.
        assert abs(int(mask.sum()) - ann["area"]) <= 0.25 * ann["area"] + 4


def test_every_category_appears(small_split):
    _, _, api = small_split
    seen = {ann["category_id"] for ann in api.loadAnns(api.getAnnIds())}
    assert seen == set(api.getCatIds())


def test_masks_inside_boxes(small_split):
    _, _, api = small_split
    for ann in api.loadAnns(api.getAnnIds()):
        ys, xs = np.nonzero(api.annToMask(ann))
        x, y, w, h = ann["bbox"]
        # Pixel i covers [i, i + 1): a mask pixel may touch the box edge but not pass it.
        assert xs.min() >= np.floor(x) and xs.max() + 1 <= np.ceil(x + w)
        assert ys.min() >= np.floor(y) and ys.max() + 1 <= np.ceil(y + h)


def test_keypoints_inside_boxes_and_only_on_persons(small_split):
    _, _, api = small_split
    num_persons = 0
    for ann in api.loadAnns(api.getAnnIds()):
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        if ann["category_id"] != 1:
            assert ann["num_keypoints"] == 0 and not kp.any()
            continue
        num_persons += 1
        assert ann["num_keypoints"] == len(shapes.KEYPOINT_NAMES)
        assert (kp[:, 2] == 2).all()
        x, y, w, h = ann["bbox"]
        # Stored at pixel indices (COCO); +0.5 gives detectron2's continuous coordinates.
        xy = kp[:, :2] + 0.5
        assert (xy[:, 0] >= x).all() and (xy[:, 0] <= x + w).all()
        assert (xy[:, 1] >= y).all() and (xy[:, 1] <= y + h).all()
    assert num_persons > 0


def test_person_keypoints_follow_left_right_convention(small_split):
    # Front-facing figures: the person's left shoulder and hip are on the image's right.
    _, _, api = small_split
    index = {n: i for i, n in enumerate(shapes.KEYPOINT_NAMES)}
    for ann in api.loadAnns(api.getAnnIds(catIds=[1])):
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        for joint in ("shoulder", "hip"):
            left, right = kp[index[f"left_{joint}"]], kp[index[f"right_{joint}"]]
            # Figures lean by at most 0.3 rad, so the torso's left-right axis stays horizontal-ish.
            assert left[0] > right[0]


def test_objects_are_painted_where_their_masks_are(small_split):
    # Inside a mask the image is one flat colour plus sensor noise (sigma 4); the texture and the
    # clutter lines lie only outside, so masks and pixels agree.
    _, image_root, api = small_split
    for img_id in api.getImgIds():
        img = _read(image_root, api.imgs[img_id]).astype(np.float64)
        for ann in api.loadAnns(api.getAnnIds(imgIds=[img_id])):
            mask = api.annToMask(ann).astype(np.uint8)
            inner = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
            if inner.sum() < 10:
                continue
            pixels = img[inner]
            assert np.abs(pixels - np.median(pixels, axis=0)).mean() < 8


def test_objects_do_not_overlap(small_split):
    _, _, api = small_split
    for img_id in api.getImgIds():
        masks = [api.annToMask(a) for a in api.loadAnns(api.getAnnIds(imgIds=[img_id]))]
        if len(masks) > 1:
            assert np.stack(masks).sum(0).max() == 1


def test_generation_is_deterministic(tmp_path):
    spec = SplitSpec(num_images=4, seed=11)
    a = generate_split(str(tmp_path / "a"), spec)
    b = generate_split(str(tmp_path / "b"), spec)
    assert json.dumps(a) == json.dumps(b)
    for info in a["images"]:
        pa = cv2.imread(str(tmp_path / "a" / "images" / info["file_name"]))
        pb = cv2.imread(str(tmp_path / "b" / "images" / info["file_name"]))
        np.testing.assert_array_equal(pa, pb)


def test_seeds_give_different_splits(tmp_path):
    a = generate_split(str(tmp_path / "a"), SplitSpec(num_images=2, seed=1))
    b = generate_split(str(tmp_path / "b"), SplitSpec(num_images=2, seed=2))
    assert a["annotations"] != b["annotations"]
    assert shapes.SPLITS["train"].seed != shapes.SPLITS["val"].seed


def test_ensure_split_generates_once(tmp_path):
    spec = SplitSpec(num_images=3, seed=5)
    json_file, image_root = ensure_split(str(tmp_path), "train", spec)
    assert json_file == os.path.join(shapes.split_dir(str(tmp_path), "train"), "instances.json")
    assert sorted(os.listdir(image_root)) == ["000001.png", "000002.png", "000003.png"]
    mtime = os.path.getmtime(json_file)
    assert ensure_split(str(tmp_path), "train", spec) == (json_file, image_root)
    assert os.path.getmtime(json_file) == mtime
    # Nothing but the finished split is left behind (the temporary folder was renamed).
    assert os.listdir(os.path.dirname(shapes.split_dir(str(tmp_path), "train"))) == ["train"]


def test_ensure_split_rejects_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="'test'.*'train', 'val'"):
        ensure_split(str(tmp_path), "test")


def test_keypoint_metadata_is_consistent():
    names = shapes.KEYPOINT_NAMES
    assert len(set(names)) == len(names) == len(shapes.KEYPOINT_OKS_SIGMAS)
    flipped = {n for pair in shapes.KEYPOINT_FLIP_MAP for n in pair}
    # Every left/right joint has its mirror; the head maps to itself.
    assert flipped == {n for n in names if n.startswith(("left_", "right_"))}
    for a, b in shapes.KEYPOINT_FLIP_MAP:
        assert a.replace("left_", "right_") == b
    for a, b, colour in shapes.KEYPOINT_CONNECTION_RULES:
        assert a in names and b in names and len(colour) == 3
    person = shapes.categories()[0]
    assert person["name"] == "person" and person["keypoints"] == list(names)
    assert len(person["skeleton"]) == len(shapes.KEYPOINT_CONNECTION_RULES)
    assert all(1 <= i <= len(names) for edge in person["skeleton"] for i in edge)
