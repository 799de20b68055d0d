"""Pairwise aggregations y_i = sum_j f(q_i, k_j) v_j, each path of :mod:`.attention_policy`.

All functions take flattened, position-major tensors: queries q [B, N, D], keys k [B, M, D], values
v [B, M, E], and return y [B, N, E]. :func:`plan_aggregation` asks the policy which path a call
takes; :func:`softmax_attention` and :func:`concatenation_sum` run it.
"""

import contextlib
import warnings
from typing import List, Optional, Set

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .attention_policy import (
    CHUNKED,
    CHUNKED_CONCAT,
    EFFICIENT,
    FUSED,
    KEPT,
    SOFTMAX,
    SORTED_CONCAT,
    TRITON,
    TRITON_CONCAT,
    AggregationCall,
    PathChoice,
    budget_bytes,
    choose_path,
    compute_dtype,
    fp32_copies,
    is_compiled,
    is_tracing,
    kept_chunk_rows,
    peak_bytes,
    tf32_allowed,
)
from .triton_relu_pair_sum import TritonReluPairSum
from .triton_softmax_attention import TritonSoftmaxAttention
from .triton_support import DTYPES as TRITON_DTYPES
from .triton_support import triton_needs, triton_runs_on


def flatten_positions(t: torch.Tensor) -> torch.Tensor:
    """[B, C, *spatial] -> contiguous [B, N, C] with N = prod(spatial) in row-major order."""
    return t.flatten(2).transpose(1, 2).contiguous()


def plan_aggregation(
    kind: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    budget_mb: Optional[float],
    warned: Optional[Set[tuple]] = None,
    triton: bool = False,
    unary: bool = False,
) -> PathChoice:
    """The policy's path for aggregating q [B, N, D], k [B, M, D], v [B, M, E] of ``kind``.

    The compute dtype is autocast's where it is on; ``budget_mb`` None is the device's default.
    Warns when a set budget is below what even the chosen path needs (:func:`peak_bytes`); the
    device's default is a guide, not a promise, and does not warn. ``warned`` (a block's set)
    limits that to one warning per budget, dtype and widths, whatever the map sizes.
    ``triton``: the caller asks for the Triton kernels; a ValueError where they cannot run
    (unless traced: a trace records the policy's portable path). ``unary``: DNL's unary term
    also sums v (:class:`AggregationCall`).
    """
    device = v.device
    dtype = compute_dtype(device.type, v.dtype)
    tracing = is_tracing()
    triton = triton and not tracing  # a trace records the portable path
    if triton and not triton_runs_on(device.type):
        raise ValueError(
            f"use_triton=True: the Triton kernels need {triton_needs()}; got {device.type!r} "
            "tensors"
        )
    if triton and dtype not in TRITON_DTYPES:
        raise ValueError(f"use_triton=True: compute dtype {dtype} is not one of {TRITON_DTYPES}")
    call = AggregationCall(
        kind=kind,
        device_type=device.type,
        dtype=dtype,
        batch=q.shape[0],
        num_queries=q.shape[1],
        num_keys=k.shape[1],
        query_width=q.shape[-1],
        value_width=v.shape[-1],
        needs_grad=torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)),
        budget_bytes=budget_bytes(budget_mb, device),
        tf32=dtype == torch.float32 and tf32_allowed(device.type),
        tracing=tracing,
        compiled=tracing and is_compiled(),
        triton=triton,
        unary=unary,
        shared_keys=k is q,
    )
    choice = choose_path(call)
    need = peak_bytes(call, choice)
    key = (budget_mb, call.dtype, call.query_width, call.value_width)
    if budget_mb is not None and need > call.budget_bytes and key not in (warned or ()):
        if warned is not None:
            warned.add(key)
        rows = (
            f" in chunks of {choice.rows} query rows" if choice.path.startswith("chunked") else ""
        )
        warnings.warn(
            f"affinity_budget_mb={budget_mb:g} cannot be met by this aggregation (B {call.batch}, "
            f"N {call.num_queries}, M {call.num_keys}, widths {call.query_width}/"
            f"{call.value_width}, {call.dtype}): path {choice.path!r}{rows} holds about "
            f"{need / 2**20:.3g} MiB at its peak, the least this policy can do; raise the budget "
            "to at least that",
            stacklevel=3,
        )
    return choice


def _row_slices(num_rows: int, rows: int) -> List[slice]:
    return [slice(start, start + rows) for start in range(0, num_rows, rows)]


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b, with acc kept in at least fp32 across chunks (16-bit operands: their product
    is added in fp32 on CUDA, rounded to 16 bits first where it cannot be, :func:`fp32_copies`)."""
    if acc.dtype == a.dtype:
        acc.baddbmm_(a, b)
    elif fp32_copies(a.device.type, a.dtype):
        acc.add_(torch.bmm(a, b))
    else:
        acc.add_(torch.bmm(a, b, out_dtype=acc.dtype))


def _accumulator(shape, like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros(shape, dtype=torch.promote_types(like.dtype, torch.float32))


def _is_half(t: torch.Tensor) -> bool:
    return t.dtype.itemsize < 4


def _fp32_operand(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the right operand of :func:`_fp32_product`: an fp32 copy of a 16-bit ``t`` where
    torch cannot multiply 16-bit matrices into an fp32 result (the CPU), else ``t`` itself."""
    return t.float() if fp32_copies(t.device.type, t.dtype) else t


def _fp32_product(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * (a @ b) for a [B, n, W] and b [B, W, M] (from :func:`_fp32_operand`) in at least
    fp32: 16-bit operands are multiplied exactly and summed in fp32, as flash attention forms its
    logits, straight into fp32 on CUDA and through fp32 copies elsewhere."""
    if a.dtype == b.dtype:
        out = torch.bmm(a, b, out_dtype=torch.float32) if _is_half(a) else torch.bmm(a, b)
    else:
        out = torch.bmm(a.to(b.dtype), b)
    return out if scale == 1.0 else out.mul_(scale)


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """rowsum(a * b) [B, n, 1] of a, b [B, n, E] in at least fp32 (delta = dO . O: in 16 bits
    its rounding would shift every dS_ij of the row)."""
    acc_dtype = torch.promote_types(a.dtype, torch.float32)
    return (a.to(acc_dtype) * b.to(acc_dtype)).sum(dim=-1, keepdim=True)


# SDPA's kernels on the ``efficient`` path: the memory-efficient one wherever it runs, else math.
_EFFICIENT_KERNELS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _fused_attention(q, k, v, scale: float, efficient: bool = False) -> torch.Tensor:
    """SDPA on [B, 1, n, W] contiguous copies, so that a fused kernel runs forward and backward.

    The CPU flash kernel needs the value as wide as the query (else SDPA silently switches to the
    math kernel, which materialises N x M): there the narrower tensors are zero-padded, which
    changes neither q_i . k_j nor the kept value columns. CUDA calls are never padded (the policy
    sends only equal widths there, or a trace).

    ``efficient`` (the ``efficient`` path): nothing is padded and SDPA may use only its
    memory-efficient kernel, which takes a value narrower than the keys (the Gaussian's C/2
    beside C) and holds nothing N x M. That kernel runs on CUDA in fp32, fp16 and bf16; elsewhere
    (the CPU, float64) SDPA's math kernel computes the same numbers through the N x M affinity,
    so a forced ``efficient`` there checks the path's results, not its memory.
    """
    pad = q.device.type == "cpu" and not efficient
    width = max(q.shape[-1], v.shape[-1]) if pad else None
    same_keys = k is q  # "gaussian" without sub-sampling: one copy serves both

    def operand(t):
        if width is not None and t.shape[-1] != width:
            t = F.pad(t, (0, width - t.shape[-1]))
        return t.unsqueeze(1).contiguous()

    q4, v4 = operand(q), operand(v)
    k4 = q4 if same_keys else operand(k)
    with sdpa_kernel(_EFFICIENT_KERNELS) if efficient else contextlib.nullcontext():
        y = F.scaled_dot_product_attention(q4, k4, v4, scale=scale).squeeze(1)
    # A narrow copy lets the padded result be freed at once.
    return y if y.shape[-1] == v.shape[-1] else y[..., : v.shape[-1]].contiguous()


def _softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim; in place on the CPU, a new tensor elsewhere (not yet verified
    in place there)."""
    if logits.device.type == "cpu":
        return torch.ops.aten._softmax.out(logits, -1, False, out=logits)
    return torch.softmax(logits, dim=-1)


def _logit_grad(p, grad_out, v_t, delta=None, scale: float = 1.0):
    """scale * dS = scale * P * (dO V^T - delta) [B, n, M] in at least fp32 for the rows P
    [B, n, M] of a softmax and their output gradient dO [B, n, E], with V^T [B, E, M] (from
    :func:`_fp32_operand`) and delta = rowsum(dO * O) [B, n, 1]. ``delta`` None: the P-weighted
    mean of dO V^T over these rows, sum_j P_ij (dO V^T)_ij / sum_j P_ij, consistent with the P
    that dS is formed from where that P or O was rounded to 16 bits (with one key taking most of
    the weight, dO V^T - delta cancels to the few bits that a 16-bit O's delta gets right)."""
    grad_p = _fp32_product(grad_out, v_t, scale)
    if delta is None:
        # einsum: no [B, n, M] temporary
        delta = torch.einsum("bnm,bnm->bn", p, grad_p).div_(p.sum(dim=-1)).unsqueeze(-1)
    else:
        delta = delta * scale
    return grad_p.sub_(delta).mul_(p)


def _kept_half_probabilities(q, k, scale: float) -> torch.Tensor:
    """P = softmax(scale Q K^T) [B, N, M] in q's 16-bit dtype, each chunk of rows formed from
    fp32 logits (:func:`kept_chunk_rows`): rounding the logits to 16 bits would shift each P_ij
    by up to 2^-9 of its logit in bf16, and the scale applied to 16-bit queries would round them."""
    p = q.new_empty(q.shape[0], q.shape[1], k.shape[1])
    k_t = _fp32_operand(k.transpose(1, 2))
    for s in _row_slices(q.shape[1], kept_chunk_rows(q.shape[1])):
        p[:, s] = _softmax_rows(_fp32_product(q[:, s], k_t, scale))
    return p


def _kept_half_logit_grad_(p, grad_out, v, scale: float) -> torch.Tensor:
    """scale * dS written over the 16-bit P [B, N, M] that it is formed from, in fp32 chunks of
    rows (:func:`kept_chunk_rows`; an fp32 copy of P's rows and dO V^T); returns P, now holding
    scale * dS."""
    v_t = _fp32_operand(v.transpose(1, 2))
    for s in _row_slices(p.shape[1], kept_chunk_rows(p.shape[1])):
        p[:, s] = _logit_grad(p[:, s].float(), grad_out[:, s], v_t, None, scale)
    return p


class _KeptAffinityAttention(torch.autograd.Function):
    """softmax(s Q K^T) V with P = softmax(s Q K^T) [B, N, M] built once and kept.

    The scale is applied to Q (O(N D)) rather than to the logits (O(N M)); the softmax is one
    fused pass, on the CPU in place (its kernel reads each row before writing it). At most two
    N x M tensors are alive: logits and P in the forward (one on the CPU), P and its gradient in
    the backward. Backward, with delta_i = dO_i . O_i (= sum_j P_ij dP_ij, in at least fp32):
    dV = P^T dO, dS = P * (dO V^T - delta), dQ = s dS K, dK = dS^T (s Q). ``k`` None: the keys
    are the queries (one tensor: torch.compile traces no Function given a tensor twice), and dQ
    gets dK added.

    In fp16 / bf16, as in flash attention, P and dS are rounded to that dtype only to be
    multiplied: the logits, dO V^T and dS are formed in fp32 a chunk of rows at a time (Q stays
    unscaled, the scale multiplies the fp32 products), and dS is written over the kept P. delta
    is taken over P's rounded rows (:func:`_logit_grad`), not from the 16-bit output. The 16-bit
    P and at most two [B, N/4, M] fp32 chunks are alive (one in the forward on the CPU, whose
    softmax is in place): two 16-bit affinities' bytes.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale):
        ctx.shared_keys = k is None
        k = q if k is None else k
        if _is_half(v):
            q_kept, p = q, _kept_half_probabilities(q, k, scale)
        else:
            q_kept = q * scale
            p = _softmax_rows(torch.bmm(q_kept, k.transpose(1, 2)))  # [B, N, M]
        out = torch.bmm(p, v)
        ctx.scale = scale
        ctx.save_for_backward(q_kept, k, v, out, p)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_kept, k, v, out, p = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_v = torch.bmm(p.transpose(1, 2), grad_out)
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, grad_v, None  # e.g. "gaussian" on an input that needs no gradient
        if _is_half(v):
            # s dS over P (a second backward through this graph fails on P's version counter)
            grad_s = _kept_half_logit_grad_(p, grad_out, v, ctx.scale)
            del p
            grad_q = torch.bmm(grad_s, k)
        else:
            grad_s = _logit_grad(p, grad_out, v.transpose(1, 2), _row_dots(grad_out, out))
            del p
            grad_q = torch.bmm(grad_s, k).mul_(ctx.scale)
        grad_k = torch.bmm(grad_s.transpose(1, 2), q_kept)
        if ctx.shared_keys:
            return grad_q.add_(grad_k), None, grad_v, None
        return grad_q, grad_k, grad_v, None


class _ChunkedSoftmaxAttention(torch.autograd.Function):
    """softmax(s Q K^T) V in chunks of ``rows`` queries, never more than two [B, rows, M] alive.

    The forward keeps only the log-sum-exp L_i = log sum_j exp(s q_i . k_j) ([B, N], at least
    fp32); the backward recomputes each chunk's P = exp(s Q K^T - L) and applies the formulas of
    :class:`_KeptAffinityAttention` to it, summing dK and dV over chunks in at least fp32.

    In fp16 / bf16 the chunks are fp32, as in flash attention: logits, P, dO V^T and dS are
    formed in fp32 (Q stays unscaled, the scale multiplies the fp32 products) and rounded to the
    16-bit dtype only to be multiplied; delta comes from each chunk's fp32 P and dO V^T rather
    than from the rounded output. A backward then holds two fp32 chunks at its peak, a forward
    alone one fp32 chunk and its 16-bit copy.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale, rows):
        half = _is_half(v)
        # 16-bit queries stay unscaled (q * s would round them); fp32 ones carry the scale
        q_kept, alpha = (q, scale) if half else (q * scale, 1.0)
        k_t = _fp32_operand(k.transpose(1, 2))
        out = v.new_empty(q.shape[0], q.shape[1], v.shape[-1])
        lse = q.new_empty(q.shape[:2], dtype=torch.promote_types(q.dtype, torch.float32))
        for s in _row_slices(q.shape[1], rows):
            p = _fp32_product(q_kept[:, s], k_t, alpha)  # logits [B, n, M]
            top = p.amax(dim=-1, keepdim=True)
            p = p.sub_(top).exp_()
            total = p.sum(dim=-1, keepdim=True)
            if half:  # normalised in fp32, rounded once to be multiplied
                out[:, s] = torch.bmm(p.div_(total).to(v.dtype), v)
            else:
                out[:, s] = torch.bmm(p, v).div_(total)
            lse[:, s] = (top + total.log()).squeeze(-1)
            del p  # before the next chunk's logits are allocated
        ctx.rows = rows
        ctx.scale = scale
        ctx.save_for_backward(q_kept, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_kept, k, v, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        need_qk = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        # 16-bit: the scale multiplies the fp32 logits and dS, delta comes from each chunk;
        # fp32: Q carries the scale
        half = _is_half(v)
        alpha = ctx.scale if half else 1.0
        delta = None if half else _row_dots(grad_out, out)  # [B, N, 1]
        k_t = _fp32_operand(k.transpose(1, 2))
        v_t = _fp32_operand(v.transpose(1, 2)) if need_qk else None
        grad_v = _accumulator(v.shape, v)
        grad_k = _accumulator(k.shape, k) if need_qk else None
        grad_q = torch.empty_like(q_kept) if need_qk else None
        for s in _row_slices(q_kept.shape[1], ctx.rows):
            p = _fp32_product(q_kept[:, s], k_t, alpha).sub_(lse[:, s, None]).exp_()  # [B, n, M]
            _accumulate(grad_v, p.to(v.dtype).transpose(1, 2), grad_out[:, s])
            if not need_qk:
                continue
            grad_s = _logit_grad(p, grad_out[:, s], v_t, None if half else delta[:, s], alpha)
            del p
            grad_s = grad_s.to(k.dtype)
            grad_q[:, s] = torch.bmm(grad_s, k) if half else torch.bmm(grad_s, k).mul_(ctx.scale)
            _accumulate(grad_k, grad_s.transpose(1, 2), q_kept[:, s])
            del grad_s  # before the next chunk's P is allocated
        grad_v = grad_v.to(v.dtype)
        if not need_qk:
            return None, None, grad_v, None, None
        return grad_q, grad_k.to(k.dtype), grad_v, None, None


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    plan: Optional[PathChoice] = None,
    budget_mb: Optional[float] = None,
) -> torch.Tensor:
    """y_i = sum_j softmax_j(scale * q_i . k_j) v_j for q [B, N, D], k [B, M, D], v [B, M, E].

    Runs ``plan`` (default: :func:`plan_aggregation` with ``budget_mb``): the fused SDPA kernel,
    the kept affinity, the chunked recomputation, the Triton kernels, or SDPA's memory-efficient
    kernel alone (``efficient``, never chosen by the policy yet). Pass ``k is q`` for identity
    embeddings.
    """
    if plan is None:
        plan = plan_aggregation(SOFTMAX, q, k, v, budget_mb)
    dtype = compute_dtype(v.device.type, v.dtype)
    same_keys = k is q
    q, v = q.to(dtype), v.to(dtype)
    k = q if same_keys else k.to(dtype)
    if plan.path in (FUSED, EFFICIENT):
        return _fused_attention(q, k, v, scale, efficient=plan.path == EFFICIENT)
    # The products below run in ``dtype`` as they are; autocast would promote the softmax to fp32.
    with torch.autocast(v.device.type, enabled=False):
        if plan.path == KEPT:
            return _KeptAffinityAttention.apply(q, None if same_keys else k, v, scale)
        if plan.path == CHUNKED:
            return _ChunkedSoftmaxAttention.apply(q, k, v, scale, plan.rows)
        if plan.path == TRITON:
            return TritonSoftmaxAttention.apply(q, k, v, scale)
    paths = (FUSED, KEPT, CHUNKED, TRITON, EFFICIENT)
    raise ValueError(f"softmax_attention: path {plan.path!r} is not one of {paths}")


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


class _ChunkedReluPairSum(torch.autograd.Function):
    """y_i = sum_j ReLU(a_i + b_j) v_j as the broadcast R = ReLU(a 1^T + 1 b^T) in query chunks.

    One [B, rows, M] chunk of R at a time in the forward; the backward recomputes it and holds
    it with its gradient dZ = (dy v^T) * [R > 0]: da = dZ 1, db = dZ^T 1, dv = R^T dy.
    """

    @staticmethod
    def forward(ctx, a, b, v, rows):
        out = v.new_empty(a.shape[0], a.shape[1], v.shape[-1])
        b_row = b.unsqueeze(1)
        for s in _row_slices(a.shape[1], rows):
            out[:, s] = torch.bmm(torch.add(a[:, s, None], b_row).relu_(), v)
        ctx.rows = rows
        ctx.save_for_backward(a, b, v)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        a, b, v = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        b_row, v_t = b.unsqueeze(1), v.transpose(1, 2)
        grad_a = torch.empty_like(a)
        grad_b = _accumulator(b.shape, b)
        grad_v = _accumulator(v.shape, v)
        for s in _row_slices(a.shape[1], ctx.rows):
            r = torch.add(a[:, s, None], b_row).relu_()  # [B, n, M]
            _accumulate(grad_v, r.transpose(1, 2), grad_out[:, s])
            grad_z = torch.bmm(grad_out[:, s], v_t).mul_(r.sign_())  # ReLU'(0) = 0
            del r
            grad_a[:, s] = grad_z.sum(dim=-1)
            grad_b.add_(grad_z.sum(dim=1))
            del grad_z
        return grad_a, grad_b.to(b.dtype), grad_v.to(v.dtype), None


def concatenation_sum(
    a: torch.Tensor, b: torch.Tensor, v: torch.Tensor, plan: PathChoice
) -> torch.Tensor:
    """y_i = sum_j ReLU(a_i + b_j) v_j by ``plan``: sorted key terms, query chunks or the
    Triton kernels."""
    if plan.path in (CHUNKED_CONCAT, TRITON_CONCAT):
        dtype = compute_dtype(v.device.type, v.dtype)
        with torch.autocast(v.device.type, enabled=False):
            if plan.path == TRITON_CONCAT:
                # The scalar terms stay fp32 (R's tiles are formed in fp32, then rounded).
                return TritonReluPairSum.apply(a.float(), b.float(), v.to(dtype))
            return _ChunkedReluPairSum.apply(a.to(dtype), b.to(dtype), v.to(dtype), plan.rows)
    if plan.path == SORTED_CONCAT:
        return relu_pair_sum(a, b, v)
    paths = (SORTED_CONCAT, CHUNKED_CONCAT, TRITON_CONCAT)
    raise ValueError(f"concatenation_sum: path {plan.path!r} is not one of {paths}")
