"""Dimension-generic layer factories shared by the context blocks.

The blocks work on 1D (sequences), 2D (images) and 3D (videos) maps. These helpers pick the conv,
pool and norm class of the right dimension, validate the common arguments and apply the "start as
identity" init.
"""

import math
from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d

NORMS = ("", "BN", "SyncBN", "GN", "FrozenBN")
DIMS = (1, 2, 3)

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class FrozenBatchNormNd(FrozenBatchNorm2d):
    """detectron2's ``FrozenBatchNorm2d`` for inputs [B, C, *spatial] with any spatial dims."""

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.reshape(shape).to(x.dtype) + bias.reshape(shape).to(x.dtype)


def check_dim(owner: str, dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim not in DIMS:
        raise ValueError(f"{owner}: dim={dim!r} is not supported; allowed: {DIMS}")
    return dim


def check_channels(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {name}={value!r} must be a positive integer")
    return value


def resolve_inter_channels(owner: str, in_channels: int, inter_channels: Optional[int]) -> int:
    """C' defaults to C / 2 (at least 1), as in the non-local paper."""
    check_channels(owner, "in_channels", in_channels)
    if inter_channels is None:
        return max(in_channels // 2, 1)
    return check_channels(owner, "inter_channels", inter_channels)


def check_norm(owner: str, norm: str, channels: int, zero_init: bool) -> str:
    if norm not in NORMS:
        raise ValueError(f"{owner}: norm={norm!r} is not one of {NORMS} ('' means no norm)")
    if norm == "FrozenBN" and zero_init:
        # A frozen gamma of zero would stay zero: the block could never leave the identity.
        raise ValueError(
            f"{owner}: norm='FrozenBN' with zero_init=True would freeze the block at the identity; "
            "use zero_init=False or one of ('', 'BN', 'SyncBN', 'GN')"
        )
    if norm == "GN" and channels % 32 != 0:
        raise ValueError(
            f"{owner}: norm='GN' uses 32 groups and needs channels divisible by 32, got {channels}"
        )
    return norm


def conv_nd(dim: int, in_channels: int, out_channels: int, bias: bool = True) -> nn.Module:
    """A 1x1 (x1) convolution of the given dimension."""
    return _CONVS[dim](in_channels, out_channels, kernel_size=1, bias=bias)


def max_pool_nd(dim: int) -> nn.Module:
    """Max pool of stride 2 as in the non-local paper; for 3D only over space (time is kept).

    ``ceil_mode`` keeps the last row/column of odd sizes and lets 1x1 maps through unchanged.
    """
    if dim == 1:
        return nn.MaxPool1d(2, ceil_mode=True)
    if dim == 2:
        return nn.MaxPool2d(2, ceil_mode=True)
    return nn.MaxPool3d((1, 2, 2), ceil_mode=True)


def pooled_shape(dim: int, spatial_shape: Sequence[int]) -> Tuple[int, ...]:
    """The output size of :func:`max_pool_nd` for a map of ``spatial_shape``."""
    kernels = (1, 2, 2) if dim == 3 else (2,) * dim
    return tuple(math.ceil(s / k) for s, k in zip(spatial_shape, kernels))


def norm_nd(norm: str, dim: int, channels: int) -> Optional[nn.Module]:
    """The norm layer for ``norm`` in :data:`NORMS` (None for ''), like detectron2's get_norm."""
    if norm == "":
        return None
    if norm == "BN":
        return _BATCH_NORMS[dim](channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    return FrozenBatchNormNd(channels)


def output_transform(dim: int, inter_channels: int, out_channels: int, norm: str) -> nn.Module:
    """W_z: a 1x1 conv C' -> C followed by its norm (no conv bias when a norm follows)."""
    layers = OrderedDict(conv=conv_nd(dim, inter_channels, out_channels, bias=not norm))
    norm_layer = norm_nd(norm, dim, out_channels)
    if norm_layer is not None:
        layers["norm"] = norm_layer
    return nn.Sequential(layers)


def init_embedding_conv(conv: nn.Module) -> nn.Module:
    """Gaussian init with std 0.01 and zero bias, as in the official non-local code."""
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def zero_output(conv: nn.Module, norm: Optional[nn.Module]) -> None:
    """Make ``norm(conv(y))`` exactly zero: zero the norm's gamma (and beta), else the conv."""
    with torch.no_grad():
        if norm is not None:
            norm.weight.zero_()
            norm.bias.zero_()
        else:
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()


def gate_weight(conv: nn.Module, norm: Optional[nn.Module]) -> torch.Tensor:
    """The scale :func:`zero_output` zeroes: the norm's gamma, else the conv's weight."""
    return norm.weight if norm is not None else conv.weight
