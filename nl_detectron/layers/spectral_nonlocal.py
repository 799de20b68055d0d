"""The spectral non-local block of Zhu et al., "Unifying Nonlocal Blocks for Neural Networks"
(ICCV 2021)."""

from typing import List, Optional

import torch
from torch import nn

from .attention import flatten_positions
from .base import NonLocalBase
from .dims import (
    check_dim,
    check_norm,
    conv_nd,
    init_embedding_conv,
    norm_nd,
    resolve_inter_channels,
    zero_output,
)
from .health import ASSOCIATIVE, EXPLICIT


def _swap_halves(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[a, b] -> [b, a] along ``dim`` (of even size)."""
    first, second = t.chunk(2, dim=dim)
    return torch.cat([second, first], dim=dim)


class SpectralNonLocalBlock(NonLocalBase):
    """Spectral non-local block: a graph filter of the given ``order`` on a symmetric affinity.

    With T = ReLU(theta(x)), P = ReLU(phi(x)) [N, C'] (N positions, keys = queries):

        M = T P^T,  M_hat = (M + M^T) / 2,  A = D^-1/2 M_hat D^-1/2  (D = row sums of M_hat),
        z = x + norm(w1(Z) + w2(A Z) + w3(A^2 Z) + ...),  Z = g(x).

    Rows of zero degree get zero weights. Everything is computed in O(N C'^2) through
    associativity: d = (T (P^T 1) + P (T^T 1)) / 2 and A Z = D^-1/2 (T (P^T Z') + P (T^T Z')) / 2
    with Z' = D^-1/2 Z, each as one pair of products with [T, P] [B, N, 2C'].

    Submodules: ``theta``, ``phi``, ``g`` (1x1 convs C -> C'), ``w1`` ... ``w{order}`` (1x1 convs
    C' -> C applied to Z, A Z, ..., A^(order-1) Z) and ``norm`` (identity when norm is "").

    Args:
        in_channels (int): C.
        inter_channels (int or None): C'; default C // 2.
        order (int): number of filter terms, >= 2 (order 2 is the paper's default).
        dim (int): number of spatial dims, 1, 2 or 3.
        norm (str): norm after the sum: "", "BN", "SyncBN", "GN" or "FrozenBN".
        zero_init (bool): start as the identity (zero norm gamma, or all w_k without a norm).
        sub_sample (bool): must be False: the affinity is symmetric over one set of positions.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        inter_channels: Optional[int] = None,
        order: int = 2,
        dim: int = 2,
        norm: str = "BN",
        zero_init: bool = True,
        sub_sample: bool = False,
    ):
        name = type(self).__name__
        inter_channels = resolve_inter_channels(name, in_channels, inter_channels)
        check_dim(name, dim)
        check_norm(name, norm, in_channels, zero_init)
        if isinstance(order, bool) or not isinstance(order, int) or order < 2:
            raise ValueError(f"{name}: order={order!r} must be an integer >= 2")
        if sub_sample:
            raise ValueError(
                f"{name}: sub_sample={sub_sample!r} is not supported (allowed: False); the "
                "spectral affinity A = D^-1/2 (M + M^T)/2 D^-1/2 needs keys at the query positions"
            )
        super().__init__(in_channels, dim)
        self.inter_channels = inter_channels
        self.order = order
        self.theta = init_embedding_conv(conv_nd(dim, in_channels, inter_channels))
        self.phi = init_embedding_conv(conv_nd(dim, in_channels, inter_channels))
        self.g = init_embedding_conv(conv_nd(dim, in_channels, inter_channels))
        for k in range(1, order + 1):
            w = conv_nd(dim, inter_channels, in_channels, bias=not norm)
            self.add_module(f"w{k}", init_embedding_conv(w))
        norm_layer = norm_nd(norm, dim, in_channels)
        self.norm = norm_layer if norm_layer is not None else nn.Identity()
        if zero_init:
            for w in self._filters():
                zero_output(w, norm_layer)

    def _filters(self):
        return [getattr(self, f"w{k}") for k in range(1, self.order + 1)]

    def _pair_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """[T, P] [B, N, 2C'] with T = ReLU(theta(x)), P = ReLU(phi(x)) (one copy, one ReLU)."""
        return flatten_positions(torch.cat([self.theta(x), self.phi(x)], dim=1)).relu_()

    def _embed(self, x: torch.Tensor):
        """[T, P] [B, N, 2C'] and D^-1/2 [B, N, 1] (zero where the degree is zero)."""
        tp = self._pair_embeddings(x)
        return tp, self._inv_sqrt(self._degree(tp))

    @staticmethod
    def _degree(tp: torch.Tensor) -> torch.Tensor:
        """d = M_hat 1 = (T (P^T 1) + P (T^T 1)) / 2 [B, N, 1] from [T, P] [B, N, 2C']."""
        totals = tp.sum(dim=1, keepdim=True)  # [B, 1, 2C'] = [(T^T 1)^T, (P^T 1)^T]
        return torch.matmul(tp, _swap_halves(totals, dim=2).transpose(1, 2)) / 2

    @staticmethod
    def _inv_sqrt(degree: torch.Tensor) -> torch.Tensor:
        # Degrees are >= 0 (T, P >= 0); keep rsqrt away from 0 so its gradient stays finite there.
        positive = degree > 0
        return torch.where(positive, torch.where(positive, degree, 1).rsqrt(), 0)

    @staticmethod
    def _propagate(tp: torch.Tensor, inv_sqrt: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A z for z [B, N, C'] in O(N C'^2), from [T, P] [B, N, 2C'] and D^-1/2 [B, N, 1].

        With z' = D^-1/2 z: M_hat z' = (T (P^T z') + P (T^T z')) / 2 = [T, P] [P^T z'; T^T z'] / 2,
        two matrix products over 2C' (one gives both T^T z' and P^T z', swapped for the other).
        """
        w = torch.matmul(tp.transpose(1, 2), inv_sqrt * z)  # [T^T z'; P^T z'] [B, 2C', C']
        return inv_sqrt * torch.matmul(tp, _swap_halves(w, dim=1)) / 2

    @staticmethod
    def _sym_rows(tp: torch.Tensor, s) -> torch.Tensor:
        """Rows s of M_hat = (T P^T + P T^T) / 2 = [T, P] [P, T]^T / 2, [B, n, N]."""
        return torch.matmul(tp[:, s], _swap_halves(tp, dim=2).transpose(1, 2)) / 2

    def _normalised_rows(self, tp, inv_sqrt, s) -> torch.Tensor:
        """Rows s of A = D^-1/2 M_hat D^-1/2, [B, n, N]."""
        return inv_sqrt[:, s] * self._sym_rows(tp, s) * inv_sqrt.transpose(1, 2)

    def attention_weights(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Rows A_ij [B, Q, N] of the normalised affinity for the flat positions ``queries`` [Q]."""
        self.check_queries(x, queries)
        tp, inv_sqrt = self._embed(x)
        return self._normalised_rows(tp, inv_sqrt, queries)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        z = flatten_positions(self.g(x))  # [B, N, C']
        n = z.shape[1]
        if self.explicit:
            tp = self._pair_embeddings(x)
            # Row sums keep nothing N x N alive for the backward (a product with ones would).
            degree = [self._sym_rows(tp, s).sum(dim=2) for s in self.query_slices(n)]
            inv_sqrt = self._inv_sqrt(torch.cat(degree, dim=1).unsqueeze(-1))
        else:
            tp, inv_sqrt = self._embed(x)
        out = 0
        for k, w in enumerate(self._filters()):
            if k > 0:  # z <- A z, so term k is A^k Z
                if self.explicit:
                    z = self.aggregate_rows(lambda s: self._normalised_rows(tp, inv_sqrt, s), z, n)
                else:
                    z = self._propagate(tp, inv_sqrt, z)
            out = out + w(z.transpose(1, 2).reshape(x.shape[0], self.inter_channels, *x.shape[2:]))
        out = self.norm(out)
        if self.recording:
            # A's rows are >= 0 (T, P >= 0), so normalised they are distributions over positions.
            self.store_health(
                x,
                out,
                lambda q: self._normalised_rows(tp[:1], inv_sqrt[:1], q)[0],
                EXPLICIT if self.explicit else ASSOCIATIVE,
            )
        return x + out

    def gate_weights(self) -> List[torch.Tensor]:
        """The shared norm's gamma, or every filter's weight w1 .. w{order} without a norm."""
        if isinstance(self.norm, nn.Identity):
            return [w.weight for w in self._filters()]
        return [self.norm.weight]
