"""y = softmax(s Q K^T) V as Triton kernels: flash-style, nothing N x M stored, any widths.

q [B, N, D], k [B, M, D], v [B, M, E]. The forward keeps the output and the log-sum-exp
L_i = log sum_j exp(s q_i . k_j) (fp32) only; the backward forms each tile of
P = exp(s Q K^T - L) again from Q and K. With delta_i = dO_i . O_i:
dV = P^T dO, dS = P * (dO V^T - delta), dQ = s dS K, dK = dS^T (s Q).

Widths: the logits are summed over D in BLOCK_W-wide column blocks, so D is unbounded; each
output (O and dV, E wide; dQ and dK, D wide) is split into BLOCK_W-wide column blocks across
programs, and each of those programs forms its logits (and dO V^T) on its own. That keeps the
accumulators small for widths up to 1024 at the price of repeating the logits product once per
column block: for D = E <= BLOCK_W (64-256) a training step costs nine N x M x D products (the
explicit formula six, plus its N x M tensors), and with s column blocks 5 s + 4.

Products run in the inputs' dtype (fp16/bf16 on tensor cores; fp32 in TF32 when torch allows
TF32 matmuls, else in full fp32) with fp32 accumulation and softmax statistics.
"""

import torch

from .triton_support import autotuned, check_dtypes, ieee, launch_sizes, on_device, triton

if triton is not None:  # the package imports without triton; its kernels need it
    import triton.language as tl

    from .triton_support import (
        jit_for_any_map_size,
        load_tile,
        load_vector,
        row_dots,
        store_tile,
        tile_product,
    )

# Launch configurations the autotuner times on CUDA (triton_support says how they are written;
# not yet tuned on hardware). All compile for sm_80 and sm_90 within their shared memory in every
# dtype (tests/layers/test_triton_compile.py).
# 256-wide columns take res3's embedded Gaussian and DNL (D = E = 256) without a column split.
FORWARD_CONFIGS = (
    (64, 64, 64, 4, 2),
    (128, 64, 64, 8, 2),
    (64, 32, 128, 4, 2),
    (128, 32, 128, 8, 2),
    (64, 32, 256, 8, 2),
)
BACKWARD_CONFIGS = (
    (64, 64, 64, 4, 2),
    (32, 64, 64, 4, 2),
    (64, 32, 128, 8, 2),
    (32, 32, 128, 4, 2),
    (32, 32, 256, 8, 2),
)

if triton is not None:

    @jit_for_any_map_size
    def _attention_forward_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        out_ptr,
        lse_ptr,
        N,
        M,
        D,
        E,
        IEEE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        """out [B, N, E] = softmax(Q K^T) V and lse [B, N] for the scaled queries q [B, N, D],
        k [B, M, D], v [B, M, E]; program (row block, output column block, batch). A running
        row maximum and sum rescale the accumulator as key blocks arrive."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        batch = tl.program_id(2).to(tl.int64)
        q_base, k_base = q_ptr + batch * N * D, k_ptr + batch * M * D
        top = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
        total = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
        for start in range(0, M, BLOCK_M):
            keys = start + tl.arange(0, BLOCK_M)
            logits = row_dots(q_base, k_base, rows, keys, N, M, D, IEEE, BLOCK_N, BLOCK_M, BLOCK_W)
            logits = tl.where(keys[None, :] < M, logits, float("-inf"))
            new_top = tl.maximum(top, tl.max(logits, axis=1))  # finite: each block has a key
            rescale = tl.exp(top - new_top)
            p = tl.exp(logits - new_top[:, None])
            total = total * rescale + tl.sum(p, axis=1)
            v = load_tile(v_ptr + batch * M * E, keys, cols, M, E)
            acc = tile_product(p.to(v.dtype), v, acc * rescale[:, None], IEEE)
            top = new_top
        store_tile(out_ptr + batch * N * E, acc / total[:, None], rows, cols, N, E)
        if tl.program_id(1) == 0:
            tl.store(lse_ptr + batch * N + rows, top + tl.log(total), mask=rows < N)

    @triton.jit
    def _probabilities(
        q_base,
        k_base,
        lse,
        rows,
        keys,
        N,
        M,
        D,
        IEEE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        """The tile P = exp(Q K^T - L) [BLOCK_N, BLOCK_M] of the forward's softmax, zero outside
        the map; ``lse`` holds L of ``rows``."""
        logits = row_dots(q_base, k_base, rows, keys, N, M, D, IEEE, BLOCK_N, BLOCK_M, BLOCK_W)
        inside = (rows[:, None] < N) & (keys[None, :] < M)
        return tl.where(inside, tl.exp(logits - lse[:, None]), 0.0)

    @jit_for_any_map_size
    def _attention_backward_kv_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        grad_out_ptr,
        lse_ptr,
        delta_ptr,
        grad_k_ptr,
        grad_v_ptr,
        N,
        M,
        D,
        E,
        WITH_KEYS: tl.constexpr,
        IEEE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        """Column block c of dV = P^T dO [B, M, E] and, with WITH_KEYS, of
        dK = (P * (dO V^T - delta))^T Q [B, M, D] (Q scaled); program (key block, c, batch)."""
        keys = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        first_col = tl.program_id(1) * BLOCK_W
        cols = first_col + tl.arange(0, BLOCK_W)
        batch = tl.program_id(2).to(tl.int64)
        q_base, k_base = q_ptr + batch * N * D, k_ptr + batch * M * D
        v_base, grad_out_base = v_ptr + batch * M * E, grad_out_ptr + batch * N * E
        acc_v = tl.zeros((BLOCK_M, BLOCK_W), dtype=tl.float32)
        acc_k = tl.zeros((BLOCK_M, BLOCK_W), dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            rows = start + tl.arange(0, BLOCK_N)
            lse = load_vector(lse_ptr + batch * N, rows, N)
            p = _probabilities(
                q_base, k_base, lse, rows, keys, N, M, D, IEEE, BLOCK_N, BLOCK_M, BLOCK_W
            )
            if first_col < E:
                grad_out = load_tile(grad_out_base, rows, cols, N, E)
                acc_v = tile_product(tl.trans(p.to(grad_out.dtype)), grad_out, acc_v, IEEE)
            if WITH_KEYS:
                if first_col < D:
                    grad_p = row_dots(
                        grad_out_base, v_base, rows, keys, N, M, E, IEEE, BLOCK_N, BLOCK_M, BLOCK_W
                    )
                    delta = load_vector(delta_ptr + batch * N, rows, N)
                    grad_s = p * (grad_p - delta[:, None])
                    q = load_tile(q_base, rows, cols, N, D)
                    acc_k = tile_product(tl.trans(grad_s.to(q.dtype)), q, acc_k, IEEE)
        store_tile(grad_v_ptr + batch * M * E, acc_v, keys, cols, M, E)
        if WITH_KEYS:
            store_tile(grad_k_ptr + batch * M * D, acc_k, keys, cols, M, D)

    @jit_for_any_map_size
    def _attention_backward_q_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        grad_out_ptr,
        lse_ptr,
        delta_ptr,
        grad_q_ptr,
        N,
        M,
        D,
        E,
        IEEE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        """Column block c of (P * (dO V^T - delta)) K [B, N, D] (dQ before the scale);
        program (row block, c, batch)."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        batch = tl.program_id(2).to(tl.int64)
        q_base, k_base = q_ptr + batch * N * D, k_ptr + batch * M * D
        v_base, grad_out_base = v_ptr + batch * M * E, grad_out_ptr + batch * N * E
        lse = load_vector(lse_ptr + batch * N, rows, N)
        delta = load_vector(delta_ptr + batch * N, rows, N)
        acc = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
        for start in range(0, M, BLOCK_M):
            keys = start + tl.arange(0, BLOCK_M)
            p = _probabilities(
                q_base, k_base, lse, rows, keys, N, M, D, IEEE, BLOCK_N, BLOCK_M, BLOCK_W
            )
            grad_p = row_dots(
                grad_out_base, v_base, rows, keys, N, M, E, IEEE, BLOCK_N, BLOCK_M, BLOCK_W
            )
            grad_s = p * (grad_p - delta[:, None])
            k = load_tile(k_base, keys, cols, M, D)
            acc = tile_product(grad_s.to(k.dtype), k, acc, IEEE)
        store_tile(grad_q_ptr + batch * N * D, acc, rows, cols, N, D)

    _attention_forward = autotuned(_attention_forward_kernel, FORWARD_CONFIGS, ["D", "E", "IEEE"])
    _attention_backward_kv = autotuned(
        _attention_backward_kv_kernel, BACKWARD_CONFIGS, ["D", "E", "WITH_KEYS", "IEEE"]
    )
    _attention_backward_q = autotuned(
        _attention_backward_q_kernel, BACKWARD_CONFIGS, ["D", "E", "IEEE"]
    )


def _grid(blocks: int, block_name: str, width: int, batch: int):
    """Launch grid (blocks of ``block_name``, column blocks of ``width``, batch)."""

    def grid(meta):
        return (
            triton.cdiv(blocks, meta[block_name]),
            triton.cdiv(width, meta["BLOCK_W"]),
            batch,
        )

    return grid


class TritonSoftmaxAttention(torch.autograd.Function):
    """softmax(s Q K^T) V for q [B, N, D], k [B, M, D], v [B, M, E] of one dtype (fp32, fp16
    or bf16); keeps Q scaled, K, V, the output and L [B, N] (fp32), nothing N x M."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        check_dtypes("TritonSoftmaxAttention", {}, {"q": q, "k": k, "v": v})
        q_scaled = (q * scale).contiguous()
        k, v = k.contiguous(), v.contiguous()
        (batch, num_queries, width), (num_keys, value_width) = q.shape, v.shape[1:]
        out = v.new_empty(batch, num_queries, value_width)
        lse = q.new_empty(batch, num_queries, dtype=torch.float32)
        grid = _grid(num_queries, "BLOCK_N", value_width, batch)
        with on_device(v):
            _attention_forward[grid](
                q_scaled,
                k,
                v,
                out,
                lse,
                num_queries,
                num_keys,
                width,
                value_width,
                IEEE=ieee(v.dtype),
                **launch_sizes(),
            )
        ctx.scale = scale
        ctx.save_for_backward(q_scaled, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_scaled, k, v, out, lse = ctx.saved_tensors
        grad_out = grad_out.to(v.dtype).contiguous()
        need_qk = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        (batch, num_queries, width), (num_keys, value_width) = q_scaled.shape, v.shape[1:]
        delta = (grad_out.float() * out.float()).sum(dim=-1)  # [B, N]
        grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)
        sizes = (num_queries, num_keys, width, value_width)
        widest = max(width, value_width) if need_qk else value_width
        with on_device(v):
            _attention_backward_kv[_grid(num_keys, "BLOCK_M", widest, batch)](
                q_scaled,
                k,
                v,
                grad_out,
                lse,
                delta,
                grad_k,
                grad_v,
                *sizes,
                WITH_KEYS=need_qk,
                IEEE=ieee(v.dtype),
                **launch_sizes(),
            )
            if not need_qk:
                return None, None, grad_v, None
            grad_q = torch.empty_like(q_scaled)
            _attention_backward_q[_grid(num_queries, "BLOCK_N", width, batch)](
                q_scaled,
                k,
                v,
                grad_out,
                lse,
                delta,
                grad_q,
                *sizes,
                IEEE=ieee(v.dtype),
                **launch_sizes(),
            )
        return grad_q.mul_(ctx.scale), grad_k, grad_v, None
