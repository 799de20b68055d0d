"""The concatenation's pairwise sum y_i = sum_j ReLU(a_i + b_j) v_j as Triton kernels.

Nothing N x M-shaped is stored: each program forms its tile of R = ReLU(a 1^T + 1 b^T) from the
two vectors (an add and a max, no memory traffic) and feeds it to a tensor-core product. Two
kernels cover the forward and the whole backward, with the roles of queries and keys swapped:

- ``relu_pair_product(x, y, w)``: out_i = sum_j ReLU(x_i + y_j) w_j, so y = that(a, b, v) and
  dv = that(b, a, dy) (since R^T = ReLU(b 1^T + 1 a^T));
- ``masked_pair_dot(x, y, p, q)``: out_i = sum_j [x_i + y_j > 0] (p_i . q_j), so
  da = that(a, b, dy, v) and db = that(b, a, v, dy) (ReLU'(0) = 0, as the other paths).

The products run in v's dtype (fp16/bf16 on tensor cores; fp32 in TF32 when torch allows TF32
matmuls, else in full fp32) and accumulate in fp32. Cost: four N x M x E products per training
step (the explicit formula takes three, and writes and rereads N x M tensors).
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
# not yet tuned on hardware). All compile for sm_80 and sm_90 within their shared memory
# (tests/layers/test_triton_compile.py).
PRODUCT_CONFIGS = (
    (64, 64, 64, 4, 3),
    (128, 64, 64, 8, 3),
    (64, 64, 128, 4, 3),
    (128, 32, 128, 8, 3),
)
PAIR_DOT_CONFIGS = (
    (64, 64, 64, 4, 3),
    (128, 64, 32, 8, 3),
    (64, 128, 32, 4, 3),
    (32, 64, 64, 4, 2),
)

if triton is not None:

    @jit_for_any_map_size
    def _relu_pair_product_kernel(
        x_ptr,
        y_ptr,
        w_ptr,
        out_ptr,
        N,
        M,
        E,
        IEEE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        """out [B, N, E] = ReLU(x 1^T + 1 y^T) @ w for x [B, N], y [B, M], w [B, M, E]
        (contiguous); program (row block, column block, batch). The width is split across
        programs: forming R's tile again is an add and a max, far cheaper than holding a
        [rows, E] accumulator for E up to 1024."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        batch = tl.program_id(2).to(tl.int64)
        x = load_vector(x_ptr + batch * N, rows, N)
        acc = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
        for start in range(0, M, BLOCK_M):
            keys = start + tl.arange(0, BLOCK_M)
            y = load_vector(y_ptr + batch * M, keys, M)
            # Rows of w past M load as zeros, so R's padding columns add nothing.
            w = load_tile(w_ptr + batch * M * E, keys, cols, M, E)
            r = tl.maximum(x[:, None] + y[None, :], 0.0).to(w.dtype)
            acc = tile_product(r, w, acc, IEEE)
        store_tile(out_ptr + batch * N * E, acc, rows, cols, N, E)

    @jit_for_any_map_size
    def _masked_pair_dot_kernel(
        x_ptr,
        y_ptr,
        p_ptr,
        q_ptr,
        out_ptr,
        N,
        M,
        E,
        IEEE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        """out [B, N] (fp32) = rowsum([x 1^T + 1 y^T > 0] * (p @ q^T)) for x [B, N], y [B, M],
        p [B, N, E], q [B, M, E] (contiguous); program (row block, batch)."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        batch = tl.program_id(1).to(tl.int64)
        x = load_vector(x_ptr + batch * N, rows, N)
        total = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for start in range(0, M, BLOCK_M):
            keys = start + tl.arange(0, BLOCK_M)
            y = load_vector(y_ptr + batch * M, keys, M)
            dots = row_dots(
                p_ptr + batch * N * E, q_ptr + batch * M * E, rows, keys, N, M, E, IEEE,
                BLOCK_N, BLOCK_M, BLOCK_W,
            )  # fmt: skip
            # Keys past M have q = 0, hence dots = 0 there.
            total += tl.sum(tl.where(x[:, None] + y[None, :] > 0.0, dots, 0.0), axis=1)
        tl.store(out_ptr + batch * N + rows, total, mask=rows < N)

    _relu_pair_product = autotuned(_relu_pair_product_kernel, PRODUCT_CONFIGS, ["E", "IEEE"])
    _masked_pair_dot = autotuned(_masked_pair_dot_kernel, PAIR_DOT_CONFIGS, ["E", "IEEE"])


def relu_pair_product(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out_i = sum_j ReLU(x_i + y_j) w_j for x [B, N], y [B, M] (fp32), w [B, M, E]; [B, N, E]
    in w's dtype."""
    batch, num_rows = x.shape
    num_cols, width = w.shape[1], w.shape[2]
    x, y, w = x.contiguous(), y.contiguous(), w.contiguous()
    out = w.new_empty(batch, num_rows, width)

    def grid(meta):
        return (
            triton.cdiv(num_rows, meta["BLOCK_N"]),
            triton.cdiv(width, meta["BLOCK_W"]),
            batch,
        )

    with on_device(w):
        _relu_pair_product[grid](
            x, y, w, out, num_rows, num_cols, width, IEEE=ieee(w.dtype), **launch_sizes()
        )
    return out


def masked_pair_dot(
    x: torch.Tensor, y: torch.Tensor, p: torch.Tensor, q: torch.Tensor
) -> torch.Tensor:
    """out_i = sum_j [x_i + y_j > 0] (p_i . q_j) for x [B, N], y [B, M] (fp32), p [B, N, E],
    q [B, M, E] of one dtype; [B, N] in fp32."""
    batch, num_rows = x.shape
    num_cols, width = q.shape[1], q.shape[2]
    x, y, p, q = x.contiguous(), y.contiguous(), p.contiguous(), q.contiguous()
    out = x.new_empty(batch, num_rows, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(num_rows, meta["BLOCK_N"]), batch)

    with on_device(q):
        _masked_pair_dot[grid](
            x, y, p, q, out, num_rows, num_cols, width, IEEE=ieee(q.dtype), **launch_sizes()
        )
    return out


class TritonReluPairSum(torch.autograd.Function):
    """y_i = sum_j ReLU(a_i + b_j) v_j for a [B, N], b [B, M] (fp32), v [B, M, E] (fp32, fp16 or
    bf16); y in v's dtype, nothing N x M stored.

    Backward: dv = R^T dy, da = rowsum(dZ), db = colsum(dZ) with dZ = (dy v^T) * [R > 0].
    """

    @staticmethod
    def forward(ctx, a, b, v):
        check_dtypes("TritonReluPairSum", {"a": a, "b": b}, {"v": v})
        ctx.save_for_backward(a, b, v)
        return relu_pair_product(a, b, v)

    @staticmethod
    def backward(ctx, grad_out):
        a, b, v = ctx.saved_tensors
        grad_out = grad_out.to(v.dtype).contiguous()
        need_a, need_b, need_v = ctx.needs_input_grad
        grad_a = masked_pair_dot(a, b, grad_out, v) if need_a else None
        grad_b = masked_pair_dot(b, a, v, grad_out) if need_b else None
        grad_v = relu_pair_product(b, a, grad_out) if need_v else None
        return grad_a, grad_b, grad_v
