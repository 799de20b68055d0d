"""How ``nl_context`` splits reach detectron2: training images drawn on the fly, val on disk.

A training split is a list of detectron2 dataset dicts whose ``file_name`` is a URI such as
``nlcontext://bind/100000/20261203/128/41.png``: rung, split size, seed, image size and index.
:class:`ContextImageHandler`, registered with detectron2's ``PathManager``, draws that image when
``detection_utils.read_image`` opens it, so the stock ``DatasetMapper`` and data loaders work
unchanged, no image is stored, and a split of any size costs only its annotations (computed from
the layout, without drawing pixels). Validation splits are written once as COCO json and PNGs,
as COCO evaluation expects a file.
"""

import io
import os
import re
from typing import List, Optional, Tuple

import cv2
import numpy as np
from iopath.common.file_io import PathHandler

from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from . import context
from .generated import ensure_generated

PREFIX = "nlcontext://"
_URI = re.compile(
    r"^nlcontext://(?P<rung>[a-z]+)/(?P<num>\d+)/(?P<seed>\d+)/(?P<size>\d+)/(?P<index>\d+)\.png$"
)


def image_uri(spec: context.ContextSpec, index: int) -> str:
    """The URI of image ``index`` of ``spec``."""
    return f"{PREFIX}{spec.rung}/{spec.num_images}/{spec.seed}/{spec.image_size}/{index}.png"


def parse_uri(uri: str) -> Tuple[context.ContextSpec, int]:
    """(spec, index) of an :func:`image_uri`; a ValueError names a malformed one."""
    match = _URI.match(uri)
    if match is None:
        raise ValueError(
            f"{uri!r} is not an nl_context image URI; expected "
            f"{PREFIX}<rung>/<num_images>/<seed>/<image_size>/<index>.png"
        )
    spec = context.ContextSpec(
        match["rung"], int(match["num"]), int(match["seed"]), int(match["size"])
    )
    return spec, int(match["index"])


def encode_png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 HWC image
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


class ContextImageHandler(PathHandler):
    """Opens ``nlcontext://`` URIs: the image is drawn from its spec and index, as a PNG."""

    def _get_supported_prefixes(self) -> List[str]:
        return [PREFIX]

    def _open(self, path: str, mode: str = "rb", buffering: int = -1, **kwargs):
        self._check_kwargs(kwargs)
        if mode not in ("rb", "r"):
            raise ValueError(f"{path}: nl_context images are read-only; got mode {mode!r}")
        spec, index = parse_uri(path)
        data = encode_png(context.draw_image(spec, index)[0])
        return io.BytesIO(data) if mode == "rb" else io.StringIO(data.decode("latin-1"))

    def _exists(self, path: str, **kwargs) -> bool:
        try:
            spec, index = parse_uri(path)
        except ValueError:
            return False
        return 0 <= index < spec.num_images

    def _isfile(self, path: str, **kwargs) -> bool:
        return self._exists(path, **kwargs)


def register_handler() -> None:
    """Registers :class:`ContextImageHandler` with detectron2's PathManager (once)."""
    try:
        PathManager.register_handler(ContextImageHandler())
    except (KeyError, AssertionError, ValueError):
        pass  # already registered (iopath refuses a second handler for a prefix)


def _dataset_annotations(objects: List[dict]) -> List[dict]:
    """COCO objects -> detectron2's annotation dicts (0-based category ids, XYWH_ABS boxes)."""
    out = []
    for obj in objects:
        ann = {k: v for k, v in obj.items() if k not in ("category_id", "area")}
        ann["category_id"] = obj["category_id"] - 1
        ann["bbox_mode"] = BoxMode.XYWH_ABS
        out.append(ann)
    return out


def generated_records(spec: context.ContextSpec) -> List[dict]:
    """detectron2 dataset dicts of every image of ``spec``, each opened through its URI."""
    records = []
    for index in range(spec.num_images):
        pairs = context.layout(spec, spec.rng(index))
        records.append(
            {
                "file_name": image_uri(spec, index),
                "image_id": index + 1,
                "height": spec.image_size,
                "width": spec.image_size,
                "annotations": _dataset_annotations(context.annotations(pairs)),
            }
        )
    return records


def write_coco_split(out_dir: str, spec: context.ContextSpec) -> dict:
    """Writes the images of ``spec`` as PNGs to ``out_dir/images``; returns the COCO dict."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    images, annotations = [], []
    for index in range(spec.num_images):
        image, pairs = context.draw_image(spec, index)
        file_name = f"{index:06d}.png"
        cv2.imwrite(os.path.join(out_dir, "images", file_name), image)
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": spec.image_size,
                "height": spec.image_size,
            }
        )
        for obj in context.annotations(pairs):
            annotations.append(dict(obj, id=len(annotations) + 1, image_id=image_id))
    info = {
        "description": f"nl_context, rung {spec.rung!r}: a target's category is the cue of the "
        "distant partner of its hue",
        "version": str(context.GENERATOR_VERSION),
        "seed": spec.seed,
    }
    return {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": context.categories(),
    }


def split_dir(root: str, rung: str, split: str) -> str:
    """Where a written split lives under the dataset root (the version keeps stale caches apart)."""
    return os.path.join(root, f"nl_context_v{context.GENERATOR_VERSION}", f"{rung}_{split}")


def ensure_written(
    root: str, rung: str, split: str, spec: Optional[context.ContextSpec] = None
) -> Tuple[str, str]:
    """Writes the split unless present; returns (json_file, image_root)."""
    spec = spec or context.SPLITS[(rung, split)]
    return ensure_generated(
        split_dir(root, rung, split),
        lambda folder: write_coco_split(folder, spec),
        f"nl_context {rung}/{split} ({spec.num_images} images)",
    )
