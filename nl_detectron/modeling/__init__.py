"""Detectron2 modeling parts with context blocks; importing this registers them."""

from .backbone import (
    add_nonlocal_blocks,
    build_nonlocal_backbone,
    build_resnet_nl_backbone,
    build_resnet_nl_fpn_backbone,
    find_resnet,
    insert_nonlocal_blocks,
    splice_nonlocal_blocks,
)
from .build import NonLocalSettings, build_nonlocal_block, check_nonlocal_config
from .keypoint_head import NonLocalKRCNNConvDeconvUpsampleHead
from .splice import StageContextUnit, insert_before, insert_stage_units

__all__ = [
    "NonLocalKRCNNConvDeconvUpsampleHead",
    "NonLocalSettings",
    "StageContextUnit",
    "add_nonlocal_blocks",
    "build_nonlocal_backbone",
    "build_nonlocal_block",
    "build_resnet_nl_backbone",
    "build_resnet_nl_fpn_backbone",
    "check_nonlocal_config",
    "find_resnet",
    "insert_before",
    "insert_nonlocal_blocks",
    "insert_stage_units",
    "splice_nonlocal_blocks",
]
