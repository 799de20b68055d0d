"""The concatenation's pairwise sum y_i = sum_j ReLU(a_i + b_j) v_j as Triton kernels.

Nothing N x M-shaped is stored: each program rebuilds its tile of R = ReLU(a 1^T + 1 b^T) from
the two vectors (an add and a max, no memory traffic) and feeds it to a tensor-core product.
Two kernels cover the forward and the whole backward, with the roles of queries and keys swapped:

- ``relu_pair_product(x, y, w)``: out_i = sum_j ReLU(x_i + y_j) w_j, so y = that(a, b, v) and
  dv = that(b, a, dy) (since R^T = ReLU(b 1^T + 1 a^T));
- ``masked_pair_dot(x, y, p, q)``: out_i = sum_j [x_i + y_j > 0] (p_i . q_j), so
  da = that(a, b, dy, v) and db = that(b, a, v, dy) (ReLU'(0) = 0, as the other paths).

The products run in v's dtype (fp16/bf16 on tensor cores; fp32 in TF32 when torch allows TF32
matmuls, else in full fp32) and accumulate in fp32. Cost: four N x M x E products per training
step (the explicit formula takes three and two N x M tensors). Kernels compile on CUDA; on the
CPU they run only in Triton's interpreter (``TRITON_INTERPRET=1`` set before import), which is
how the tests check them.
"""

import contextlib
import os

import torch

from .attention_policy import tf32_allowed

try:
    import triton
    import triton.language as tl
except ImportError:  # torch's CUDA builds ship triton; CPU-only builds may not
    triton = None


def _interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter: TRITON_INTERPRET, read as Triton does."""
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# Kernels are built at import, compiled or interpreted: the environment then decides.
_INTERPRETED = triton is not None and _interpreting()
# Launch configurations (BLOCK_N, BLOCK_M, BLOCK_E, warps, pipeline stages) the autotuner times on
# CUDA; not yet tuned on hardware. All compile for sm_80 and sm_90 within their shared memory
# (tests/layers/test_triton_compile.py). The interpreter runs 32-wide blocks.
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
# Dtypes the kernels take: what tensor cores multiply (fp32 as TF32 or in full precision).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_runs_on(device_type: str) -> bool:
    """Whether these kernels can run on ``device_type``: CUDA with triton installed, or any
    device under Triton's interpreter."""
    if triton is None:
        return False
    return _INTERPRETED or device_type == "cuda"


if triton is not None:
    # Triton's interpreter multiplies bf16 tiles wrongly (it reads their bits as another type):
    # there they are multiplied in fp32, which checks everything else the kernels do with bf16.
    _INTERPRETER_BF16_IN_FP32 = tl.constexpr(_INTERPRETED)

    @triton.jit
    def _product(x, y, acc, IEEE: tl.constexpr):
        """acc + x @ y; IEEE: fp32 operands without TF32."""
        if _INTERPRETER_BF16_IN_FP32 and x.dtype == tl.bfloat16:
            return tl.dot(x.to(tl.float32), y.to(tl.float32), acc)
        if IEEE:
            return tl.dot(x, y, acc, input_precision="ieee")
        return tl.dot(x, y, acc)

    @triton.jit
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
        BLOCK_E: tl.constexpr,
    ):
        """out [B, N, E] = ReLU(x 1^T + 1 y^T) @ w for x [B, N], y [B, M], w [B, M, E]
        (contiguous); program (row block, column block, batch). The width is split across
        programs: rebuilding R's tile is an add and a max, far cheaper than holding a [rows, E]
        accumulator for E up to 1024."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
        batch = tl.program_id(2).to(tl.int64)
        x = tl.load(x_ptr + batch * N + rows, mask=rows < N, other=0.0).to(tl.float32)
        col_ok = cols[None, :] < E
        acc = tl.zeros((BLOCK_N, BLOCK_E), dtype=tl.float32)
        for start in range(0, M, BLOCK_M):
            keys = start + tl.arange(0, BLOCK_M)
            y = tl.load(y_ptr + batch * M + keys, mask=keys < M, other=0.0).to(tl.float32)
            # Rows of w past M load as zeros, so R's padding columns add nothing.
            w = tl.load(
                w_ptr + (batch * M + keys[:, None]) * E + cols[None, :],
                mask=(keys[:, None] < M) & col_ok,
                other=0.0,
            )
            r = tl.maximum(x[:, None] + y[None, :], 0.0).to(w.dtype)
            acc = _product(r, w, acc, IEEE)
        out = out_ptr + (batch * N + rows[:, None]) * E + cols[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < N) & col_ok)

    @triton.jit
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
        BLOCK_E: tl.constexpr,
    ):
        """out [B, N] (fp32) = rowsum([x 1^T + 1 y^T > 0] * (p @ q^T)) for x [B, N], y [B, M],
        p [B, N, E], q [B, M, E] (contiguous); program (row block, batch)."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        batch = tl.program_id(1).to(tl.int64)
        x = tl.load(x_ptr + batch * N + rows, mask=rows < N, other=0.0).to(tl.float32)
        total = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for start in range(0, M, BLOCK_M):
            keys = start + tl.arange(0, BLOCK_M)
            y = tl.load(y_ptr + batch * M + keys, mask=keys < M, other=0.0).to(tl.float32)
            dots = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for col in range(0, E, BLOCK_E):
                cols = col + tl.arange(0, BLOCK_E)
                p = tl.load(
                    p_ptr + (batch * N + rows[:, None]) * E + cols[None, :],
                    mask=(rows[:, None] < N) & (cols[None, :] < E),
                    other=0.0,
                )
                q = tl.load(
                    q_ptr + (batch * M + keys[:, None]) * E + cols[None, :],
                    mask=(keys[:, None] < M) & (cols[None, :] < E),
                    other=0.0,
                )
                dots = _product(p, tl.trans(q), dots, IEEE)
            # Keys past M have q = 0, hence dots = 0 there.
            total += tl.sum(tl.where(x[:, None] + y[None, :] > 0.0, dots, 0.0), axis=1)
        tl.store(out_ptr + batch * N + rows, total, mask=rows < N)

    def _autotuned(kernel, shapes):
        """``kernel`` timed over ``shapes`` once per width and dtype (map sizes change with every
        image size and stay out of the key); under the interpreter ``kernel`` itself."""
        if _INTERPRETED:
            return kernel
        configs = [
            triton.Config(
                {"BLOCK_N": n, "BLOCK_M": m, "BLOCK_E": e}, num_warps=warps, num_stages=stages
            )
            for n, m, e, warps, stages in shapes
        ]
        return triton.autotune(configs=configs, key=["E", "IEEE"])(kernel)

    _relu_pair_product = _autotuned(_relu_pair_product_kernel, PRODUCT_CONFIGS)
    _masked_pair_dot = _autotuned(_masked_pair_dot_kernel, PAIR_DOT_CONFIGS)


def _launch_sizes() -> dict:
    """Block sizes passed at launch: the interpreter's fixed ones, else none (the autotuner's)."""
    if not _INTERPRETED:
        return {}
    return {"BLOCK_N": 32, "BLOCK_M": 32, "BLOCK_E": 32}


def _on_device(t: torch.Tensor):
    """Launches go to the current CUDA device: make it ``t``'s."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _ieee(dtype: torch.dtype) -> bool:
    """Whether fp32 products must run in full precision (TF32 not allowed)."""
    return dtype == torch.float32 and not tf32_allowed("cuda")


def relu_pair_product(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out_i = sum_j ReLU(x_i + y_j) w_j for x [B, N], y [B, M], w [B, M, E]; [B, N, E] in w's
    dtype."""
    batch, num_rows = x.shape
    num_cols, width = w.shape[1], w.shape[2]
    x, y, w = x.contiguous(), y.contiguous(), w.contiguous()
    out = w.new_empty(batch, num_rows, width)

    def grid(meta):
        return (
            triton.cdiv(num_rows, meta["BLOCK_N"]),
            triton.cdiv(width, meta["BLOCK_E"]),
            batch,
        )

    with _on_device(w):
        _relu_pair_product[grid](
            x, y, w, out, num_rows, num_cols, width, IEEE=_ieee(w.dtype), **_launch_sizes()
        )
    return out


def masked_pair_dot(
    x: torch.Tensor, y: torch.Tensor, p: torch.Tensor, q: torch.Tensor
) -> torch.Tensor:
    """out_i = sum_j [x_i + y_j > 0] (p_i . q_j) for x [B, N], y [B, M], p [B, N, E],
    q [B, M, E] of one dtype; [B, N] in fp32."""
    batch, num_rows = x.shape
    num_cols, width = q.shape[1], q.shape[2]
    x, y, p, q = x.contiguous(), y.contiguous(), p.contiguous(), q.contiguous()
    out = x.new_empty(batch, num_rows, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(num_rows, meta["BLOCK_N"]), batch)

    with _on_device(q):
        _masked_pair_dot[grid](
            x, y, p, q, out, num_rows, num_cols, width, IEEE=_ieee(q.dtype), **_launch_sizes()
        )
    return out


class TritonReluPairSum(torch.autograd.Function):
    """y_i = sum_j ReLU(a_i + b_j) v_j for a [B, N], b [B, M] (fp32), v [B, M, E] (fp32, fp16 or
    bf16); y in v's dtype, nothing N x M stored.

    Backward: dv = R^T dy, da = rowsum(dZ), db = colsum(dZ) with dZ = (dy v^T) * [R > 0].
    """

    @staticmethod
    def forward(ctx, a, b, v):
        if v.dtype not in DTYPES or a.dtype != torch.float32 or b.dtype != torch.float32:
            raise ValueError(
                f"TritonReluPairSum: dtypes a {a.dtype}, b {b.dtype}, v {v.dtype}; a and b must "
                f"be torch.float32, v one of {DTYPES}"
            )
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
