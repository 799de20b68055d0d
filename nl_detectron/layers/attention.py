"""Pairwise aggregations y_i = sum_j f(q_i, k_j) v_j that never build the N x M affinity.

All functions take flattened, position-major tensors: queries q [B, N, D], keys k [B, M, D], values
v [B, M, E], and return y [B, N, E].
"""

import torch
import torch.nn.functional as F


def flatten_positions(t: torch.Tensor) -> torch.Tensor:
    """[B, C, *spatial] -> contiguous [B, N, C] with N = prod(spatial) in row-major order."""
    return t.flatten(2).transpose(1, 2).contiguous()


def _pad_last(t: torch.Tensor, width: int) -> torch.Tensor:
    return t if t.shape[-1] == width else F.pad(t, (0, width - t.shape[-1]))


# An affinity P [B, N, M] up to this size may be built in place (and kept for the backward), see
# :func:`softmax_attention`: 160 MiB covers res4 of an 800x1333 input at batch 2 (141 MB in fp32),
# never res3 (2.3 GB). Larger maps always run the flash kernel.
SAVED_AFFINITY_BYTES = 160 << 20


def _fused_operands(q, k, v):
    """[B, 1, n, W] contiguous copies of q, k, v, the narrower ones zero-padded to one width W.

    The CPU flash kernel only runs for contiguous [B, heads, N, D] inputs whose value width equals
    the query width; otherwise SDPA silently switches to the math kernel, which materialises N x M.
    Zero columns change neither q_i . k_j nor the kept value columns.
    """
    width = max(q.shape[-1], v.shape[-1])
    same_keys = k is q  # "gaussian" without sub-sampling: one copy serves both
    q, v = (_pad_last(t, width).unsqueeze(1).contiguous() for t in (q, v))
    k = q if same_keys else _pad_last(k, width).unsqueeze(1).contiguous()
    return q, k, v


def _fused_attention(q, k, v, scale: float) -> torch.Tensor:
    """SDPA on [B, N, D], [B, M, D], [B, M, E] arranged so that the flash kernel runs (forward
    and backward); the result is [B, N, E]."""
    y = F.scaled_dot_product_attention(*_fused_operands(q, k, v), scale=scale).squeeze(1)
    # A narrow copy lets the padded result be freed at once.
    return y if y.shape[-1] == v.shape[-1] else y[..., : v.shape[-1]].contiguous()


class _SavedAffinityAttention(torch.autograd.Function):
    """softmax(s Q K^T) V with P = softmax(s Q K^T) [B, N, M] built in place and kept.

    For affinities small enough to keep, this is the explicit formula without its temporaries
    (autograd would keep s Q K^T, P and allocate dP and dS separately) and without the flash
    kernel's padding of a narrower value (under no_grad nothing is kept). Backward, with
    delta_i = dO_i . O_i (= sum_j P_ij dP_ij): dV = P^T dO, dS = P * (dO V^T - delta),
    dQ = s dS K, dK = s dS^T Q.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale):
        p = torch.matmul(q, k.transpose(1, 2)).mul_(scale)  # [B, N, M]
        p = p.sub_(p.amax(dim=-1, keepdim=True)).exp_()
        p = p.div_(p.sum(dim=-1, keepdim=True))
        out = torch.matmul(p, v)
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, out, p)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, p = ctx.saved_tensors
        grad_v = torch.matmul(p.transpose(1, 2), grad_out)
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, grad_v, None  # e.g. "gaussian" on an input that needs no gradient
        delta = (grad_out * out).sum(dim=-1, keepdim=True)  # [B, N, 1]
        grad_s = torch.matmul(grad_out, v.transpose(1, 2)).sub_(delta).mul_(p)  # [B, N, M]
        grad_q = torch.matmul(grad_s, k).mul_(ctx.scale)
        grad_k = torch.matmul(grad_s.transpose(1, 2), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """y_i = sum_j softmax_j(scale * q_i . k_j) v_j for q [B, N, D], k [B, M, D], v [B, M, E].

    Maps whose affinity [B, N, M] exceeds SAVED_AFFINITY_BYTES run the fused (flash) SDPA kernel,
    forward and backward, and never build N x M. Smaller ones build it in place
    (:class:`_SavedAffinityAttention`) when training, or when the fused kernel would have to pad a
    value narrower than the keys ("gaussian"); otherwise the fused kernel runs.
    """
    dtype = v.dtype  # under autocast the identity embeddings of "gaussian" stay fp32, v does not
    same_keys = k is q
    q = q.to(dtype)
    k = q if same_keys else k.to(dtype)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    affinity_bytes = q.shape[0] * q.shape[1] * k.shape[1] * q.element_size()
    # Tracers and export record the plain SDPA call.
    if (
        affinity_bytes <= SAVED_AFFINITY_BYTES
        and (needs_grad or q.shape[-1] > v.shape[-1])
        and not (torch.jit.is_tracing() or torch.compiler.is_compiling())
    ):
        return _SavedAffinityAttention.apply(q, k, v, scale)
    return _fused_attention(q, k, v, scale)


def _suffix_sums(t: torch.Tensor) -> torch.Tensor:
    """[B, M, E] -> [B, M + 1, E] with row m = sum_{j >= m} t_j (row M is zero)."""
    suffix = t.flip(1).cumsum(1).flip(1)
    return torch.cat([suffix, suffix.new_zeros(suffix.shape[0], 1, suffix.shape[2])], dim=1)


def relu_pair_sum(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y_i = sum_j ReLU(a_i + b_j) v_j for a [B, N], b [B, M], v [B, M, E], in O(M log M + N E).

    ReLU(a_i + b_j) is non-zero exactly for b_j > -a_i. With b sorted ascending those j form a
    suffix starting at searchsorted(b, -a_i, right=True), so y_i = a_i * S_v + S_bv with the suffix
    sums S_v = sum v_j and S_bv = sum b_j v_j over that suffix. The gradient flows through the
    sorted values, the gathers and the cumulative sums; the suffix start is piecewise constant, and
    excluding b_j = -a_i matches ReLU'(0) = 0.
    """
    out_dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), v.dtype)
    # Cumulative sums over thousands of positions need at least fp32 accumulation.
    acc_dtype = torch.promote_types(out_dtype, torch.float32)
    a, b, v = a.to(acc_dtype), b.to(acc_dtype), v.to(acc_dtype)
    b_sorted, order = b.sort(dim=1)
    v_sorted = v.gather(1, order.unsqueeze(-1).expand_as(v))
    sum_v = _suffix_sums(v_sorted)
    sum_bv = _suffix_sums(b_sorted.unsqueeze(-1) * v_sorted)
    start = torch.searchsorted(b_sorted.detach(), -a.detach(), right=True)
    index = start.unsqueeze(-1).expand(-1, -1, v.shape[-1])
    y = a.unsqueeze(-1) * sum_v.gather(1, index) + sum_bv.gather(1, index)
    return y.to(out_dtype)
