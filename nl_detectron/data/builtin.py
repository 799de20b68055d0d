"""Registers nl_detectron's built-in datasets with detectron2's catalogs.

- ``nl_shapes_train`` / ``nl_shapes_val``: the generated dataset of :mod:`.shapes`, drawn on first
  load into ``<root>/nl_shapes_v<version>/``.
- ``nl_context_{pair,bind}_{train,val}``: the long-range ladder of :mod:`.context` (a target's
  category is the cue of a distant partner); training images are drawn on the fly
  (:mod:`.context_source`), val splits are written on first load into
  ``<root>/nl_context_v<version>/``.
- ``coco_person_mini``: four real COCO val2017 photos with person boxes, masks and 17 keypoints,
  registered only when its folder exists (``<root>/coco_person_mini`` or the ``shared/data``
  folder beside the repository).

``root`` is, in order: the argument, ``$DETECTRON2_DATASETS``, the repository's ``datasets/``.
Registration is cheap (no file is read or written); loading a dataset generates it if needed.
"""

import logging
import os
from typing import Iterable, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
)

from . import context, context_source, shapes

logger = logging.getLogger(__name__)

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES_DATASETS = {"nl_shapes_train": "train", "nl_shapes_val": "val"}
# name -> (rung, split)
CONTEXT_DATASETS = {
    f"nl_context_{rung}_{split}": (rung, split)
    for rung in context.RUNGS
    for split in ("train", "val")
}
# Datasets drawn on first load (or on the fly): never missing.
GENERATED_DATASETS = tuple(SHAPES_DATASETS) + tuple(CONTEXT_DATASETS)
COCO_PERSON_MINI = "coco_person_mini"
# The COCO person keypoint sigmas (from the COCO keypoint evaluation), for TEST.KEYPOINT_OKS_SIGMAS.
COCO_PERSON_OKS_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip


def default_root() -> str:
    """``$DETECTRON2_DATASETS`` when set (as detectron2's builtins), else ``<repo>/datasets``."""
    env = os.environ.get("DETECTRON2_DATASETS")
    return os.path.expanduser(env) if env else os.path.join(_REPO_ROOT, "datasets")


def shapes_metadata() -> dict:
    """Metadata of the nl_shapes splits (classes in category-id order, keypoint layout)."""
    return {
        "thing_classes": list(shapes.CATEGORY_NAMES),
        "keypoint_names": shapes.KEYPOINT_NAMES,
        "keypoint_flip_map": shapes.KEYPOINT_FLIP_MAP,
        "keypoint_connection_rules": list(shapes.KEYPOINT_CONNECTION_RULES),
        "keypoint_oks_sigmas": list(shapes.KEYPOINT_OKS_SIGMAS),
    }


def coco_person_metadata() -> dict:
    """COCO person-keypoint metadata, as detectron2's ``keypoints_coco_*`` datasets have it."""
    return {
        "thing_classes": ["person"],
        "keypoint_names": COCO_PERSON_KEYPOINT_NAMES,
        "keypoint_flip_map": COCO_PERSON_KEYPOINT_FLIP_MAP,
        "keypoint_connection_rules": KEYPOINT_CONNECTION_RULES,
        "keypoint_oks_sigmas": list(COCO_PERSON_OKS_SIGMAS),
    }


def _unregister(name: str) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def context_metadata() -> dict:
    """Metadata of the nl_context splits: classes in category-id order (the two target
    categories, then the two cue categories), which of them are targets, the cues."""
    return {
        "thing_classes": list(context.CATEGORY_NAMES),
        "target_classes": list(context.TARGET_CATEGORIES),
        "cues": list(context.CUES),
    }


def _load_shapes(root: str, split: str, name: str) -> List[dict]:
    json_file, image_root = shapes.ensure_split(root, split)
    return load_coco_json(json_file, image_root, name)


def _load_context(root: str, rung: str, split: str, name: str) -> List[dict]:
    if split == "train":
        return context_source.generated_records(context.SPLITS[(rung, split)])
    json_file, image_root = context_source.ensure_written(root, rung, split)
    # Each target's partner is stored beside the COCO fields.
    extra = list(context.EXTRA_ANNOTATION_KEYS)
    return load_coco_json(json_file, image_root, name, extra_annotation_keys=extra)


def _register_generated(name: str, root: str) -> None:
    # register_coco_instances would read the json at load time without creating it first; this
    # registers the same loader and metadata behind a generate-if-missing step.
    if name in SHAPES_DATASETS:
        split = SHAPES_DATASETS[name]
        folder = shapes.split_dir(root, split)
        DatasetCatalog.register(name, lambda: _load_shapes(root, split, name))
        metadata = shapes_metadata()
    else:
        rung, split = CONTEXT_DATASETS[name]
        folder = context_source.split_dir(root, rung, split)
        DatasetCatalog.register(name, lambda: _load_context(root, rung, split, name))
        metadata = context_metadata()
        if split == "train":  # drawn on the fly: no files (COCO evaluation converts the dicts)
            MetadataCatalog.get(name).set(evaluator_type="coco", **metadata)
            return
    MetadataCatalog.get(name).set(
        json_file=os.path.join(folder, "instances.json"),
        image_root=os.path.join(folder, "images"),
        evaluator_type="coco",
        **metadata,
    )


def find_coco_person_mini(root: str) -> Optional[str]:
    """The coco_person_mini folder (with ``test_coco.json``) under ``root`` or beside the repo."""
    for candidate in (
        os.path.join(root, COCO_PERSON_MINI),
        os.path.join(_REPO_ROOT, "..", "shared", "data", COCO_PERSON_MINI),
    ):
        if os.path.isfile(os.path.join(candidate, "test_coco.json")):
            return os.path.abspath(candidate)
    return None


def register_builtin_datasets(root: Optional[str] = None) -> List[str]:
    """Registers (or re-registers under a new ``root``) the built-in datasets.

    Returns:
        the names registered.
    """
    root = os.path.abspath(root if root is not None else default_root())
    context_source.register_handler()
    names = []
    for name in GENERATED_DATASETS:
        _unregister(name)
        _register_generated(name, root)
        names.append(name)

    _unregister(COCO_PERSON_MINI)
    mini = find_coco_person_mini(root)
    if mini is not None:
        register_coco_instances(
            COCO_PERSON_MINI, coco_person_metadata(), os.path.join(mini, "test_coco.json"), mini
        )
        names.append(COCO_PERSON_MINI)
    return names


def prepare_datasets(names: Iterable[str]) -> None:
    """Generates the files of any built-in generated dataset in ``names`` (others are ignored).

    Needed before building an evaluator without a data loader: it reads ``json_file`` at once.
    """
    for name in names:
        if name in GENERATED_DATASETS:
            DatasetCatalog.get(name)


def missing_datasets(names: Iterable[str]) -> List[str]:
    """Messages for datasets in ``names`` whose annotation file or image folder does not exist.

    Generated datasets never count as missing (they are drawn on first use); datasets registered
    without a ``json_file`` (e.g. custom loaders) are not checked.
    """
    problems = []
    for name in names:
        if name in GENERATED_DATASETS:
            continue
        if name not in DatasetCatalog.list():
            problems.append(f"{name}: not a registered dataset")
            continue
        meta = MetadataCatalog.get(name)
        for key in ("json_file", "image_root"):
            path = getattr(meta, key, None)
            if path is not None and not os.path.exists(path):
                problems.append(f"{name}: {key} {path} does not exist")
    return problems
