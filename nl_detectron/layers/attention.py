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


# Query rows per backward chunk are chosen so that one [B, rows, M] block holds about this many
# elements (32 MiB in fp32): the backward never holds more than a few such blocks.
BACKWARD_CHUNK_ELEMENTS = 1 << 23
# When training, an affinity P [B, N, M] up to this size is kept for the backward instead of being
# recomputed chunk by chunk (the recompute costs one more N x M x C' product): 160 MiB covers res4
# of an 800x1333 input at batch 2 (141 MB in fp32), never res3 (2.3 GB).
SAVED_AFFINITY_BYTES = 160 << 20


def _fused_attention(q, k, v, scale: float) -> torch.Tensor:
    """SDPA on [B, N, D], [B, M, D], [B, M, E] arranged so that the CPU flash kernel runs.

    The CPU flash kernel only runs for contiguous [B, heads, N, D] inputs whose value width equals
    the query width; otherwise SDPA silently switches to the math kernel, which materialises N x M.
    So the narrower of (q, k) and v is zero-padded to the wider width (zeros change neither
    q_i . k_j nor the kept value columns) and every operand is made contiguous.
    """
    out_width = v.shape[-1]
    width = max(q.shape[-1], out_width)
    same_keys = k is q  # "gaussian" without sub-sampling: one copy serves both
    q, v = (_pad_last(t, width).unsqueeze(1).contiguous() for t in (q, v))
    k = q if same_keys else _pad_last(k, width).unsqueeze(1).contiguous()
    y = F.scaled_dot_product_attention(q, k, v, scale=scale).squeeze(1)
    # A narrow copy lets the padded result be freed at once.
    return y if out_width == width else y[..., :out_width].contiguous()


class _SoftmaxAttention(torch.autograd.Function):
    """Fused forward; backward in query chunks with plain matrix products.

    The CPU flash kernel's backward is several times slower than its forward (it parallelises over
    batch x heads only), so the gradient is computed here: for each chunk of query rows,
    P = softmax(s Q_c K^T) is recomputed, then with delta_i = dO_i . O_i (= sum_j P_ij dP_ij):
    dV += P^T dO_c, dS = P * (dO_c V^T - delta), dQ_c = s dS K, dK += s dS^T Q_c.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale):
        out = _fused_attention(q, k, v, scale)
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(dim=-1, keepdim=True)  # [B, N, 1]
        q_scaled = q * ctx.scale  # folding s into Q saves a pass over every [B, n, M] block
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        batch, num_queries = q.shape[:2]
        step = max(1, BACKWARD_CHUNK_ELEMENTS // max(1, batch * k.shape[1]))
        k_t, v_t = k.transpose(1, 2), v.transpose(1, 2)
        need_qk = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        for start in range(0, num_queries, step):
            rows = slice(start, start + step)
            q_c, grad_out_c = q_scaled[:, rows], grad_out[:, rows]
            p = torch.softmax(torch.matmul(q_c, k_t), dim=-1)  # [B, n, M]
            grad_v.baddbmm_(p.transpose(1, 2), grad_out_c)
            if not need_qk:  # e.g. "gaussian" on an input that needs no gradient
                continue
            grad_s = torch.matmul(grad_out_c, v_t).sub_(delta[:, rows]).mul_(p)  # [B, n, M]
            del p
            torch.matmul(grad_s, k, out=grad_q[:, rows])
            grad_k.baddbmm_(grad_s.transpose(1, 2), q_c)
        if not need_qk:
            return None, None, grad_v, None
        return grad_q.mul_(ctx.scale), grad_k, grad_v, None


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """y_i = sum_j softmax_j(scale * q_i . k_j) v_j for q [B, N, D], k [B, M, D], v [B, M, E].

    The forward runs the fused (flash) SDPA kernel and never builds N x M; the backward (see
    :class:`_SoftmaxAttention`) holds only chunks of it.
    """
    dtype = v.dtype  # under autocast the identity embeddings of "gaussian" stay fp32, v does not
    same_keys = k is q
    q = q.to(dtype)
    k = q if same_keys else k.to(dtype)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    # Tracers and export record the plain SDPA call; the custom backward only matters for training.
    if not needs_grad or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _fused_attention(q, k, v, scale)
    if q.shape[0] * q.shape[1] * k.shape[1] * v.element_size() <= SAVED_AFFINITY_BYTES:
        # Small maps: keeping P for the backward is cheaper than recomputing it, and small.
        return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(1, 2)) * scale, dim=-1), v)
    return _SoftmaxAttention.apply(q, k, v, scale)


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
