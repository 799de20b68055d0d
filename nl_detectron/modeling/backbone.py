# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
"""
ResNet backbones with context blocks: detectron2's stock builders, then blocks spliced into stages.

The stock model is built first, so every stock parameter keeps its name and a stock (or Caffe2
ImageNet) checkpoint loads with only the new blocks missing.
"""

import logging

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet, build_resnet_backbone
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

from .build import build_nonlocal_block, check_nonlocal_config, resolve_stage_positions
from .splice import insert_stage_units, stage_unit_names

__all__ = ["add_nonlocal_blocks", "build_resnet_nl_backbone", "build_resnet_nl_fpn_backbone"]

logger = logging.getLogger(__name__)


def add_nonlocal_blocks(resnet: ResNet, cfg) -> ResNet:
    """
    Insert the blocks of ``cfg.MODEL.NONLOCAL`` into ``resnet`` (in place) and return it.

    A block placed at position ``k`` of stage ``resN`` becomes the child ``resN.nonlocal{k}`` and
    runs right before residual unit ``k``.
    """
    check_nonlocal_config(cfg)
    num_units = {name: len(stage_unit_names(getattr(resnet, name))) for name in resnet.stage_names}
    placement = resolve_stage_positions(cfg, num_units, cfg.MODEL.BACKBONE.FREEZE_AT)
    inserted = insert_stage_units(
        resnet,
        placement,
        lambda stage, channels: build_nonlocal_block(cfg, channels, where=stage),
    )
    if inserted:
        logger.info(
            "Inserted %d '%s' context block(s) into the ResNet: %s",
            len(inserted),
            cfg.MODEL.NONLOCAL.TYPE,
            ", ".join(inserted),
        )
    return resnet


@BACKBONE_REGISTRY.register()
def build_resnet_nl_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """
    detectron2's ``build_resnet_backbone`` (C4, DC5, plain ResNet) with context blocks.

    Returns:
        ResNet: the stock ResNet, with blocks placed by ``cfg.MODEL.NONLOCAL``.
    """
    check_nonlocal_config(cfg)
    return add_nonlocal_blocks(build_resnet_backbone(cfg, input_shape), cfg)


@BACKBONE_REGISTRY.register()
def build_resnet_nl_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """
    detectron2's ``build_resnet_fpn_backbone`` with context blocks in its bottom-up ResNet.

    Returns:
        FPN: the stock FPN whose ``bottom_up`` has blocks placed by ``cfg.MODEL.NONLOCAL``.
    """
    check_nonlocal_config(cfg)
    fpn = build_resnet_fpn_backbone(cfg, input_shape)
    add_nonlocal_blocks(fpn.bottom_up, cfg)
    return fpn
