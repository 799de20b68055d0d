"""What the Triton kernels share: whether they can run, the tile product, autotuning, launching.

Kernels are built when their module is imported: compiled for CUDA, or, when ``TRITON_INTERPRET``
is set then, run by Triton's interpreter on any device (slow; how the tests check them without a
GPU). Launch configurations are written ``(BLOCK_N, BLOCK_M, BLOCK_W, warps, stages)``: rows,
keys and output columns per program, warps per program and software-pipelining stages.
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

# Dtypes the kernels take: what tensor cores multiply (fp32 as TF32 or in full precision).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Block sizes under the interpreter (no autotuning there: it would time each configuration).
INTERPRETER_BLOCK = 32


def _interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter: TRITON_INTERPRET, read as Triton does."""
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


INTERPRETED = triton is not None and _interpreting()


def triton_runs_on(device_type: str) -> bool:
    """Whether the kernels can run on ``device_type``: CUDA with triton installed, or any device
    under Triton's interpreter."""
    if triton is None:
        return False
    return INTERPRETED or device_type == "cuda"


def triton_needs() -> str:
    """What the kernels need to run, for error messages."""
    if triton is None:
        return "the triton package, which this Python lacks (torch's CUDA builds ship it)"
    return "a CUDA device (or TRITON_INTERPRET=1, for tests)"


if triton is not None:
    # Triton's interpreter multiplies bf16 tiles wrongly (it reads their bits as another type):
    # there they are multiplied in fp32, which checks everything else the kernels do with bf16.
    _INTERPRETER_BF16_IN_FP32 = tl.constexpr(INTERPRETED)

    # Kernels taking map sizes N and M: not specialised on them, since they change with every
    # image size (compiles follow launch configurations, widths and dtypes alone; tile loads
    # keep the alignment that the widths D and E give their offsets).
    jit_for_any_map_size = triton.jit(do_not_specialize=["N", "M"])

    @triton.jit
    def tile_product(x, y, acc, IEEE: tl.constexpr):
        """acc + x @ y in fp32; IEEE: fp32 operands in full precision (else TF32)."""
        if _INTERPRETER_BF16_IN_FP32 and x.dtype == tl.bfloat16:
            return tl.dot(x.to(tl.float32), y.to(tl.float32), acc)
        if IEEE:
            return tl.dot(x, y, acc, input_precision="ieee")
        return tl.dot(x, y, acc)

    @triton.jit
    def load_tile(base, rows, cols, num_rows, width):
        """The tile [rows, cols] of the contiguous [num_rows, width] matrix at ``base``, zero
        outside it."""
        mask = (rows[:, None] < num_rows) & (cols[None, :] < width)
        return tl.load(base + rows[:, None] * width + cols[None, :], mask=mask, other=0.0)

    @triton.jit
    def store_tile(base, tile, rows, cols, num_rows, width):
        """Writes ``tile`` (converted to the matrix's dtype) to [rows, cols] of the contiguous
        [num_rows, width] matrix at ``base``, inside it only."""
        mask = (rows[:, None] < num_rows) & (cols[None, :] < width)
        pointers = base + rows[:, None] * width + cols[None, :]
        tl.store(pointers, tile.to(base.dtype.element_ty), mask=mask)

    @triton.jit
    def load_vector(base, index, length):
        """Entries ``index`` of the fp32 vector at ``base`` of ``length``, zero past its end."""
        return tl.load(base + index, mask=index < length, other=0.0)

    @triton.jit
    def row_dots(
        a_base,
        b_base,
        rows,
        keys,
        N,
        M,
        W,
        IEEE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_W: tl.constexpr,
    ):
        """[BLOCK_N, BLOCK_M] fp32 tile of A B^T for the contiguous A [N, W] and B [M, W] at
        the bases, summed over W in BLOCK_W-wide blocks (rows and keys outside give 0)."""
        dots = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for col in range(0, W, BLOCK_W):
            cols = col + tl.arange(0, BLOCK_W)
            a = load_tile(a_base, rows, cols, N, W)
            b = load_tile(b_base, keys, cols, M, W)
            dots = tile_product(a, tl.trans(b), dots, IEEE)
        return dots


def autotuned(kernel, configs, key):
    """``kernel`` timed over ``configs`` once per value of the ``key`` arguments and dtypes
    (map sizes change with every image size and stay out of it); the interpreter's
    ``kernel`` as it is."""
    if INTERPRETED:
        return kernel
    return triton.autotune(
        configs=[
            triton.Config(
                {"BLOCK_N": n, "BLOCK_M": m, "BLOCK_W": w}, num_warps=warps, num_stages=stages
            )
            for n, m, w, warps, stages in configs
        ],
        key=list(key),
    )(kernel)


def launch_sizes() -> dict:
    """Block sizes passed at launch: the interpreter's, else none (the autotuner's)."""
    if not INTERPRETED:
        return {}
    return dict.fromkeys(("BLOCK_N", "BLOCK_M", "BLOCK_W"), INTERPRETER_BLOCK)


def on_device(t: torch.Tensor):
    """Launches go to the current CUDA device: make it ``t``'s."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def ieee(dtype: torch.dtype) -> bool:
    """Whether fp32 products must run in full precision (TF32 not allowed)."""
    return dtype == torch.float32 and not tf32_allowed("cuda")


def check_dtypes(owner: str, float32: dict, compute: dict) -> None:
    """ValueError unless the tensors in ``float32`` are fp32 and those in ``compute`` share one
    dtype of :data:`DTYPES` (name -> tensor)."""
    dtypes = {t.dtype for t in compute.values()}
    if (
        any(t.dtype != torch.float32 for t in float32.values())
        or len(dtypes) != 1
        or not dtypes <= set(DTYPES)
    ):
        given = ", ".join(f"{k} {t.dtype}" for k, t in {**float32, **compute}.items())
        rule = f"{', '.join(float32)} must be torch.float32; " if float32 else ""
        raise ValueError(
            f"{owner}: dtypes {given}; {rule}{', '.join(compute)} one dtype of {DTYPES}"
        )
