"""A deterministic, generated COCO-format dataset ("nl_shapes") for CPU-sized detection tests.

Each image shows a few non-overlapping objects on a textured background with clutter lines:
four shape classes (ellipse, triangle, rectangle, star) with random size, rotation and colour,
and a stick-figure ``person`` whose 13 joints are annotated as COCO keypoints. Every object has a
box, a polygon mask (the exact polygons that were painted) and, for persons, keypoints with
names, a flip map, OKS sigmas and a skeleton. Class is carried by shape, never by colour, so an
untrained model scores near zero.

Coordinates follow detectron2's convention: pixel ``i`` covers ``[i, i + 1)``. Boxes and
polygons are stored in it; keypoints are stored in COCO's pixel-index convention (0.5 less),
which ``load_coco_json`` shifts back by +0.5.
"""

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from .generated import ensure_generated, resolve_spec, write_coco_split

# Bumped whenever the drawing changes, so that a stale cache is never reused.
GENERATOR_VERSION = 1

SHAPE_CLASSES = ("ellipse", "triangle", "rectangle", "star")
PERSON_CLASS = "person"
# Category ids start at 1 like COCO's; the person comes first so its id is 1.
CATEGORY_NAMES = (PERSON_CLASS,) + SHAPE_CLASSES

# fmt: off
KEYPOINT_NAMES = (
    "head",
    "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
    "left_hip", "right_hip",
    "left_knee", "right_knee",
    "left_ankle", "right_ankle",
)
# fmt: on
KEYPOINT_FLIP_MAP = tuple(
    (name, "right_" + name[len("left_") :]) for name in KEYPOINT_NAMES if name.startswith("left_")
)
# OKS sigmas: COCO's values for the same joints; the head centre is a precise point like COCO's
# nose (0.026) but on a larger part, so it gets a value between the nose and the shoulders.
KEYPOINT_OKS_SIGMAS = (
    0.05,
    0.079, 0.079,
    0.072, 0.072,
    0.062, 0.062,
    0.107, 0.107,
    0.087, 0.087,
    0.089, 0.089,
)  # fmt: skip
# (keypoint a, keypoint b, RGB colour) as detectron2's Visualizer expects.
KEYPOINT_CONNECTION_RULES = (
    ("head", "left_shoulder", (102, 204, 255)),
    ("head", "right_shoulder", (51, 153, 255)),
    ("left_shoulder", "right_shoulder", (255, 128, 0)),
    ("left_shoulder", "left_elbow", (153, 255, 204)),
    ("right_shoulder", "right_elbow", (128, 229, 255)),
    ("left_elbow", "left_wrist", (153, 255, 153)),
    ("right_elbow", "right_wrist", (102, 255, 224)),
    ("left_shoulder", "left_hip", (255, 153, 51)),
    ("right_shoulder", "right_hip", (255, 178, 102)),
    ("left_hip", "right_hip", (255, 102, 0)),
    ("left_hip", "left_knee", (255, 255, 77)),
    ("right_hip", "right_knee", (153, 255, 204)),
    ("left_knee", "left_ankle", (191, 255, 128)),
    ("right_knee", "right_ankle", (255, 195, 77)),
)


@dataclass(frozen=True)
class SplitSpec:
    """How one split is drawn: ``num_images`` square images of ``image_size`` px from ``seed``."""

    num_images: int
    seed: int
    image_size: int = 160


# Train and val differ only by seed, so val measures generalisation to new layouts.
SPLITS: Dict[str, SplitSpec] = {
    "train": SplitSpec(num_images=256, seed=20180618),
    "val": SplitSpec(num_images=64, seed=20200823),
}


def categories() -> List[dict]:
    """The COCO ``categories`` list; the person entry carries keypoint names and the skeleton."""
    index = {name: i + 1 for i, name in enumerate(KEYPOINT_NAMES)}
    cats = []
    for i, name in enumerate(CATEGORY_NAMES):
        cat = {"id": i + 1, "name": name, "supercategory": "figure" if i == 0 else "shape"}
        if name == PERSON_CLASS:
            cat["keypoints"] = list(KEYPOINT_NAMES)
            cat["skeleton"] = [[index[a], index[b]] for a, b, _ in KEYPOINT_CONNECTION_RULES]
        cats.append(cat)
    return cats


def _rotate(points: np.ndarray, angle: float, center: np.ndarray) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return (points - center) @ rot.T + center


def _regular_polygon(radii: np.ndarray, phase: float) -> np.ndarray:
    """Vertices at equal angular steps, one per radius; [len(radii), 2] around the origin."""
    t = phase + 2 * math.pi * np.arange(len(radii)) / len(radii)
    return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)


def _shape_polygons(name: str, size: float, rng: np.random.Generator) -> List[np.ndarray]:
    """One polygon [V, 2] centred on the origin, ``size`` px across before rotation."""
    r = size / 2
    if name == "ellipse":
        t = 2 * math.pi * np.arange(24) / 24
        poly = np.stack([r * np.cos(t), r * rng.uniform(0.55, 1.0) * np.sin(t)], axis=1)
    elif name == "triangle":
        poly = _regular_polygon(r * rng.uniform(0.8, 1.0, size=3), -math.pi / 2)
    elif name == "rectangle":
        h = rng.uniform(0.45, 1.0)
        poly = r * np.array([[-1, -h], [1, -h], [1, h], [-1, h]], dtype=np.float64)
    elif name == "star":
        poly = _regular_polygon(r * np.tile([1.0, 0.45], 5), -math.pi / 2)
    else:
        raise ValueError(f"Unknown shape {name!r}; expected one of {SHAPE_CLASSES}.")
    return [_rotate(poly, rng.uniform(0, 2 * math.pi), np.zeros(2))]


def _limb(p: np.ndarray, q: np.ndarray, width: float) -> np.ndarray:
    """The quad [4, 2] of a segment p->q thickened to ``width`` (plus half a width at each end)."""
    d = (q - p) / max(np.linalg.norm(q - p), 1e-6)
    n = np.array([-d[1], d[0]]) * width / 2
    p, q = p - d * width / 2, q + d * width / 2
    return np.stack([p + n, q + n, q - n, p - n])


def _person(height: float, rng: np.random.Generator) -> Tuple[List[np.ndarray], np.ndarray]:
    """A front-facing stick figure about ``height`` px tall, centred near the origin.

    Returns its polygons (head, torso, 8 limb segments) and keypoints [13, 2] in KEYPOINT_NAMES
    order. The person's left side is on the image's right, as in COCO.
    """
    h = height
    head_r = 0.09 * h
    head = np.array([0.0, -0.5 * h + head_r])
    sh_y, hip_y = head[1] + head_r + 0.05 * h, head[1] + head_r + 0.37 * h
    sh_dx, hip_dx = 0.13 * h, 0.08 * h
    kp = {
        "head": head,
        "left_shoulder": np.array([sh_dx, sh_y]),
        "right_shoulder": np.array([-sh_dx, sh_y]),
        "left_hip": np.array([hip_dx, hip_y]),
        "right_hip": np.array([-hip_dx, hip_y]),
    }
    for side, sign in (("left", 1.0), ("right", -1.0)):
        # Angles are measured from straight down, positive away from the body.
        upper = rng.uniform(0.15, 2.6)
        lower = upper + rng.uniform(-0.9, 0.9)
        elbow = kp[f"{side}_shoulder"] + 0.17 * h * np.array(
            [sign * math.sin(upper), math.cos(upper)]
        )
        kp[f"{side}_elbow"] = elbow
        kp[f"{side}_wrist"] = elbow + 0.15 * h * np.array([sign * math.sin(lower), math.cos(lower)])
        thigh = rng.uniform(0.0, 0.5)
        shin = thigh + rng.uniform(-0.35, 0.35)
        knee = kp[f"{side}_hip"] + 0.21 * h * np.array([sign * math.sin(thigh), math.cos(thigh)])
        kp[f"{side}_knee"] = knee
        kp[f"{side}_ankle"] = knee + 0.2 * h * np.array([sign * math.sin(shin), math.cos(shin)])
    keypoints = np.stack([kp[name] for name in KEYPOINT_NAMES])
    keypoints = _rotate(keypoints, rng.uniform(-0.3, 0.3), np.zeros(2))
    kp = dict(zip(KEYPOINT_NAMES, keypoints))

    arm_w, leg_w = 0.06 * h, 0.08 * h
    torso = np.stack([kp["left_shoulder"], kp["right_shoulder"], kp["right_hip"], kp["left_hip"]])
    polygons = [kp["head"] + _regular_polygon(np.full(16, head_r), 0.0), torso]
    for side in ("left", "right"):
        for a, b, w in (
            ("shoulder", "elbow", arm_w),
            ("elbow", "wrist", arm_w),
            ("hip", "knee", leg_w),
            ("knee", "ankle", leg_w),
        ):
            polygons.append(_limb(kp[f"{side}_{a}"], kp[f"{side}_{b}"], w))
    return polygons, keypoints


def _background(size: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A textured float32 [size, size, 3] background (0-255, not yet clipped); its base colour."""
    base = rng.uniform(50, 205, size=3)
    # Low-frequency blotches: a coarse random grid upsampled smoothly.
    grid = rng.normal(0, 25, size=(6, 6, 3)).astype(np.float32)
    blotch = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    # Oriented stripes give the texture edges that are not object boundaries.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
    stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    stripes = stripes[..., None] * rng.uniform(5, 20, size=3).astype(np.float32)
    img = base.astype(np.float32) + blotch + stripes
    return img, base


def _fill(canvas: np.ndarray, polygons: List[np.ndarray], value) -> None:
    # cv2 puts vertex v at the centre of pixel v, i.e. at v + 0.5 in our convention;
    # 4 fractional bits keep sub-pixel vertices. One call per polygon: a single fillPoly over
    # several polygons applies an even-odd rule and would punch holes where limbs overlap,
    # whereas a COCO mask is their union.
    for p in polygons:
        pts = np.round((p - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(canvas, [pts], value, lineType=cv2.LINE_8, shift=4)


def _contrasting_colour(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    while True:
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - base) > 110:
            return colour


def _boxes_overlap(a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    return not (
        a[2] + margin <= b[0]
        or b[2] + margin <= a[0]
        or a[3] + margin <= b[1]
        or b[3] + margin <= a[1]
    )


def draw_image(
    rng: np.random.Generator, size: int, max_tries: int = 30
) -> Tuple[np.ndarray, List[dict]]:
    """Draws one image.

    Returns:
        image: uint8 [size, size, 3] (BGR order, as cv2 writes it; colours are random anyway).
        objects: dicts with ``category`` (name), ``polygons`` (list of [V, 2], absolute, our
        convention), ``keypoints`` ([13, 2] or None), ``mask`` (bool [size, size]).
    """
    img, base = _background(size, rng)
    for _ in range(rng.integers(0, 4)):
        p, q = rng.uniform(0, size, size=(2, 2))
        colour = _contrasting_colour(base, rng)
        cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), colour.tolist(), 1)

    names = [PERSON_CLASS] if rng.random() < 0.75 else []
    names += [SHAPE_CLASSES[i] for i in rng.integers(0, len(SHAPE_CLASSES), rng.integers(1, 4))]
    objects, boxes = [], []
    for name in names:
        if name == PERSON_CLASS:
            polygons, keypoints = _person(rng.uniform(0.35, 0.75) * size, rng)
        else:
            polygons, keypoints = _shape_polygons(name, rng.uniform(0.12, 0.4) * size, rng), None
        points = np.concatenate(polygons)
        lo, hi = points.min(0), points.max(0)
        for _ in range(max_tries):
            # Keep one pixel of margin so no object touches the border (masks stay whole).
            shift = rng.uniform(1 - lo, size - 1 - hi)
            box = np.concatenate([lo + shift, hi + shift])
            if not any(_boxes_overlap(box, b, margin=2.0) for b in boxes):
                break
        else:
            continue  # no free place for it: the image simply has one object fewer
        polygons = [np.round(p + shift, 2) for p in polygons]
        mask = np.zeros((size, size), dtype=np.uint8)
        _fill(mask, polygons, 1)
        img[mask > 0] = _contrasting_colour(base, rng)
        boxes.append(box)
        objects.append(
            {
                "category": name,
                "polygons": polygons,
                "keypoints": None if keypoints is None else np.round(keypoints + shift, 2),
                "mask": mask.astype(bool),
            }
        )
    # Mild sensor noise so flat regions are not perfectly flat.
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def _annotation(obj: dict, ann_id: int, image_id: int) -> dict:
    points = np.concatenate(obj["polygons"])
    x0, y0 = points.min(0)
    x1, y1 = points.max(0)
    num_kp = len(KEYPOINT_NAMES)
    if obj["keypoints"] is None:
        # Every annotation carries keypoints (all unlabelled here): detectron2 and COCOeval read
        # the keypoint count from the first annotation, whatever its class.
        keypoints, num_labelled = [0] * (3 * num_kp), 0
    else:
        # COCO stores keypoints at pixel indices: half a pixel less than our convention.
        kp = obj["keypoints"] - 0.5
        keypoints = [round(float(v), 2) for xy in kp for v in (*xy, 2)]
        keypoints[2::3] = [2] * num_kp
        num_labelled = num_kp
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORY_NAMES.index(obj["category"]) + 1,
        "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
        "area": int(obj["mask"].sum()),
        "iscrowd": 0,
        "segmentation": [[round(float(v), 2) for v in p.reshape(-1)] for p in obj["polygons"]],
        "keypoints": keypoints,
        "num_keypoints": num_labelled,
    }


def generate_split(out_dir: str, spec: SplitSpec) -> dict:
    """Writes ``spec.num_images`` PNGs to ``out_dir/images`` and returns the COCO dict."""
    info = {
        "description": "nl_shapes: generated shapes and stick-figure persons",
        "version": str(GENERATOR_VERSION),
    }
    return write_coco_split(out_dir, spec, draw_image, _annotation, info, categories())


def split_dir(root: str, split: str) -> str:
    """Where ``split`` lives under the dataset root (the version keeps stale caches apart)."""
    return os.path.join(root, f"nl_shapes_v{GENERATOR_VERSION}", split)


def ensure_split(root: str, split: str, spec: Optional[SplitSpec] = None) -> Tuple[str, str]:
    """Generates ``split`` under ``root`` unless present; returns (json_file, image_root).

    Safe when several processes (e.g. DDP ranks) call it at once: each draws into a private
    temporary folder and the first to rename it into place wins.
    """
    spec = resolve_spec("nl_shapes", split, spec, SPLITS)
    return ensure_generated(
        split_dir(root, split),
        lambda folder: generate_split(folder, spec),
        f"nl_shapes/{split} ({spec.num_images} images)",
    )
