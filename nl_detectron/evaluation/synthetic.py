"""Random COCO-format ground truth and detections, for testing and benchmarking COCO evaluation.

Objects are ellipse-shaped polygons in random boxes whose sizes are log-uniform, so all three COCO
area ranges (small < 32^2 <= medium < 96^2 <= large) are populated. Detections are jittered copies
of ground-truth objects (sometimes with a wrong class) plus random false positives, each with a box,
an RLE mask and, when the ground truth has keypoints, perturbed keypoints.
"""

import math
from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["synthetic_coco"]

_VERTICES = 12  # polygon vertices per object outline


def _ellipse_polygons(boxes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Jagged ellipses inscribed in XYWH ``boxes`` [N, 4] -> flat polygons [N, 2 * _VERTICES]."""
    angles = np.linspace(0, 2 * math.pi, _VERTICES, endpoint=False)
    radius = rng.uniform(0.75, 1.0, size=(len(boxes), _VERTICES))  # uneven outline
    cx = boxes[:, :1] + boxes[:, 2:3] / 2
    cy = boxes[:, 1:2] + boxes[:, 3:4] / 2
    xs = cx + radius * np.cos(angles) * boxes[:, 2:3] / 2
    ys = cy + radius * np.sin(angles) * boxes[:, 3:4] / 2
    return np.stack([xs, ys], axis=2).reshape(len(boxes), 2 * _VERTICES)


def _random_boxes(n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 4] XYWH boxes inside the image; sqrt(area) log-uniform in [6, 0.8 * min side]."""
    side = np.exp(rng.uniform(math.log(6), math.log(0.8 * min(height, width)), size=n))
    aspect = np.exp(rng.uniform(math.log(0.5), math.log(2.0), size=n))
    w = np.minimum(side * np.sqrt(aspect), width - 1)
    h = np.minimum(side / np.sqrt(aspect), height - 1)
    x = rng.uniform(0, width - w)
    y = rng.uniform(0, height - h)
    return np.stack([x, y, w, h], axis=1)


def _jitter(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Shift boxes by ~10% of their size and rescale by ~10%; clip to the image."""
    w = boxes[:, 2] * np.exp(rng.normal(0, 0.1, len(boxes)))
    h = boxes[:, 3] * np.exp(rng.normal(0, 0.1, len(boxes)))
    x = boxes[:, 0] + rng.normal(0, 0.1, len(boxes)) * boxes[:, 2]
    y = boxes[:, 1] + rng.normal(0, 0.1, len(boxes)) * boxes[:, 3]
    x, y = np.clip(x, 0, width - 2), np.clip(y, 0, height - 2)
    w, h = np.clip(w, 1, width - x), np.clip(h, 1, height - y)
    return np.stack([x, y, w, h], axis=1)


def _rles(polygons: np.ndarray, height: int, width: int) -> List[dict]:
    """Flat polygons [N, 2V] -> compressed RLEs with str counts, as detectron2 writes to json."""
    # A list of flat polygons gives one RLE per polygon.
    rles = mask_util.frPyObjects(polygons.tolist(), height, width)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def _keypoints(boxes: np.ndarray, num_keypoints: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform keypoints [N, K, 2] inside XYWH boxes."""
    u = rng.uniform(0, 1, size=(len(boxes), num_keypoints, 2))
    return boxes[:, None, :2] + u * boxes[:, None, 2:]


def synthetic_coco(
    num_images: int,
    *,
    num_categories: int = 80,
    objects_per_image: float = 7.3,
    dets_per_image: int = 100,
    num_keypoints: int = 0,
    image_size: Tuple[int, int] = (480, 640),
    crowd_fraction: float = 0.01,
    seed: int = 0,
) -> Tuple[Dict, List[Dict]]:
    """Random ground truth (a COCO json dict) and COCO-format results for it.

    The defaults resemble COCO val2017 (5,000 images, 80 classes, 7.3 objects per image, 1% crowd)
    evaluated with detectron2's cap of 100 detections per image.

    Args:
        num_images: number of images; about 5% have no objects.
        num_categories: classes; their dataset ids are 1, 3, 5, ... (not contiguous, as in COCO).
        objects_per_image: mean of the Poisson-distributed number of objects per image.
        dets_per_image: detections per image (true-positive-like ones first, then random ones).
        num_keypoints: if > 0, every object and detection gets that many keypoints (use
            num_categories=1 for COCO-person-like keypoint data); 20% of objects have none labelled.
        image_size: (height, width) of every image.
        crowd_fraction: probability that an object is an ``iscrowd`` region.
        seed: seed of the random generator; equal arguments give equal data.

    Returns:
        (ground truth dict with images/annotations/categories, list of result dicts with
        image_id, category_id, score, bbox, segmentation and, if requested, keypoints).
    """
    for name, value in (("num_images", num_images), ("num_categories", num_categories)):
        if value < 1:
            raise ValueError(f"{name}={value} must be at least 1")
    if dets_per_image < 0 or objects_per_image < 0:
        raise ValueError(
            f"dets_per_image={dets_per_image} and objects_per_image={objects_per_image} "
            "must be non-negative"
        )
    rng = np.random.default_rng(seed)
    height, width = image_size
    cat_ids = np.arange(num_categories) * 2 + 1
    categories = [{"id": int(c), "name": f"class{c}", "supercategory": "thing"} for c in cat_ids]
    if num_keypoints:
        for c in categories:
            c["keypoints"] = [f"kp{i}" for i in range(num_keypoints)]
            c["skeleton"] = []
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append(
            {"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.jpg"}
        )
        n_gt = rng.poisson(objects_per_image) if rng.uniform() > 0.05 else 0
        gt_boxes = _random_boxes(n_gt, height, width, rng)
        gt_cats = rng.choice(cat_ids, size=n_gt)
        gt_polys = _ellipse_polygons(gt_boxes, rng)
        gt_areas = mask_util.area(_rles(gt_polys, height, width)) if n_gt else []
        crowd = rng.uniform(size=n_gt) < crowd_fraction
        if num_keypoints:
            gt_kpts = _keypoints(gt_boxes, num_keypoints, rng)
            # COCO visibility: 0 unlabelled (stored as 0,0,0), 1 occluded, 2 visible.
            vis = rng.choice([0, 1, 2], size=(n_gt, num_keypoints), p=[0.3, 0.1, 0.6])
            vis[rng.uniform(size=n_gt) < 0.2] = 0
            gt_kpts[vis == 0] = 0
        for i in range(n_gt):
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(gt_cats[i]),
                "bbox": [round(float(v), 2) for v in gt_boxes[i]],
                "area": float(gt_areas[i]),
                "segmentation": [[round(float(v), 2) for v in gt_polys[i]]],
                "iscrowd": int(crowd[i]),
            }
            if num_keypoints:
                kpts = np.concatenate([np.round(gt_kpts[i], 2), vis[i, :, None]], axis=1)
                ann["keypoints"] = kpts.ravel().tolist()
                ann["num_keypoints"] = int((vis[i] > 0).sum())
            annotations.append(ann)

        # True-positive-like detections: 1-2 jittered copies of 90% of the objects.
        copies = np.flatnonzero(rng.uniform(size=n_gt) < 0.9)
        copies = np.concatenate([copies, copies[rng.uniform(size=len(copies)) < 0.3]])
        copies = copies[:dets_per_image]
        n_rand = dets_per_image - len(copies)
        boxes = np.concatenate(
            [
                _jitter(gt_boxes[copies], height, width, rng),
                _random_boxes(n_rand, height, width, rng),
            ]
        )
        cats = np.concatenate([gt_cats[copies], rng.choice(cat_ids, size=n_rand)])
        wrong_class = rng.uniform(size=len(copies)) < 0.1
        cats[: len(copies)][wrong_class] = rng.choice(cat_ids, size=int(wrong_class.sum()))
        scores = np.concatenate(
            [rng.uniform(0.3, 1.0, len(copies)), rng.uniform(0.05, 0.6, n_rand)]
        )
        if not len(boxes):
            continue
        masks = _rles(_ellipse_polygons(boxes, rng), height, width)
        if num_keypoints:
            kpts = _keypoints(boxes, num_keypoints, rng)
            near_gt = (
                gt_kpts[copies]
                + rng.normal(0, 0.05, (len(copies), num_keypoints, 2))
                * (np.sqrt(gt_boxes[copies, 2:3] * gt_boxes[copies, 3:4])[:, :, None])
            )
            labelled = (vis[copies] > 0)[:, :, None]
            kpts[: len(copies)] = np.where(labelled, near_gt, kpts[: len(copies)])
            # detectron2 writes the keypoint's score as the third value; COCOeval ignores it.
            kpts = np.concatenate([np.round(kpts, 2), np.ones_like(kpts[:, :, :1])], axis=2)
        for i in range(len(boxes)):
            result = {
                "image_id": image_id,
                "category_id": int(cats[i]),
                "score": round(float(scores[i]), 4),
                "bbox": [round(float(v), 2) for v in boxes[i]],
                "segmentation": masks[i],
            }
            if num_keypoints:
                result["keypoints"] = kpts[i].ravel().tolist()
            results.append(result)
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, results
