"""``nl_context``: generated images whose targets' categories can only be told from far away.

An image holds one or two *pairs* on a flat grey background. A pair is a *target*, an ellipse
20-30 px across, and its *partner*, a square 28-36 px wide, both painted in the pair's hue. The
partner carries the *cue*: it is either solid or striped (diagonal bands of its hue and a dark
shade, 4 px wide). The rule:

    category of a target = "paired_with_" + cue of the partner of the same hue

Every partner lies at least ``MIN_PARTNER_DISTANCE`` (64 px in a 128 px image) from every target,
centre to centre, so the pixels around a target say nothing of its category. Partners are
annotated objects too, with their cue as category (``solid_square``, ``striped_square``): their
category is read where they lie, so a detector learns the cue quickly, and what remains long-range
is the targets' category. Two rungs of one generator:

- ``pair``: one pair per image. The cue of the only partner decides; any path that sees the
  whole image (global pooling, attention) can carry it; a model that only reads the target's
  surroundings is at chance.
- ``bind``: two pairs of different hues whose partners always carry different cues, so the image
  as a whole says nothing (one solid and one striped partner each time): the category needs the
  partner *of the same hue*, a binding that one pooled context vector per image does not give.

Images are drawn from ``numpy.random.default_rng([seed, rung, index])``, one per index, so a split
of any size is deterministic and any image can be drawn on its own (the training splits are
drawn on the fly, see :mod:`.context_source`). Each target annotation also carries its
``partner`` (``cue``, ``bbox``, ``segmentation``) for analyses such as the attention a target's
query puts on its partner.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

# Bumped whenever the drawing changes, so that a stale cache is never reused.
GENERATOR_VERSION = 2

IMAGE_SIZE = 128
RUNGS = {"pair": 1, "bind": 2}  # rung -> pairs per image
CUES = ("solid", "striped")
TARGET_SHAPE = "ellipse"
PARTNER_SHAPE = "square"
TARGET_CATEGORIES = tuple(f"paired_with_{cue}" for cue in CUES)
CUE_CATEGORIES = tuple(f"{cue}_{PARTNER_SHAPE}" for cue in CUES)
# Contiguous ids 0..3 in this order (COCO ids 1..4).
CATEGORY_NAMES = TARGET_CATEGORIES + CUE_CATEGORIES
# Stored in target annotations beside the COCO fields; load_coco_json keeps them when asked.
EXTRA_ANNOTATION_KEYS = ("partner",)

# Smallest distance (box centres) from any target to any partner, as a fraction of the side.
MIN_PARTNER_DISTANCE = 0.5
# Sizes in px at IMAGE_SIZE, scaled with the image: target diameter, partner side.
TARGET_SIZE = (20.0, 30.0)
PARTNER_SIZE = (28.0, 36.0)
# Free space between any two objects' boxes, px.
GAP = 3.0
# Saturated hues at equal value, evenly spaced; the two pairs of an image are 2 or more apart.
NUM_HUES = 6
MIN_HUE_STEP = 2
STRIPE_WIDTH = 4
STRIPE_SHADE = 0.25  # the dark bands: the hue times this
BACKGROUND = (90.0, 160.0)  # grey level range
NOISE_STD = 4.0


def _palette() -> np.ndarray:
    """[NUM_HUES, 3] BGR colours (float32): hue k * 360 / NUM_HUES, saturation 0.86, value 0.9."""
    hsv = np.array([[[round(180 * k / NUM_HUES), 220, 230] for k in range(NUM_HUES)]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0].astype(np.float32)


PALETTE = _palette()


@dataclass(frozen=True)
class ContextSpec:
    """One split: ``num_images`` images of ``rung`` drawn from ``seed`` at ``image_size`` px."""

    rung: str
    num_images: int
    seed: int
    image_size: int = IMAGE_SIZE

    def __post_init__(self):
        if self.rung not in RUNGS:
            raise ValueError(f"nl_context: rung={self.rung!r} is not one of {sorted(RUNGS)}")
        if self.num_images < 1:
            raise ValueError(f"nl_context: num_images={self.num_images!r} must be >= 1")
        if self.image_size < 64:
            raise ValueError(f"nl_context: image_size={self.image_size!r} must be >= 64 px")

    @property
    def pairs(self) -> int:
        return RUNGS[self.rung]

    def rng(self, index: int) -> np.random.Generator:
        """The generator of image ``index`` (0-based), independent of every other image."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"nl_context: image {index} is outside [0, {self.num_images})")
        return np.random.default_rng([self.seed, list(RUNGS).index(self.rung), index])


def target_category(cue: str) -> str:
    """The rule: the category of a target whose partner shows ``cue``."""
    if cue not in CUES:
        raise ValueError(f"Unknown cue {cue!r}; expected one of {CUES}")
    return TARGET_CATEGORIES[CUES.index(cue)]


def categories() -> List[dict]:
    """The COCO ``categories`` list (ids 1..4)."""
    return [
        {
            "id": i + 1,
            "name": name,
            "supercategory": TARGET_SHAPE if name in TARGET_CATEGORIES else PARTNER_SHAPE,
        }
        for i, name in enumerate(CATEGORY_NAMES)
    ]


def _ellipse(diameter: float, rng: np.random.Generator) -> np.ndarray:
    """[32, 2] vertices of a rotated ellipse around the origin, ``diameter`` px across."""
    t = 2 * math.pi * np.arange(32) / 32
    r = diameter / 2
    points = np.stack([r * np.cos(t), r * rng.uniform(0.6, 0.9) * np.sin(t)], axis=1)
    angle = rng.uniform(0, math.pi)
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _square(side: float) -> np.ndarray:
    h = side / 2
    return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])


def _place(
    polygon: np.ndarray,
    size: int,
    rng: np.random.Generator,
    boxes: List[np.ndarray],
    far_from: List[np.ndarray],
    min_distance: float,
    tries: int = 64,
) -> Optional[np.ndarray]:
    """``polygon`` shifted to a random free spot 1 px inside the image (``GAP`` px from
    ``boxes``) whose box centre is ``min_distance`` or more from each point of ``far_from``: the
    first of ``tries`` candidates drawn at once that qualifies; None if none does."""
    lo, hi = polygon.min(0), polygon.max(0)
    shifts = rng.uniform(1 - lo, size - 1 - hi, size=(tries, 2))  # [T, 2]
    lows, highs = lo + shifts, hi + shifts
    ok = np.ones(tries, dtype=bool)
    for point in far_from:
        ok &= np.hypot(*((lows + highs) / 2 - point).T) >= min_distance
    for b in boxes:
        ok &= ~(
            (lows[:, 0] < b[2] + GAP)
            & (b[0] < highs[:, 0] + GAP)
            & (lows[:, 1] < b[3] + GAP)
            & (b[1] < highs[:, 1] + GAP)
        )
    found = np.flatnonzero(ok)
    return polygon + shifts[found[0]] if found.size else None


def _centre(polygon: np.ndarray) -> np.ndarray:
    return (polygon.min(0) + polygon.max(0)) / 2


def layout(spec: ContextSpec, rng: np.random.Generator, max_layouts: int = 200) -> List[dict]:
    """The pairs of one image: dicts with ``hue`` (palette index), ``cue``, ``target`` and
    ``partner`` polygons [V, 2] (absolute px, pixel i covering [i, i + 1))."""
    size, scale = spec.image_size, spec.image_size / IMAGE_SIZE
    hues = [int(rng.integers(NUM_HUES))]
    cues = [CUES[rng.integers(len(CUES))]]
    if spec.pairs == 2:
        step = int(rng.integers(MIN_HUE_STEP, NUM_HUES - MIN_HUE_STEP + 1))
        hues.append((hues[0] + step) % NUM_HUES)
        cues.append(CUES[1 - CUES.index(cues[0])])  # one solid, one striped: no global cue
    for _ in range(max_layouts):
        boxes: List[np.ndarray] = []
        targets = []
        for _ in range(spec.pairs):
            target = _place(
                _ellipse(rng.uniform(*TARGET_SIZE) * scale, rng), size, rng, boxes, [], 0
            )
            if target is None:
                break
            targets.append(target)
            boxes.append(np.concatenate([target.min(0), target.max(0)]))
        partners = []
        centres = [_centre(t) for t in targets]
        for _ in range(spec.pairs if len(targets) == spec.pairs else 0):
            side = rng.uniform(*PARTNER_SIZE) * scale
            partner = _place(_square(side), size, rng, boxes, centres, MIN_PARTNER_DISTANCE * size)
            if partner is None:
                break
            partners.append(partner)
            boxes.append(np.concatenate([partner.min(0), partner.max(0)]))
        if len(partners) == spec.pairs:
            return [
                {"hue": h, "cue": c, "target": t, "partner": p}
                for h, c, t, p in zip(hues, cues, targets, partners)
            ]
    raise RuntimeError(f"nl_context: could not place {spec.pairs} pair(s) in {size} px")


def _mask(polygon: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    # cv2 puts vertex v at the centre of pixel v (v + 0.5 here); 4 fractional bits.
    cv2.fillPoly(mask, [np.round((polygon - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def draw_image(spec: ContextSpec, index: int) -> Tuple[np.ndarray, List[dict]]:
    """Image ``index`` of ``spec``.

    Returns:
        image: uint8 [size, size, 3], BGR (as cv2 writes it).
        pairs: :func:`layout`'s dicts, each with ``target_mask`` and ``partner_mask`` (bool).
    """
    rng = spec.rng(index)
    pairs = layout(spec, rng)
    size = spec.image_size
    image = np.full((size, size, 3), rng.uniform(*BACKGROUND), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    dark_band = ((xx + yy) // STRIPE_WIDTH) % 2 == 1
    for pair in pairs:
        colour = PALETTE[pair["hue"]]
        pair["target_mask"] = _mask(pair["target"], size)
        pair["partner_mask"] = _mask(pair["partner"], size)
        image[pair["target_mask"]] = colour
        image[pair["partner_mask"]] = colour
        if pair["cue"] == "striped":
            image[pair["partner_mask"] & dark_band] = colour * STRIPE_SHADE
    image += rng.normal(0, NOISE_STD, size=image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), pairs


def _box_and_polygon(polygon: np.ndarray) -> Tuple[List[float], List[List[float]]]:
    (x0, y0), (x1, y1) = polygon.min(0), polygon.max(0)
    bbox = [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]
    return bbox, [[round(float(v), 2) for v in polygon.reshape(-1)]]


def _polygon_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def annotations(pairs: List[dict]) -> List[dict]:
    """COCO-style objects of one image (XYWH boxes, polygons, 1-based ``category_id``): each
    target with its ``partner``, then each partner as a cue object."""
    objects = []
    for pair in pairs:
        bbox, segmentation = _box_and_polygon(pair["target"])
        partner_bbox, partner_segmentation = _box_and_polygon(pair["partner"])
        objects.append(
            {
                "category_id": CATEGORY_NAMES.index(target_category(pair["cue"])) + 1,
                "bbox": bbox,
                "segmentation": segmentation,
                "area": round(_polygon_area(pair["target"]), 1),
                "iscrowd": 0,
                "partner": {
                    "cue": pair["cue"],
                    "bbox": partner_bbox,
                    "segmentation": partner_segmentation,
                },
            }
        )
    for pair in pairs:
        bbox, segmentation = _box_and_polygon(pair["partner"])
        objects.append(
            {
                "category_id": CUE_CATEGORIES.index(f"{pair['cue']}_{PARTNER_SHAPE}")
                + len(TARGET_CATEGORIES)
                + 1,
                "bbox": bbox,
                "segmentation": segmentation,
                "area": round(_polygon_area(pair["partner"]), 1),
                "iscrowd": 0,
            }
        )
    return objects


def partner_distance(annotation: dict) -> float:
    """Distance (px) between the box centres of a target annotation and its partner."""
    (x, y, w, h), (px, py, pw, ph) = annotation["bbox"], annotation["partner"]["bbox"]
    return math.hypot(x + w / 2 - px - pw / 2, y + h / 2 - py - ph / 2)


def is_target(annotation: dict) -> bool:
    """Whether an annotation is a target (it names its partner), not a cue object."""
    return "partner" in annotation


SPLITS: Dict[Tuple[str, str], ContextSpec] = {
    # Training images are drawn on the fly: more than any CPU schedule here consumes, none twice.
    ("pair", "train"): ContextSpec("pair", num_images=20_000, seed=20261203),
    ("bind", "train"): ContextSpec("bind", num_images=20_000, seed=20261203),
    ("pair", "val"): ContextSpec("pair", num_images=512, seed=20261204),
    ("bind", "val"): ContextSpec("bind", num_images=512, seed=20261204),
}
