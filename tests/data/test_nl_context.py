"""The generated nl_context dataset: its rule read back from the pixels, valid COCO, determinism."""

import json
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from nl_detectron.data import context
from nl_detectron.data.context import generate_split
from nl_detectron.data.shapes import SplitSpec

SMALL = SplitSpec(num_images=24, seed=11, image_size=context.IMAGE_SIZE)


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """(image_root, COCO api, raw json dict) of a 24-image split written like a real one."""
    out = str(tmp_path_factory.mktemp("context_small"))
    coco = generate_split(out, SMALL)
    json_file = os.path.join(out, "instances.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    return os.path.join(out, "images"), COCO(json_file), coco


def _read(image_root, info):
    return cv2.imread(os.path.join(image_root, info["file_name"]), cv2.IMREAD_COLOR)


def _solidity(mask: np.ndarray) -> float:
    """Area over convex-hull area: about 1 for a triangle, about 0.6 for a 5-pointed star."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    return cv2.contourArea(contour) / cv2.contourArea(cv2.convexHull(contour))


def _partner_from_pixels(image, target_mask):
    """The largest same-coloured region outside the target: the drawn partner, found without
    the annotation's partner field. Returns (its mask, the target's colour)."""
    inner = cv2.erode(target_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    colour = np.median(image[inner].astype(np.float64), axis=0)
    # pixels are the pair colour plus sensor noise (sigma 4 per channel)
    same = np.linalg.norm(image.astype(np.float64) - colour, axis=-1) < 25
    same &= ~cv2.dilate(target_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(same.astype(np.uint8), 8)
    assert count > 1, "no region of the target's colour besides the target"
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest, colour


def test_labels_follow_the_drawn_partners(small_split):
    """The rule, checked on the pixels: the same-coloured shape far from each ellipse is a
    triangle exactly when the ellipse is ``paired_with_triangle``."""
    image_root, api, _ = small_split
    size = SMALL.image_size
    seen = set()
    for img_id in api.getImgIds():
        image = _read(image_root, api.imgs[img_id])
        anns = api.loadAnns(api.getAnnIds(imgIds=[img_id]))
        assert len(anns) == context.PAIRS_PER_IMAGE
        colours = []
        for ann in anns:
            partner, colour = _partner_from_pixels(image, api.annToMask(ann))
            colours.append(colour)
            shape = "triangle" if _solidity(partner) > 0.75 else "star"
            category = api.cats[ann["category_id"]]["name"]
            assert category == context.category_of(shape), (img_id, ann["id"], _solidity(partner))
            seen.add(category)
            # the stored partner is the one drawn
            stored = api.annToMask({**ann, "segmentation": ann["partner"]["segmentation"]})
            assert ann["partner"]["shape"] == shape
            assert (partner & (stored > 0)).sum() / (partner | (stored > 0)).sum() > 0.7
            # and it is far away: centre distance from the pixels
            ys, xs = np.nonzero(partner)
            x, y, w, h = ann["bbox"]
            distance = np.hypot(xs.mean() + 0.5 - x - w / 2, ys.mean() + 0.5 - y - h / 2)
            assert distance >= context.MIN_PARTNER_DISTANCE * size - 3
            assert context.partner_distance(ann) >= context.MIN_PARTNER_DISTANCE * size
        # the pairs are told apart by colour
        assert np.linalg.norm(colours[0] - colours[1]) > 0.8 * context.MIN_COLOUR_DISTANCE
    assert seen == set(context.CATEGORY_NAMES)


def test_targets_look_alike_across_categories():
    """Nothing local tells the categories apart: the ellipses' sizes and colours are drawn alike."""
    rng = np.random.default_rng(5)
    areas = {name: [] for name in context.CATEGORY_NAMES}
    brightness = {name: [] for name in context.CATEGORY_NAMES}
    for _ in range(150):
        image, targets = context.draw_image(rng, 128)
        for t in targets:
            areas[t["category"]].append(t["mask"].sum())
            brightness[t["category"]].append(image[t["mask"]].mean())
    counts = [len(areas[n]) for n in context.CATEGORY_NAMES]
    assert min(counts) > 0.4 * sum(counts)  # balanced: chance is 1/2
    a, b = (np.mean(areas[n]) for n in context.CATEGORY_NAMES)
    assert abs(a - b) < 0.1 * (a + b) / 2
    a, b = (np.mean(brightness[n]) for n in context.CATEGORY_NAMES)
    assert abs(a - b) < 15


def test_json_is_valid_coco(small_split):
    image_root, api, _ = small_split
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == list(context.CATEGORY_NAMES)
    for ann in api.loadAnns(api.getAnnIds()):
        info = api.imgs[ann["image_id"]]
        assert _read(image_root, info).shape == (SMALL.image_size, SMALL.image_size, 3)
        mask = api.annToMask(ann)
        assert abs(int(mask.sum()) - ann["area"]) <= 0.25 * ann["area"] + 4
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert xs.min() >= np.floor(x) and xs.max() + 1 <= np.ceil(x + w)
        assert ys.min() >= np.floor(y) and ys.max() + 1 <= np.ceil(y + h)


def test_generation_is_deterministic(small_split, tmp_path):
    image_root, _, coco = small_split
    spec = SplitSpec(num_images=3, seed=SMALL.seed, image_size=SMALL.image_size)
    again = generate_split(str(tmp_path), spec)
    assert again["annotations"] == coco["annotations"][: len(again["annotations"])]
    for info in again["images"]:
        first = cv2.imread(os.path.join(image_root, info["file_name"]))
        second = cv2.imread(os.path.join(str(tmp_path), "images", info["file_name"]))
        assert np.array_equal(first, second)


def test_unknown_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="'circle'.*triangle"):
        context.category_of("circle")
    with pytest.raises(ValueError, match="'test'.*train"):
        context.ensure_split(str(tmp_path), "test")
