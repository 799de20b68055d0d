# Copyright (c) nl_detectron contributors. Licensed under the Apache License 2.0.
import logging
from typing import Callable, List

from torch import nn

from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_KEYPOINT_HEAD_REGISTRY, KRCNNConvDeconvUpsampleHead

from .build import NonLocalSettings, resolve_head_positions
from .splice import insert_before

__all__ = ["NonLocalKRCNNConvDeconvUpsampleHead"]

logger = logging.getLogger(__name__)


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class NonLocalKRCNNConvDeconvUpsampleHead(KRCNNConvDeconvUpsampleHead):
    """
    The stock keypoint head (a stack of 3x3 convs, a deconv and 2x bilinear upsampling) with a
    context block after some of its convs, as in Table 6 of Wang et al. (2018): 4 non-local blocks
    in the 8-conv head, one after every 2 convs.

    The block after conv ``k`` is the child ``nonlocal{k}``, placed between ``conv_fcn_relu{k}`` and
    the next layer; the stock children (``conv_fcn1..N``, ``score_lowres``) keep their names, so a
    stock keypoint checkpoint loads with only the blocks missing. Input [R, C, S, S] (pooled ROI
    features), output [R, K, 4S, 4S] keypoint heatmaps, as in the stock head.
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        num_keypoints,
        conv_dims,
        context_positions: List[int],
        make_context_block: Callable[[int], nn.Module],
        **kwargs,
    ):
        """
        Args:
            input_shape, num_keypoints, conv_dims, kwargs: as in KRCNNConvDeconvUpsampleHead.
            context_positions: 1-based indices of the convs followed by a block.
            make_context_block: ``make_context_block(channels)`` returns a shape-preserving module.
        """
        super().__init__(input_shape, num_keypoints=num_keypoints, conv_dims=conv_dims, **kwargs)
        # Added after the stock init, whose MSRA fill would overwrite the blocks' zero init.
        for k in sorted(context_positions):
            if not 1 <= k <= len(conv_dims):
                raise ValueError(
                    f"context_positions has {k}; the head has convs 1..{len(conv_dims)}."
                )
            anchor = f"conv_fcn{k + 1}" if k < len(conv_dims) else "score_lowres"
            insert_before(self, anchor, f"nonlocal{k}", make_context_block(conv_dims[k - 1]))

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        settings = NonLocalSettings.from_config(cfg)
        ret["context_positions"] = resolve_head_positions(cfg, len(ret["conv_dims"]))
        ret["make_context_block"] = lambda channels: settings.build_block(
            channels, where="the keypoint head"
        )
        logger.info(
            "Keypoint head: '%s' context block(s) after conv(s) %s",
            cfg.MODEL.NONLOCAL.TYPE,
            ret["context_positions"],
        )
        return ret
