"""The disentangled non-local block of Yin et al., "Disentangled Non-Local Neural Networks"
(ECCV 2020)."""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .attention import flatten_positions, softmax_attention
from .attention_policy import SOFTMAX
from .base import NonLocalBase
from .dims import (
    check_dim,
    check_norm,
    conv_nd,
    gate_weight,
    init_embedding_conv,
    max_pool_nd,
    output_transform,
    pooled_shape,
    resolve_inter_channels,
    zero_output,
)
from .health import EXPLICIT


class DisentangledNonLocalBlock(NonLocalBase):
    """Disentangled non-local block: z = x + out(sum_j a_ij g_j) with

        a_ij = softmax_j((theta_i - mu_theta) . (phi_j - mu_phi) / (T sqrt(C'))) + softmax_j(u_j),

    a whitened pairwise term plus a unary term shared by all queries. mu_theta, mu_phi are the
    means of the embeddings over positions (per sample and channel), T is ``temperature`` and
    u = unary(x) is one logit per key position. ``use_scale=False`` drops the sqrt(C').

    Submodules: ``theta``, ``phi``, ``g`` (embeddings of width C', ``phi`` and ``g`` pooled when
    ``sub_sample``), ``unary`` (x -> one channel at phi's positions, pooling included) and ``out``
    (conv C' -> C with its norm). The pairwise term is a softmax aggregation of the centred
    embeddings on the path :mod:`.attention_policy` names; the unary term is the single weighted
    sum softmax(u) . g broadcast to every query.

    Args:
        in_channels (int): C.
        inter_channels (int or None): C'; default C // 2.
        temperature (float): T > 0; the paper uses 0.05.
        use_scale (bool): divide the pairwise logits by sqrt(C') as well.
        sub_sample (bool): max-pool phi, g and the unary map by 2 (3D: spatial dims only).
        dim (int): number of spatial dims, 1, 2 or 3.
        norm (str): norm after the output conv: "", "BN", "SyncBN", "GN" or "FrozenBN".
        zero_init (bool): start as the identity (zero norm gamma, or the output conv without norm).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        inter_channels: Optional[int] = None,
        temperature: float = 0.05,
        use_scale: bool = True,
        sub_sample: bool = False,
        dim: int = 2,
        norm: str = "BN",
        zero_init: bool = True,
    ):
        name = type(self).__name__
        inter_channels = resolve_inter_channels(name, in_channels, inter_channels)
        check_dim(name, dim)
        check_norm(name, norm, in_channels, zero_init)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or temperature <= 0
        ):
            raise ValueError(f"{name}: temperature={temperature!r} must be a positive number")
        super().__init__(in_channels, dim)
        self.inter_channels = inter_channels
        self.temperature = float(temperature)
        self.use_scale = use_scale
        self.sub_sample = sub_sample

        def branch(out_channels: int, pool: bool) -> nn.Module:
            conv = init_embedding_conv(conv_nd(dim, in_channels, out_channels))
            return nn.Sequential(conv, max_pool_nd(dim)) if pool else conv

        self.theta = branch(inter_channels, pool=False)
        self.phi = branch(inter_channels, pool=sub_sample)
        self.g = branch(inter_channels, pool=sub_sample)
        self.unary = branch(1, pool=sub_sample)
        self.out = output_transform(dim, inter_channels, in_channels, norm)
        init_embedding_conv(self.out.conv)
        if zero_init:
            zero_output(self.out.conv, getattr(self.out, "norm", None))

    @property
    def scale(self) -> float:
        # A property: ``temperature`` is a plain attribute users may change after construction.
        width = self.inter_channels**0.5 if self.use_scale else 1.0
        return 1.0 / (self.temperature * width)

    def key_shape(self, spatial_shape: Sequence[int]) -> Tuple[int, ...]:
        if self.sub_sample:
            return pooled_shape(self.dim, spatial_shape)
        return super().key_shape(spatial_shape)

    @property
    def has_triton_kernels(self) -> bool:
        return True

    def _embed(self, x: torch.Tensor):
        """Centred theta [B, N, C'], centred phi [B, M, C'] and softmax_j(u_j) [B, M]."""
        theta = flatten_positions(self.theta(x))
        phi = flatten_positions(self.phi(x))
        theta = theta - theta.mean(dim=1, keepdim=True)
        phi = phi - phi.mean(dim=1, keepdim=True)
        unary = torch.softmax(self.unary(x).flatten(1), dim=1)
        return theta, phi, unary

    def _affinity(
        self, theta: torch.Tensor, phi: torch.Tensor, unary: torch.Tensor
    ) -> torch.Tensor:
        """Rows a_ij [B, n, M] for centred queries theta [B, n, C']."""
        logits = torch.matmul(theta, phi.transpose(1, 2)) * self.scale
        return torch.softmax(logits, dim=-1) + unary.unsqueeze(1)

    def _aggregate(self, theta, phi, g, unary) -> torch.Tensor:
        """y = A g [B, N, C']: the pairwise term on the policy's path plus the unary term
        sum_j softmax_j(u_j) g_j [B, 1, C'], the same for every query."""
        plan = self.plan_aggregation(SOFTMAX, theta, phi, g, unary=True)
        y = softmax_attention(theta, phi, g, self.scale, plan)
        return y + torch.matmul(unary.unsqueeze(1).to(g.dtype), g)

    def attention_weights(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """a_ij [B, Q, M] for the flat query positions ``queries`` [Q] and all M key positions."""
        self.check_queries(x, queries)
        theta, phi, unary = self._embed(x)
        return self._affinity(theta[:, queries], phi, unary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        theta, phi, unary = self._embed(x)
        g = flatten_positions(self.g(x))  # [B, M, C']
        if self.explicit:
            y = self.aggregate_rows(
                lambda s: self._affinity(theta[:, s], phi, unary), g, theta.shape[1]
            )
        else:
            y = self._aggregate(theta, phi, g, unary)
        y = y.transpose(1, 2).reshape(x.shape[0], self.inter_channels, *x.shape[2:])
        out = self.out(y)
        if self.recording:
            # Rows sum to 2 (pairwise + unary softmax); the statistics normalise them.
            self.store_health(
                x,
                out,
                lambda q: self._affinity(theta[:1, q], phi[:1], unary[:1])[0],
                EXPLICIT if self.explicit else self.last_path.path,
            )
        return x + out

    def gate_weights(self) -> List[torch.Tensor]:
        """The output norm's gamma, or the output conv's weight without a norm."""
        return [gate_weight(self.out.conv, getattr(self.out, "norm", None))]
