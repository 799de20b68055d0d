"""Detectron2 modeling parts with context blocks; importing this registers them."""

from .backbone import add_nonlocal_blocks, build_resnet_nl_backbone, build_resnet_nl_fpn_backbone
from .build import build_nonlocal_block, check_nonlocal_config
from .keypoint_head import NonLocalKRCNNConvDeconvUpsampleHead
from .splice import StageContextUnit, insert_before, insert_stage_units

__all__ = [
    "NonLocalKRCNNConvDeconvUpsampleHead",
    "StageContextUnit",
    "add_nonlocal_blocks",
    "build_nonlocal_block",
    "build_resnet_nl_backbone",
    "build_resnet_nl_fpn_backbone",
    "check_nonlocal_config",
    "insert_before",
    "insert_stage_units",
]
