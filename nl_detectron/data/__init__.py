"""Built-in datasets: the generated ``nl_shapes`` and ``nl_context`` splits and, when present,
``coco_person_mini``.

Importing this package registers them (cheap: nothing is read or generated until first load).
"""

from .builtin import (
    COCO_PERSON_MINI,
    COCO_PERSON_OKS_SIGMAS,
    CONTEXT_DATASETS,
    GENERATED_DATASETS,
    SHAPES_DATASETS,
    coco_person_metadata,
    context_metadata,
    default_root,
    find_coco_person_mini,
    missing_datasets,
    prepare_datasets,
    register_builtin_datasets,
    shapes_metadata,
)
from .shapes import SPLITS, SplitSpec, ensure_split, generate_split

__all__ = [
    "COCO_PERSON_MINI",
    "CONTEXT_DATASETS",
    "GENERATED_DATASETS",
    "COCO_PERSON_OKS_SIGMAS",
    "SHAPES_DATASETS",
    "SPLITS",
    "SplitSpec",
    "coco_person_metadata",
    "context_metadata",
    "default_root",
    "ensure_split",
    "find_coco_person_mini",
    "generate_split",
    "missing_datasets",
    "prepare_datasets",
    "register_builtin_datasets",
    "shapes_metadata",
]

register_builtin_datasets()
