"""The machinery shared by the generated datasets: drawing a split into COCO files, once, into its
cache folder, safely under concurrent callers."""

import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np

logger = logging.getLogger(__name__)


def ensure_generated(final: str, generate: Callable[[str], dict], what: str) -> Tuple[str, str]:
    """Runs ``generate(folder)`` (it writes ``folder/images`` and returns the COCO dict) unless
    ``final/instances.json`` exists; returns (json_file, image_root) under ``final``.

    Safe when several processes (e.g. DDP ranks) call it at once: each draws into a private
    temporary folder beside ``final`` and the first to rename it into place wins.
    """
    json_file = os.path.join(final, "instances.json")
    image_root = os.path.join(final, "images")
    if os.path.isfile(json_file):
        return json_file, image_root

    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}-", dir=parent)
    try:
        logger.info(f"Generating {what} in {final} ...")
        coco = generate(tmp)
        with open(os.path.join(tmp, "instances.json"), "w") as f:
            json.dump(coco, f)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first; its copy is identical.
            if not os.path.isfile(json_file):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return json_file, image_root


def resolve_spec(dataset: str, split: str, spec, splits: Dict[str, object]):
    """``spec`` if given, else the registered spec of ``split`` (an error names the known ones)."""
    if spec is not None:
        return spec
    if split not in splits:
        raise ValueError(f"Unknown {dataset} split {split!r}; expected one of {sorted(splits)}.")
    return splits[split]


def write_coco_split(
    out_dir: str,
    spec,
    draw_image: Callable[[np.random.Generator, int], Tuple[np.ndarray, List[dict]]],
    annotation: Callable[[dict, int, int], dict],
    info: dict,
    categories: List[dict],
) -> dict:
    """Draws ``spec.num_images`` square images of ``spec.image_size`` px from ``spec.seed`` with
    ``draw_image(rng, size) -> (image, objects)``, writes them as PNGs to ``out_dir/images`` and
    returns the COCO dict (``annotation(object, ann_id, image_id)`` per object, ``info`` plus the
    seed)."""
    rng = np.random.default_rng(spec.seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, spec.num_images + 1):
        img, objects = draw_image(rng, spec.image_size)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(os.path.join(out_dir, "images", file_name), img)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": spec.image_size,
                "height": spec.image_size,
            }
        )
        for obj in objects:
            annotations.append(annotation(obj, len(annotations) + 1, image_id))
    return {
        "info": dict(info, seed=spec.seed),
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
