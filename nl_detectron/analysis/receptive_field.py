"""The effective receptive field of a backbone feature (Luo et al., "Understanding the Effective
Receptive Field in Deep Convolutional Neural Networks", NeurIPS 2016).

For the unit at the centre cell (i, j) of a feature map y [1, C, h, w], the input gradient
g = |d(sum_c y[c, i, j]) / d x| [H, W] (summed over colour channels, accumulated over images) says
how much each pixel moves it. The effective radius is the smallest r such that the pixels within
r of the unit's centre hold ``mass`` of the total gradient: beyond it a unit hardly sees anything,
whatever its theoretical receptive field.
"""

from typing import Iterable

import numpy as np
import torch
from torch import nn

__all__ = ["effective_receptive_radius"]


def effective_receptive_radius(
    model: nn.Module, images: Iterable[np.ndarray], feature: str, mass: float = 0.9
) -> float:
    """
    Args:
        model: a detectron2 meta-architecture with ``preprocess_image`` and ``backbone`` (an FPN
            over a ResNet, ``backbone.bottom_up``, or the ResNet itself); not resized inputs.
        images: [H, W, 3] uint8 arrays in the model's input format, all of one size.
        feature: the backbone output to probe, e.g. "res4".
        mass: the share of the gradient the radius must hold, in (0, 1).

    Returns:
        the radius in input pixels.
    """
    if not 0 < mass < 1:
        raise ValueError(f"mass={mass!r} must lie in (0, 1)")
    resnet = getattr(model.backbone, "bottom_up", model.backbone)
    total = None
    for image in images:
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        x = model.preprocess_image([{"image": tensor}]).tensor.detach().requires_grad_(True)
        features = resnet(x)
        if feature not in features:
            raise ValueError(f"feature {feature!r} is not an output; allowed: {sorted(features)}")
        y = features[feature]
        row, col = y.shape[2] // 2, y.shape[3] // 2
        (grad,) = torch.autograd.grad(y[0, :, row, col].sum(), x)
        g = grad[0].abs().sum(0).cpu().numpy().astype(np.float64)  # [H, W]
        total = g if total is None else total + g
        stride = (x.shape[2] / y.shape[2], x.shape[3] / y.shape[3])
        centre = ((row + 0.5) * stride[0], (col + 0.5) * stride[1])
    if total is None:
        raise ValueError("no images given")
    yy, xx = np.mgrid[: total.shape[0], : total.shape[1]] + 0.5
    distance = np.hypot(yy - centre[0], xx - centre[1]).reshape(-1)
    order = np.argsort(distance, kind="stable")
    cumulative = np.cumsum(total.reshape(-1)[order])
    return float(distance[order][np.searchsorted(cumulative, mass * cumulative[-1])])
