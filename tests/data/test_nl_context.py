"""The nl_context ladder: its rule read back from the pixels, its geometry, no local shortcut,
determinism, errors and valid COCO."""

import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from nl_detectron.data import context
from nl_detectron.data.context import ContextSpec

SIZE = context.IMAGE_SIZE
SMALL = {rung: ContextSpec(rung, num_images=24, seed=11) for rung in context.RUNGS}
# A pixel is "of" a colour when within this distance (RGB, 0-255) of it: the drawn colours carry
# noise of std NOISE_STD per channel (norm about 7); distinct palette colours and their dark
# shades are 45 or more apart, the grey background farther still.
COLOUR_TOLERANCE = 25.0


@pytest.fixture(scope="module")
def written(write_context_splits):
    """rung -> (image_root, COCO api) of SMALL[rung] written as a val split."""
    return {
        rung: (image_root, COCO(json_file))
        for rung, (json_file, image_root) in write_context_splits(SMALL).items()
    }


def _images(written, rung):
    """(image [H, W, 3] BGR as read from disk, its annotations) of every image of a split."""
    image_root, api = written[rung]
    for img_id in sorted(api.getImgIds()):
        info = api.imgs[img_id]
        image = cv2.imread(os.path.join(image_root, info["file_name"]), cv2.IMREAD_COLOR)
        yield image, api.loadAnns(api.getAnnIds(imgIds=[img_id]))


def _name(api, ann):
    return api.cats[ann["category_id"]]["name"]


def _close(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.linalg.norm(image.astype(np.float64) - colour, axis=-1) < COLOUR_TOLERANCE


def _centre(box):
    x0, y0, x1, y1 = box
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def _box_centre(polygon):
    return (polygon.min(0) + polygon.max(0)) / 2


def _xyxy(bbox):
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h])


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _partner_from_pixels(image, api, target):
    """What the pixels say of a target: its colour (the median inside its eroded mask), the box
    of the other pixels of that colour (its partner, found without any partner annotation) and
    the partner's cue, from the pixels in that box: solid when nearly all are the colour, striped
    when about half are the colour times STRIPE_SHADE."""
    mask = api.annToMask(target).astype(np.uint8)
    inner = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
    colour = np.median(image[inner].astype(np.float64), axis=0)
    around = cv2.dilate(mask, np.ones((5, 5), np.uint8)).astype(bool)
    ys, xs = np.nonzero(_close(image, colour) & ~around)
    assert len(xs) > 50, f"no partner of the target's colour {colour} in the image"
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
    x0, y0, x1, y1 = box.astype(int)
    inside = image[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
    bright = _close(inside, colour).mean()
    dark = _close(inside, colour * context.STRIPE_SHADE).mean()
    if bright > 0.9 and dark < 0.05:
        cue = "solid"
    elif 0.3 < bright < 0.7 and 0.3 < dark < 0.7 and bright + dark > 0.9:
        cue = "striped"
    else:
        raise AssertionError(f"partner at {box} is neither solid nor striped: {bright}, {dark}")
    return colour, box, cue


@pytest.mark.parametrize("rung", sorted(context.RUNGS))
def test_categories_follow_the_partner_found_in_the_pixels(written, rung):
    """For every target: the region of its colour elsewhere in the image is one partner, whose
    cue read from its pixels is what the target's category says; the cue objects carry the same
    cue; every partner is far from every target."""
    _, api = written[rung]
    pairs = context.RUNGS[rung]
    seen = set()
    for image, anns in _images(written, rung):
        targets = [a for a in anns if _name(api, a) in context.TARGET_CATEGORIES]
        cue_objects = [a for a in anns if _name(api, a) in context.CUE_CATEGORIES]
        assert len(targets) == len(cue_objects) == pairs
        found = [_partner_from_pixels(image, api, t) for t in targets]
        for target, (colour, box, cue) in zip(targets, found):
            assert _name(api, target) == context.target_category(cue) == f"paired_with_{cue}"
            seen.add(_name(api, target))
            # the cue object drawn there has the cue as category; the stored partner is it
            (match,) = [c for c in cue_objects if _iou(_xyxy(c["bbox"]), box) > 0.7]
            assert _name(api, match) == f"{cue}_{context.PARTNER_SHAPE}"
            assert target["partner"]["cue"] == cue
            assert target["partner"]["bbox"] == match["bbox"]
            # the colour is one of the palette's
            assert np.linalg.norm(context.PALETTE - colour, axis=1).min() < 8
        # far: every target from every partner, from the pixels and from the annotations
        for target in targets:
            here = _centre(_xyxy(target["bbox"]))
            for _, box, _ in found:
                assert (
                    np.linalg.norm(here - _centre(box)) >= context.MIN_PARTNER_DISTANCE * SIZE - 2
                )
            for c in cue_objects:
                distance = np.linalg.norm(here - _centre(_xyxy(c["bbox"])))
                assert distance >= context.MIN_PARTNER_DISTANCE * SIZE
        if rung == "bind":
            hues = [int(np.linalg.norm(context.PALETTE - c, axis=1).argmin()) for c, _, _ in found]
            step = abs(hues[0] - hues[1])
            assert min(step, context.NUM_HUES - step) >= context.MIN_HUE_STEP, hues
            assert sorted(cue for _, _, cue in found) == ["solid", "striped"]
    assert seen == set(context.TARGET_CATEGORIES)


def test_layout_geometry_holds_on_many_layouts():
    """The stored layout on 300 images per rung: sizes in range, boxes inside the image and
    GAP apart, every partner far from every target, bind's hues apart and cues opposite."""
    for rung in context.RUNGS:
        spec = ContextSpec(rung, num_images=300, seed=3)
        for index in range(spec.num_images):
            pairs = context.layout(spec, spec.rng(index))
            assert len(pairs) == spec.pairs
            boxes = []
            for pair in pairs:
                target, partner = pair["target"], pair["partner"]
                radius = np.linalg.norm(target - target.mean(0), axis=1).max()
                assert context.TARGET_SIZE[0] <= 2 * radius <= context.TARGET_SIZE[1] + 1e-6
                side = partner.max(0) - partner.min(0)
                assert side[0] == pytest.approx(side[1])
                assert context.PARTNER_SIZE[0] <= side[0] <= context.PARTNER_SIZE[1] + 1e-6
                boxes += [np.r_[p.min(0), p.max(0)] for p in (target, partner)]
            for box in boxes:
                assert box[:2].min() >= 1 and box[2:].max() <= SIZE - 1
            for i, a in enumerate(boxes):
                for b in boxes[i + 1 :]:  # separated along x or y by GAP or more
                    assert max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3]) >= context.GAP
            for t in pairs:
                for p in pairs:
                    distance = np.linalg.norm(_box_centre(t["target"]) - _box_centre(p["partner"]))
                    assert distance >= context.MIN_PARTNER_DISTANCE * SIZE
            if rung == "bind":
                step = abs(pairs[0]["hue"] - pairs[1]["hue"])
                assert min(step, context.NUM_HUES - step) >= context.MIN_HUE_STEP
                assert {pairs[0]["cue"], pairs[1]["cue"]} == set(context.CUES)


def _target_rows(rung, num_images=1000, seed=5):
    """(category, diameter, hue) of every target of ``num_images`` layouts."""
    spec = ContextSpec(rung, num_images=num_images, seed=seed)
    rows = []
    for index in range(num_images):
        for pair in context.layout(spec, spec.rng(index)):
            target = pair["target"]
            diameter = 2 * np.linalg.norm(target - target.mean(0), axis=1).max()
            rows.append((context.target_category(pair["cue"]), diameter, pair["hue"]))
    return rows


def _hue_distance(a, b):
    """Total-variation distance of the hue histograms of two groups of rows."""
    hist = [np.bincount([r[2] for r in g], minlength=context.NUM_HUES) / len(g) for g in (a, b)]
    return 0.5 * np.abs(hist[0] - hist[1]).sum()


@pytest.mark.parametrize("rung", sorted(context.RUNGS))
def test_targets_look_alike_across_categories(rung):
    """Nothing at a target tells its category: over 1000 layouts the categories are balanced and
    their targets' sizes and hues are drawn alike (loose bounds, several standard errors)."""
    rows = _target_rows(rung)
    groups = [[r for r in rows if r[0] == name] for name in context.TARGET_CATEGORIES]
    assert min(len(g) for g in groups) > 0.45 * len(rows)  # chance is 1/2
    sizes = [np.mean([r[1] for r in g]) for g in groups]
    assert abs(sizes[0] - sizes[1]) < 0.6  # px; the standard error is about 0.2
    assert _hue_distance(*groups) < 0.1  # about 0.05 expected by chance
    # the statistic does see a dependence: the same targets split by hue are far apart
    low = [r for r in rows if r[2] < context.NUM_HUES // 2]
    high = [r for r in rows if r[2] >= context.NUM_HUES // 2]
    assert _hue_distance(low, high) == pytest.approx(1.0)


def test_images_are_deterministic_and_independent_of_the_split_size():
    spec = SMALL["bind"]
    image, pairs = context.draw_image(spec, 5)
    again, pairs_again = context.draw_image(ContextSpec("bind", num_images=24, seed=11), 5)
    assert np.array_equal(image, again)
    assert len(pairs) == len(pairs_again)
    for a, b in zip(pairs, pairs_again):
        assert (a["hue"], a["cue"]) == (b["hue"], b["cue"])
        assert np.array_equal(a["target"], b["target"])
        assert np.array_equal(a["partner_mask"], b["partner_mask"])
    # image 5 is the same in a larger split (its generator depends on seed, rung and index only)
    bigger, _ = context.draw_image(ContextSpec("bind", num_images=10_000, seed=11), 5)
    assert np.array_equal(image, bigger)
    # and differs from the other indices, seeds and rungs
    for other in (
        context.draw_image(spec, 6)[0],
        context.draw_image(ContextSpec("bind", num_images=24, seed=12), 5)[0],
        context.draw_image(ContextSpec("pair", num_images=24, seed=11), 5)[0],
    ):
        assert not np.array_equal(image, other)
    # the layout alone (what training records use) is the drawn one
    layout = context.layout(spec, spec.rng(5))
    assert all(np.array_equal(a["partner"], b["partner"]) for a, b in zip(layout, pairs))


def test_drawn_masks_and_colours():
    """draw_image's masks: each shape painted in its hue (up to noise), stripes in the shade."""
    spec = SMALL["bind"]
    for index in range(4):
        image, pairs = context.draw_image(spec, index)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        for pair in pairs:
            colour = context.PALETTE[pair["hue"]]
            assert _close(image[pair["target_mask"]], colour).mean() > 0.99
            partner = image[pair["partner_mask"]]
            share = _close(partner, colour).mean()
            if pair["cue"] == "solid":
                assert share > 0.99
            else:
                dark = _close(partner, colour * context.STRIPE_SHADE).mean()
                assert 0.4 < share < 0.6 and share + dark > 0.99
            assert not (pair["target_mask"] & pair["partner_mask"]).any()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rung='triple'.*bind.*pair"):
        ContextSpec("triple", num_images=4, seed=0)
    with pytest.raises(ValueError, match="num_images=0 must be >= 1"):
        ContextSpec("pair", num_images=0, seed=0)
    with pytest.raises(ValueError, match="image_size=32"):
        ContextSpec("pair", num_images=1, seed=0, image_size=32)
    spec = ContextSpec("pair", num_images=3, seed=0)
    for index in (3, -1):
        with pytest.raises(IndexError, match=rf"image {index} is outside \[0, 3\)"):
            context.draw_image(spec, index)
    with pytest.raises(ValueError, match="'dotted'.*solid"):
        context.target_category("dotted")


def test_written_split_is_valid_coco(written):
    for rung, spec in SMALL.items():
        image_root, api = written[rung]
        assert api.dataset["categories"] == context.categories()
        assert [c["id"] for c in api.dataset["categories"]] == [1, 2, 3, 4]
        assert [c["name"] for c in api.loadCats(api.getCatIds())] == list(context.CATEGORY_NAMES)
        assert sorted(api.getImgIds()) == list(range(1, spec.num_images + 1))
        anns = api.loadAnns(api.getAnnIds())
        assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
        assert len(anns) == 2 * spec.pairs * spec.num_images
        for ann in anns:
            name = _name(api, ann)
            assert ("partner" in ann) == (name in context.TARGET_CATEGORIES)
            assert context.is_target(ann) == ("partner" in ann)
            assert ann["area"] > 0 and ann["iscrowd"] == 0
            mask = api.annToMask(ann)
            assert abs(int(mask.sum()) - ann["area"]) <= 0.15 * ann["area"] + 4
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= spec.image_size and y + h <= spec.image_size
            ys, xs = np.nonzero(mask)
            assert xs.min() >= np.floor(x) and xs.max() + 1 <= np.ceil(x + w)
            assert ys.min() >= np.floor(y) and ys.max() + 1 <= np.ceil(y + h)
            if "partner" in ann:
                assert set(ann["partner"]) == {"cue", "bbox", "segmentation"}
                assert context.partner_distance(ann) >= context.MIN_PARTNER_DISTANCE * SIZE
        # the PNGs are the drawn images, bit for bit
        info = api.imgs[3]
        image = cv2.imread(os.path.join(image_root, info["file_name"]), cv2.IMREAD_COLOR)
        assert np.array_equal(image, context.draw_image(spec, 2)[0])
