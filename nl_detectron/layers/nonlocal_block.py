"""The non-local block of Wang et al., "Non-local Neural Networks" (CVPR 2018), 4 instantiations."""

from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import (
    concatenation_sum,
    flatten_positions,
    softmax_attention,
)
from .attention_policy import CONCATENATION, SOFTMAX
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
from .health import ASSOCIATIVE, EXPLICIT

INSTANTIATIONS = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")


class NonLocalBlock(NonLocalBase):
    """Non-local block: z = x + out(y), y_i = sum_j a_ij g_j.

    With theta_i, phi_j the query/key embeddings (width C', default C/2), N query positions and M
    key positions (M = N, or about N/4 with ``sub_sample``), the pairwise function a_ij is

    - "embedded_gaussian": a_ij = softmax_j(s * theta_i . phi_j), s = 1/sqrt(C') when ``use_scale``;
    - "gaussian": the same with identity embeddings (theta_i = x_i, phi_j = x_j), s = 1/sqrt(C);
    - "dot_product": a_ij = theta_i . phi_j / M;
    - "concatenation": a_ij = ReLU(w_f^T [theta_i, phi_j]) / M.

    ``use_scale`` defaults to True as in the official implementation; the paper's formula (and
    several re-implementations) use s = 1. It only affects the two softmax forms.

    Submodules: ``theta``, ``phi``, ``g`` map x [B, C, *S] to their embedding maps (``phi`` and
    ``g`` include the stride-2 max pool when ``sub_sample``; for "gaussian" ``theta`` is the
    identity and ``phi`` the identity or the pool), ``out`` (conv C' -> C and its norm) and, for
    "concatenation", ``concat_project``: Conv2d(2C', 1) + ReLU applied to a pair map [B, 2C', N, M].

    Fast paths: dot product uses theta (phi^T g) / M; the softmax forms and concatenation take the
    path :mod:`.attention_policy` names for the device, dtype and ``affinity_budget_mb`` (fused
    attention kernel, kept affinity or chunked recomputation; sorted key terms or chunked
    broadcast; or, with ``use_triton``, nl_detectron's Triton kernels). Set ``explicit = True`` to
    build the affinity with autograd instead.

    Args:
        in_channels (int): C.
        inter_channels (int or None): C'; default C // 2.
        instantiation (str): one of :data:`INSTANTIATIONS`.
        dim (int): number of spatial dims, 1, 2 or 3.
        sub_sample (bool): max-pool phi and g by 2 (3D: spatial dims only).
        use_scale (bool): scale the softmax logits by 1/sqrt(width).
        norm (str): norm after the output conv: "", "BN", "SyncBN", "GN" or "FrozenBN".
        zero_init (bool): zero the norm's gamma (or the output conv without a norm), so that the
            block starts as the identity.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        inter_channels: Optional[int] = None,
        instantiation: str = "embedded_gaussian",
        dim: int = 2,
        sub_sample: bool = False,
        use_scale: bool = True,
        norm: str = "BN",
        zero_init: bool = True,
    ):
        name = type(self).__name__
        inter_channels = resolve_inter_channels(name, in_channels, inter_channels)
        check_dim(name, dim)
        check_norm(name, norm, in_channels, zero_init)
        if instantiation not in INSTANTIATIONS:
            raise ValueError(
                f"{name}: instantiation={instantiation!r} is not one of {INSTANTIATIONS}"
            )
        super().__init__(in_channels, dim)
        self.inter_channels = inter_channels
        self.instantiation = instantiation
        self.sub_sample = sub_sample
        self.use_scale = use_scale

        def embedding(pool: bool) -> nn.Module:
            conv = init_embedding_conv(conv_nd(dim, in_channels, inter_channels))
            return nn.Sequential(conv, max_pool_nd(dim)) if pool else conv

        if instantiation == "gaussian":
            self.theta = nn.Identity()
            self.phi = max_pool_nd(dim) if sub_sample else nn.Identity()
            key_width = in_channels
        else:
            self.theta = embedding(pool=False)
            self.phi = embedding(pool=sub_sample)
            key_width = inter_channels
        self.g = embedding(pool=sub_sample)
        self.scale = key_width**-0.5 if use_scale else 1.0
        if instantiation == "concatenation":
            project = OrderedDict(
                conv=init_embedding_conv(nn.Conv2d(2 * inter_channels, 1, 1, bias=False)),
                relu=nn.ReLU(),
            )
            self.concat_project = nn.Sequential(project)
        self.out = output_transform(dim, inter_channels, in_channels, norm)
        init_embedding_conv(self.out.conv)
        if zero_init:
            zero_output(self.out.conv, getattr(self.out, "norm", None))

    @property
    def has_triton_kernels(self) -> bool:
        return self.instantiation != "dot_product"  # associative: nothing pairwise to run

    def key_shape(self, spatial_shape: Sequence[int]) -> Tuple[int, ...]:
        if self.sub_sample:
            return pooled_shape(self.dim, spatial_shape)
        return super().key_shape(spatial_shape)

    def _concat_terms(self, theta: torch.Tensor, phi: torch.Tensor):
        """w_f^T [theta_i, phi_j] = a_i + b_j; returns a [B, N], b [B, M]."""
        conv = self.concat_project.conv
        w = conv.weight.reshape(-1)
        c = self.inter_channels
        a = torch.matmul(theta, w[:c].to(theta.dtype))
        b = torch.matmul(phi, w[c:].to(phi.dtype))
        if conv.bias is not None:
            a = a + conv.bias
        return a, b

    def _affinity(self, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Rows a_ij [B, n, M] for query embeddings theta [B, n, D] and keys phi [B, M, D]."""
        num_keys = phi.shape[1]
        if self.instantiation == "concatenation":
            a, b = self._concat_terms(theta, phi)
            return F.relu(a.unsqueeze(2) + b.unsqueeze(1)) / num_keys
        logits = torch.matmul(theta, phi.to(theta.dtype).transpose(1, 2))
        if self.instantiation == "dot_product":
            return logits / num_keys
        return torch.softmax(logits * self.scale, dim=-1)

    def _aggregate(self, theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """y = A g [B, N, C'] without the N x M matrix A."""
        num_keys = phi.shape[1]
        if self.instantiation == "dot_product":
            # [B, N, C'] @ ([B, C', M] @ [B, M, C']): O(N C'^2) instead of O(N M C').
            return torch.matmul(theta, torch.matmul(phi.transpose(1, 2), g)) / num_keys
        kind = CONCATENATION if self.instantiation == "concatenation" else SOFTMAX
        plan = self.plan_aggregation(kind, theta, phi, g)
        if kind == CONCATENATION:
            a, b = self._concat_terms(theta, phi)
            return concatenation_sum(a, b, g, plan) / num_keys
        return softmax_attention(theta, phi, g, self.scale, plan)

    def attention_weights(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """a_ij [B, Q, M] for the flat query positions ``queries`` [Q] and all M key positions."""
        self.check_queries(x, queries)
        theta = flatten_positions(self.theta(x))[:, queries]
        return self._affinity(theta, flatten_positions(self.phi(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        theta = flatten_positions(self.theta(x))  # [B, N, D]
        if self.instantiation == "gaussian" and not self.sub_sample:
            phi = theta  # both are x itself: one [B, N, C] copy instead of two
        else:
            phi = flatten_positions(self.phi(x))  # [B, M, D]
        g = flatten_positions(self.g(x))  # [B, M, C']
        if self.explicit:
            y = self.aggregate_rows(lambda s: self._affinity(theta[:, s], phi), g, theta.shape[1])
        else:
            y = self._aggregate(theta, phi, g)
        y = y.transpose(1, 2).reshape(x.shape[0], self.inter_channels, *x.shape[2:])
        out = self.out(y)
        if self.recording:
            self._store_health(x, out, theta, phi)
        return x + out

    def gate_weights(self) -> List[torch.Tensor]:
        """The output norm's gamma, or the output conv's weight without a norm."""
        return [gate_weight(self.out.conv, getattr(self.out, "norm", None))]

    def _store_health(self, x, out, theta, phi) -> None:
        """``last_health`` from this forward's theta [B, N, D] and phi [B, M, D]; the dot
        product's rows can be negative and get no attention statistics."""
        dot_product = self.instantiation == "dot_product"
        rows = None if dot_product else (lambda q: self._affinity(theta[:1, q], phi[:1])[0])
        if self.explicit:
            path = EXPLICIT
        else:
            path = ASSOCIATIVE if dot_product else self.last_path.path
        self.store_health(x, out, rows, path)
