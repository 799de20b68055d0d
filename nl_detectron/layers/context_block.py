"""The global context block of Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation
Networks and Beyond" (ICCVW 2019)."""

from collections import OrderedDict
from typing import List, Sequence

import torch
from torch import nn

from .base import NonLocalBase
from .dims import check_channels, check_dim, conv_nd, zero_output
from .health import EXPLICIT, POOLED

POOLINGS = ("attention", "avg")
FUSIONS = ("channel_add", "channel_mul")


class ContextBlock(NonLocalBase):
    """Global context block: one query-independent context vector fused into every position.

        context = sum_j softmax_j(w_k x_j) x_j          (pooling "attention"; "avg": mean_j x_j)
        z = x * sigmoid(transform_mul(context))          (fusion "channel_mul")
        z = z + transform(context), broadcast over positions  (fusion "channel_add")

    ``transform`` and ``transform_mul``: 1x1 conv C -> C*ratio, LayerNorm, ReLU, 1x1 conv back to C.
    The attention map is the same for every query, so ``attention_weights`` returns identical rows.

    With ``zero_init`` the last conv of ``transform`` is zeroed so the block starts as the identity;
    "channel_mul" cannot start as the identity (sigmoid(.) is never 1): it needs zero_init=False.

    Args:
        in_channels (int): C.
        ratio (float): bottleneck ratio of the transforms; C * ratio must be >= 1.
        pooling (str): "attention" (the paper's context modelling) or "avg" (global average pool).
        fusions (sequence of str): non-empty subset of ("channel_add", "channel_mul").
        dim (int): number of spatial dims, 1, 2 or 3.
        zero_init (bool): start as the identity.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        ratio: float = 1 / 16,
        pooling: str = "attention",
        fusions: Sequence[str] = ("channel_add",),
        dim: int = 2,
        zero_init: bool = True,
    ):
        name = type(self).__name__
        check_channels(name, "in_channels", in_channels)
        check_dim(name, dim)
        if pooling not in POOLINGS:
            raise ValueError(f"{name}: pooling={pooling!r} is not one of {POOLINGS}")
        fusions = tuple(fusions) if not isinstance(fusions, str) else (fusions,)
        if not fusions or len(set(fusions)) != len(fusions) or not set(fusions) <= set(FUSIONS):
            raise ValueError(
                f"{name}: fusions={fusions!r} must be a non-empty subset of {FUSIONS} "
                "without repeats"
            )
        planes = int(in_channels * ratio)
        if planes < 1:
            raise ValueError(
                f"{name}: ratio={ratio!r} gives {in_channels} * ratio = {in_channels * ratio} < 1 "
                "bottleneck channels; allowed: ratio >= 1 / in_channels"
            )
        if zero_init and "channel_mul" in fusions:
            raise ValueError(
                f"{name}: fusions={fusions!r} with zero_init=True: x * sigmoid(.) cannot start as "
                "the identity; use zero_init=False or fusions=('channel_add',)"
            )
        super().__init__(in_channels, dim)
        self.ratio = ratio
        self.pooling = pooling
        self.fusions = fusions
        if pooling == "attention":
            self.w_k = conv_nd(dim, in_channels, 1)
            nn.init.kaiming_normal_(self.w_k.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.w_k.bias)
        if "channel_add" in fusions:
            self.transform = self._make_transform(dim, in_channels, planes)
            if zero_init:
                zero_output(self.transform.conv2, None)
        if "channel_mul" in fusions:
            self.transform_mul = self._make_transform(dim, in_channels, planes)

    @staticmethod
    def _make_transform(dim: int, channels: int, planes: int) -> nn.Module:
        layers = OrderedDict(
            conv1=conv_nd(dim, channels, planes),
            norm=nn.LayerNorm([planes] + [1] * dim),
            relu=nn.ReLU(inplace=True),
            conv2=conv_nd(dim, planes, channels),
        )
        for conv in (layers["conv1"], layers["conv2"]):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        return nn.Sequential(layers)

    def _pool_weights(self, x: torch.Tensor) -> torch.Tensor:
        """softmax_j(w_k x_j) [B, M] ("avg": 1 / M everywhere)."""
        if self.pooling == "avg":
            num_positions = x.shape[2:].numel()
            return x.new_full((x.shape[0], num_positions), 1.0 / num_positions)
        return torch.softmax(self.w_k(x).flatten(1), dim=1)

    def attention_weights(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """a_ij [B, Q, M]: the same pooling weights for every query."""
        self.check_queries(x, queries)
        weights = self._pool_weights(x)
        return weights.unsqueeze(1).expand(-1, queries.numel(), -1)

    def _fuse(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Fuse context [B', C, 1, ...] (broadcast) or per-position contexts into x."""
        out = x
        if "channel_mul" in self.fusions:
            out = out * torch.sigmoid(self.transform_mul(context))
        if "channel_add" in self.fusions:
            out = out + self.transform(context)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        weights = self._pool_weights(x)  # [B, M]
        if self.explicit:
            z = self._explicit_forward(x, weights)
        else:
            z = self._pooled_forward(x, weights)
        if self.recording:
            # Every query's row is the same pooling weights: one row stands for all (diversity 0).
            rows = (lambda q: weights[:1]) if self.pooling == "attention" else None
            path = EXPLICIT if self.explicit else POOLED
            self.store_health(x, z.detach() - x.detach(), rows, path)
        return z

    def gate_weights(self) -> List[torch.Tensor]:
        """The last conv of ``transform`` (of ``transform_mul`` without "channel_add")."""
        transform = self.transform if "channel_add" in self.fusions else self.transform_mul
        return [transform.conv2.weight]

    def _pooled_forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The fast form: one context [B, C, 1, ...] per sample, fused at every position."""
        batch, channels = x.shape[:2]
        x_flat = x.flatten(2)  # [B, C, M]
        context = torch.matmul(x_flat, weights.unsqueeze(-1).to(x_flat.dtype))  # [B, C, 1]
        return self._fuse(x, context.reshape(batch, channels, *([1] * self.dim)))

    def _explicit_forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        x_flat = x.flatten(2)  # [B, C, M]
        # The simplified non-local form GCNet starts from: an N x M affinity whose rows are all
        # equal, one context per query position, transformed position by position.
        num = weights.shape[1]

        def rows(s: slice) -> torch.Tensor:
            return weights.unsqueeze(1).expand(-1, len(range(num)[s]), -1).contiguous()

        contexts = self.aggregate_rows(rows, x_flat.transpose(1, 2), num)  # [B, N, C]
        contexts = contexts.reshape(batch * num, channels, *([1] * self.dim))
        fused = self._fuse(x.flatten(2).transpose(1, 2).reshape_as(contexts), contexts)
        return fused.reshape(batch, num, channels).transpose(1, 2).reshape(x.shape)
