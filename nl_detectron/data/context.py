"""A generated COCO-format dataset ("nl_context") whose categories can only be told from far away.

Every image holds two *pairs* on a textured background. A pair is a *target*, an ellipse (the
annotated object), and its *partner*, a triangle or a star (not annotated), both painted in the
pair's own colour; the two pairs of an image have clearly different colours. The rule:

    category of a target = "paired_with_" + shape of the partner of the same colour

Targets look alike whatever their category: shape, size, rotation and colour are drawn
independently of the partner's shape. A partner lies at least ``MIN_PARTNER_DISTANCE`` of the image
side (64 px at the default 128 px) from its target, centre to centre, so the pixels around a
target carry no information on its category: a model that reads only a target's neighbourhood is
at chance (1/2). It must find the distant same-coloured shape (the other pair's partner, of another
colour, is a distractor) and read its shape. Boxes and masks need no context: ellipses are flat,
contrasting regions.

Each annotation carries its ``partner`` (``shape``, ``bbox``, ``segmentation``) beside the COCO
fields, for analyses such as the attention a target's query puts on its partner.
"""

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .generated import ensure_generated, resolve_spec, write_coco_split
from .shapes import (
    SplitSpec,
    _background,
    _boxes_overlap,
    _contrasting_colour,
    _fill,
    _shape_polygons,
)

# Bumped whenever the drawing changes, so that a stale cache is never reused.
GENERATOR_VERSION = 1

PARTNER_SHAPES = ("triangle", "star")
TARGET_SHAPE = "ellipse"
# Stored in each annotation beside the COCO fields; load_coco_json keeps them when asked.
EXTRA_ANNOTATION_KEYS = ("partner",)
# Category ids 1, 2 in this order.
CATEGORY_NAMES = tuple(f"paired_with_{shape}" for shape in PARTNER_SHAPES)
PAIRS_PER_IMAGE = 2
# Smallest target-partner distance (box centres) as a fraction of the image side.
MIN_PARTNER_DISTANCE = 0.5
# Object sizes (across, before rotation) as fractions of the image side.
TARGET_SIZE = (0.18, 0.26)
PARTNER_SIZE = (0.16, 0.22)
# Smallest RGB distance between the two pairs' colours (and, as in nl_shapes, to the background).
MIN_COLOUR_DISTANCE = 110.0

IMAGE_SIZE = 128
# Train and val differ only by seed (nl_shapes' SplitSpec, at 128 px).
SPLITS: Dict[str, SplitSpec] = {
    "train": SplitSpec(num_images=512, seed=20181203, image_size=IMAGE_SIZE),
    "val": SplitSpec(num_images=128, seed=20190402, image_size=IMAGE_SIZE),
}


def category_of(partner_shape: str) -> str:
    """The rule: the category of a target whose partner has ``partner_shape``."""
    if partner_shape not in PARTNER_SHAPES:
        raise ValueError(
            f"Unknown partner shape {partner_shape!r}; expected one of {PARTNER_SHAPES}"
        )
    return CATEGORY_NAMES[PARTNER_SHAPES.index(partner_shape)]


def categories() -> List[dict]:
    """The COCO ``categories`` list."""
    return [
        {"id": i + 1, "name": name, "supercategory": TARGET_SHAPE}
        for i, name in enumerate(CATEGORY_NAMES)
    ]


def _centre(box: np.ndarray) -> np.ndarray:
    return (box[:2] + box[2:]) / 2


def _place(
    polygons: List[np.ndarray],
    size: int,
    rng: np.random.Generator,
    boxes: Sequence[np.ndarray],
    far_from: Optional[np.ndarray] = None,
    min_distance: float = 0.0,
    max_tries: int = 50,
) -> Optional[Tuple[List[np.ndarray], np.ndarray]]:
    """Shifts ``polygons`` to a random free spot (2 px from ``boxes``, 1 px from the border) whose
    box centre is ``min_distance`` or more from ``far_from``; None if no try succeeds."""
    points = np.concatenate(polygons)
    lo, hi = points.min(0), points.max(0)
    for _ in range(max_tries):
        shift = rng.uniform(1 - lo, size - 1 - hi)
        box = np.concatenate([lo + shift, hi + shift])
        if far_from is not None and np.linalg.norm(_centre(box) - far_from) < min_distance:
            continue
        if not any(_boxes_overlap(box, b, margin=2.0) for b in boxes):
            return [np.round(p + shift, 2) for p in polygons], box
    return None


def _layout(rng: np.random.Generator, size: int) -> Optional[List[dict]]:
    """Shapes and places PAIRS_PER_IMAGE pairs; None when they do not fit."""
    boxes: List[np.ndarray] = []
    pairs = []
    for _ in range(PAIRS_PER_IMAGE):
        target = _shape_polygons(TARGET_SHAPE, rng.uniform(*TARGET_SIZE) * size, rng)
        partner_shape = PARTNER_SHAPES[rng.integers(len(PARTNER_SHAPES))]
        partner = _shape_polygons(partner_shape, rng.uniform(*PARTNER_SIZE) * size, rng)
        placed_target = _place(target, size, rng, boxes)
        if placed_target is None:
            return None
        boxes.append(placed_target[1])
        placed_partner = _place(
            partner,
            size,
            rng,
            boxes,
            far_from=_centre(placed_target[1]),
            min_distance=MIN_PARTNER_DISTANCE * size,
        )
        if placed_partner is None:
            return None
        boxes.append(placed_partner[1])
        pairs.append(
            {
                "category": category_of(partner_shape),
                "polygons": placed_target[0],
                "partner": {"shape": partner_shape, "polygons": placed_partner[0]},
            }
        )
    return pairs


def _pair_colours(base: np.ndarray, rng: np.random.Generator) -> List[np.ndarray]:
    colours: List[np.ndarray] = []
    while len(colours) < PAIRS_PER_IMAGE:
        colour = _contrasting_colour(base, rng)
        if all(np.linalg.norm(colour - c) > MIN_COLOUR_DISTANCE for c in colours):
            colours.append(colour)
    return colours


def _mask(polygons: List[np.ndarray], size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    _fill(mask, polygons, 1)
    return mask.astype(bool)


def draw_image(
    rng: np.random.Generator, size: int, max_layouts: int = 100
) -> Tuple[np.ndarray, List[dict]]:
    """Draws one image.

    Returns:
        image: uint8 [size, size, 3] (BGR order, as cv2 writes it).
        targets: one dict per pair with ``category``, ``polygons`` (list of [V, 2], absolute,
        pixel i covering [i, i + 1)), ``mask`` (bool [size, size]) and ``partner`` (``shape``,
        ``polygons``, ``mask``).
    """
    img, base = _background(size, rng)
    for _ in range(max_layouts):
        pairs = _layout(rng, size)
        if pairs is not None:
            break
    else:
        raise RuntimeError(f"could not place {PAIRS_PER_IMAGE} pairs in a {size} px image")
    for pair, colour in zip(pairs, _pair_colours(base, rng)):
        pair["mask"] = _mask(pair["polygons"], size)
        pair["partner"]["mask"] = _mask(pair["partner"]["polygons"], size)
        img[pair["mask"]] = colour
        img[pair["partner"]["mask"]] = colour
    # Mild sensor noise so flat regions are not perfectly flat.
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), pairs


def _box_and_polygons(polygons: List[np.ndarray]) -> Tuple[List[float], List[List[float]]]:
    points = np.concatenate(polygons)
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    bbox = [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]
    return bbox, [[round(float(v), 2) for v in p.reshape(-1)] for p in polygons]


def _annotation(target: dict, ann_id: int, image_id: int) -> dict:
    bbox, segmentation = _box_and_polygons(target["polygons"])
    partner_bbox, partner_segmentation = _box_and_polygons(target["partner"]["polygons"])
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORY_NAMES.index(target["category"]) + 1,
        "bbox": bbox,
        "area": int(target["mask"].sum()),
        "iscrowd": 0,
        "segmentation": segmentation,
        "partner": {
            "shape": target["partner"]["shape"],
            "bbox": partner_bbox,
            "segmentation": partner_segmentation,
        },
    }


def generate_split(out_dir: str, spec: SplitSpec) -> dict:
    """Writes ``spec.num_images`` PNGs to ``out_dir/images`` and returns the COCO dict."""
    info = {
        "description": "nl_context: ellipses whose category is the shape of a distant partner",
        "version": str(GENERATOR_VERSION),
    }
    return write_coco_split(out_dir, spec, draw_image, _annotation, info, categories())


def split_dir(root: str, split: str) -> str:
    """Where ``split`` lives under the dataset root (the version keeps stale caches apart)."""
    return os.path.join(root, f"nl_context_v{GENERATOR_VERSION}", split)


def ensure_split(root: str, split: str, spec: Optional[SplitSpec] = None) -> Tuple[str, str]:
    """Generates ``split`` under ``root`` unless present; returns (json_file, image_root)."""
    spec = resolve_spec("nl_context", split, spec, SPLITS)
    return ensure_generated(
        split_dir(root, split),
        lambda folder: generate_split(folder, spec),
        f"nl_context/{split} ({spec.num_images} images)",
    )


def partner_distance(annotation: dict) -> float:
    """Distance (px) between the box centres of a target annotation and its partner."""
    (x, y, w, h), (px, py, pw, ph) = annotation["bbox"], annotation["partner"]["bbox"]
    return math.hypot(x + w / 2 - px - pw / 2, y + h / 2 - py - ph / 2)
