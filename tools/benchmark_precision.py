#!/usr/bin/env python
"""Accuracy of the softmax aggregation paths in bf16 / fp16, outputs and gradients, against float64.

q [B, N, D], k [B, M, D], v [B, M, E] and an output gradient dO are drawn in fp32 and rounded to
the dtype once; every path then computes y = softmax(s Q K^T) V and its gradients dQ, dK, dV from
those same low-precision tensors, and the reference is the same formula in float64 on them. Each
cell is the relative error ||g - g_ref|| / ||g_ref|| of one of y, dQ, dK, dV; the last columns
are the path's worst ratio, quantity by quantity, to SDPA's math kernel on the same inputs
(``SDPBackend.MATH``): "SDPA math" as torch runs it by default, which computes 16-bit inputs in
fp32 and rounds only its results (about the least error a 16-bit result can have), and "SDPA
math 16-bit" with ``allow_fp16_bf16_reduction_math_sdp(True)``: products and softmax in the
16-bit dtype.

Tables per attention shape: "diffuse" (logits of standard deviation 1: every key counts) and
"peaky" (standard deviation 8: a few keys take most of the weight, logits reach about 35).

Paths: ``sdpa_math`` and ``sdpa_math_half`` (the two bars), and the library's ``fused`` (SDPA's
default kernel: on the CPU its flash kernel), ``kept``, ``chunked`` (``--rows`` query rows per
chunk) and ``triton`` (only where the kernels run: CUDA, or Triton's interpreter with
TRITON_INTERPRET=1, slow at these sizes; the interpreter rounds fp32 to bf16 toward zero where a
GPU rounds to nearest, so there only the fp16 figures stand for a GPU's).

Usage: python tools/benchmark_precision.py [--size 4096] [--batch 1] [--width 64]
    [--value-width 64] [--dtype bf16 fp16] [--attention diffuse peaky]
    [--paths kept chunked ...] [--rows 512] [--device cpu|cuda] [--threads 2]
"""

import argparse
import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nl_detectron.layers.attention import softmax_attention
from nl_detectron.layers.attention_policy import CHUNKED, FUSED, KEPT, TRITON, PathChoice
from nl_detectron.layers.triton_support import triton_runs_on

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# name -> standard deviation of the logits s q_i . k_j
ATTENTION = {"diffuse": 1.0, "peaky": 8.0}
SDPA_PATHS = ("sdpa_math", "sdpa_math_half")
LIBRARY_PATHS = (FUSED, KEPT, CHUNKED, TRITON)
QUANTITIES = ("y", "dQ", "dK", "dV")


def draw_inputs(batch, size, width, value_width, logit_std, dtype, seed=0, device="cpu"):
    """(q, k, v, dO) in ``dtype``, with logits s q_i . k_j of standard deviation ``logit_std``
    for s = width**-0.5."""
    gen = torch.Generator().manual_seed(seed)
    spread = logit_std**0.5  # q_i . k_j / sqrt(D) has std spread**2 for entries of std spread

    def draw(*shape, std=1.0):
        return (std * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)

    q = draw(batch, size, width, std=spread)
    k = draw(batch, size, width, std=spread)
    v = draw(batch, size, value_width)
    grad_out = draw(batch, size, value_width)
    return q, k, v, grad_out


def reference(q, k, v, grad_out, scale):
    """y and (dQ, dK, dV) in float64 from the same (rounded) inputs."""
    q, k, v = (t.double().requires_grad_(True) for t in (q, k, v))
    y = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1) @ v
    grads = torch.autograd.grad(y, (q, k, v), grad_out.double())
    return (y.detach(), *grads)


@contextlib.contextmanager
def _half_reductions(allowed):
    saved = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)
    try:
        yield
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(saved)


def _sdpa_math(q, k, v, scale, half_reductions):
    with sdpa_kernel(SDPBackend.MATH), _half_reductions(half_reductions):
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)
    return y[:, 0]


def run_path(path, q, k, v, grad_out, scale, rows):
    """y and (dQ, dK, dV) of ``path`` in the inputs' dtype."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    with torch.autocast(q.device.type, enabled=False):
        if path in SDPA_PATHS:
            y = _sdpa_math(q, k, v, scale, half_reductions=path == "sdpa_math_half")
        else:
            y = softmax_attention(q, k, v, scale, PathChoice(path, rows))
    grads = torch.autograd.grad(y, (q, k, v), grad_out)
    return (y.detach(), *grads)


def relative_errors(results, expected):
    """||g - g_ref|| / ||g_ref|| of each quantity, in float64."""
    return [
        ((got.double() - want).norm() / want.norm().clamp_min(1e-300)).item()
        for got, want in zip(results, expected)
    ]


def measure(args, dtype_name, attention):
    """{path: [error of y, dQ, dK, dV]} for one dtype and attention shape."""
    dtype, scale = DTYPES[dtype_name], args.width**-0.5
    q, k, v, grad_out = draw_inputs(
        args.batch,
        args.size,
        args.width,
        args.value_width,
        ATTENTION[attention],
        dtype,
        device=args.device,
    )
    expected = reference(q, k, v, grad_out, scale)
    return {
        path: relative_errors(run_path(path, q, k, v, grad_out, scale, args.rows), expected)
        for path in args.paths
    }


def worst_ratio(errors, bar):
    """The largest of a path's errors over ``bar``'s, quantity by quantity."""
    return max(e / b for e, b in zip(errors, bar))


def print_table(args, dtype_name, attention, errors):
    print(
        f"\n{dtype_name}, {attention} attention (logit std {ATTENTION[attention]:g}), "
        f"B {args.batch}, N = M = {args.size}, widths {args.width}/{args.value_width}, "
        f"chunks of {args.rows} rows"
    )
    bars = [p for p in ("sdpa_math", "sdpa_math_half") if p in errors]
    names = {"sdpa_math": "SDPA math", "sdpa_math_half": "SDPA math 16-bit"}
    head = [f"rel. error {n}" for n in QUANTITIES] + [f"worst / {names[b]}" for b in bars]
    print("| path | " + " | ".join(head) + " |")
    print("|---|" + "---|" * len(head))
    for path, row in errors.items():
        cells = [f"{e:.2e}" for e in row] + [f"{worst_ratio(row, errors[b]):.2f}" for b in bars]
        print(f"| {path} | " + " | ".join(cells) + " |", flush=True)


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="N = M (default 4096)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--width", type=int, default=64, help="query / key width D")
    parser.add_argument("--value-width", type=int, default=None, help="E (default: D)")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["bf16"])
    parser.add_argument("--attention", nargs="+", choices=list(ATTENTION), default=list(ATTENTION))
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=SDPA_PATHS[1:] + LIBRARY_PATHS,
        default=None,
        help="paths besides sdpa_math (default: every one that runs here but triton on the CPU)",
    )
    parser.add_argument("--rows", type=int, default=512, help="query rows per chunk (chunked)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def check_arguments(args):
    for name in ("size", "batch", "width", "rows", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}={getattr(args, name)} must be >= 1")
    if args.value_width is None:
        args.value_width = args.width
    elif args.value_width < 1:
        raise ValueError(f"--value-width={args.value_width} must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here (allowed: --device cpu)")
    if args.paths is None:
        args.paths = list(SDPA_PATHS[1:] + LIBRARY_PATHS)
        if args.device == "cpu" or not triton_runs_on(args.device):
            args.paths.remove(TRITON)
    elif TRITON in args.paths and not triton_runs_on(args.device):
        raise ValueError(
            f"--paths triton: the Triton kernels cannot run on {args.device} here (CUDA with "
            "triton installed, or TRITON_INTERPRET=1)"
        )
    args.paths = ["sdpa_math"] + [p for p in args.paths if p != "sdpa_math"]


def main(argv=None):
    args = argument_parser().parse_args(argv)
    check_arguments(args)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.device}, {args.threads} threads")
    results = {}
    for dtype_name in args.dtype:
        for attention in args.attention:
            errors = measure(args, dtype_name, attention)
            print_table(args, dtype_name, attention, errors)
            results[dtype_name, attention] = errors
    return results


if __name__ == "__main__":
    main()
