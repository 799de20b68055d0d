#!/usr/bin/env python
"""Time and memory of every context block's fast path against the explicit N x M affinity.

For each stage (res4 / res3 of an 800x1333 image, batch 2) and each variant (non-local with its four
instantiations, disentangled NL, spectral NL, global context) the script runs the same block twice,
once on its fast path and once with ``block.explicit = True`` (the affinity built in one piece), and
prints forward (no grad) and forward+backward wall times, their ratio, and the peak extra memory.

Peak extra memory: each measured call runs under ``torch.profiler`` with ``profile_memory=True``,
which records every CPU allocation and free ("[memory]" events with signed sizes). Summing them in
time order gives the bytes allocated during the call that are alive at each moment; the maximum is
the peak extra memory (inputs and parameters, allocated before, are not counted; parameter
gradients are). The profiler adds little time to these calls, which consist of few, large ops.

The script also measures this machine's fp32 matrix-multiplication rate (square 2048 GEMMs) and the
rate the embedded-Gaussian core (the fused attention call, 4 B N M C' flops) reaches, as a fraction.

Usage: python tools/benchmark_blocks.py [--stages res3 res4] [--repeats 1] [--threads 2]
Explicit res3 needs several GB (N x N = 16800^2 floats per sample); a full run takes many minutes.
"""

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)
from nl_detectron.layers.attention import softmax_attention

# (batch, channels, height, width) of the res4 / res3 feature maps of an 800x1333 input.
STAGES = {"res4": (2, 1024, 50, 84), "res3": (2, 512, 100, 168)}

VARIANTS = {
    "NL gaussian": lambda c: NonLocalBlock(c, instantiation="gaussian", zero_init=False),
    "NL embedded_gaussian": lambda c: NonLocalBlock(c, zero_init=False),
    "NL dot_product": lambda c: NonLocalBlock(c, instantiation="dot_product", zero_init=False),
    "NL concatenation": lambda c: NonLocalBlock(c, instantiation="concatenation", zero_init=False),
    "DNL": lambda c: DisentangledNonLocalBlock(c, zero_init=False),
    "SNL (order 2)": lambda c: SpectralNonLocalBlock(c, zero_init=False),
    "GC": lambda c: ContextBlock(c),
}


def measure(fn):
    """Run ``fn`` once under the memory profiler; return (seconds, peak extra bytes)."""
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    sizes = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in sizes:
        live += nbytes
        peak = max(peak, live)
    return seconds, peak


def run_block(block, x, backward):
    def fn():
        block.zero_grad(set_to_none=True)
        if backward:
            # Inside a backbone the block's input needs a gradient too.
            block(x.detach().requires_grad_(True)).sum().backward()
        else:
            with torch.no_grad():
                block(x)

    return fn


def matmul_gflops(repeats=3, size=2048):
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def core_gflops(batch, channels, positions, repeats):
    """Rate of the embedded-Gaussian core: softmax(theta phi^T / sqrt(C')) g, C' = C / 2."""
    width = channels // 2
    q, k, v = (torch.randn(batch, positions, width) for _ in range(3))
    with torch.no_grad():
        best = min(_timed(lambda: softmax_attention(q, k, v, width**-0.5)) for _ in range(repeats))
    return 4 * batch * positions * positions * width / best / 1e9, best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", nargs="+", choices=sorted(STAGES), default=["res4", "res3"])
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rate = matmul_gflops()
    print(f"torch {torch.__version__}, {args.threads} threads, fp32 matmul: {rate:.1f} GFLOP/s")
    for make in VARIANTS.values():  # warm up every code path on a small map
        block = make(64)
        for explicit in (False, True):
            block.explicit = explicit
            run_block(block, torch.randn(2, 64, 6, 5), backward=True)()

    header = (
        "| stage | variant | fwd fast s | fwd explicit s | fwd speed-up | fwd+bwd fast s "
        "| fwd+bwd explicit s | fwd+bwd speed-up | peak MB fast (fwd / fwd+bwd) "
        "| peak MB explicit (fwd / fwd+bwd) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for stage in args.stages:
        batch, channels, height, width = STAGES[stage]
        x = torch.randn(batch, channels, height, width)
        for name, make in VARIANTS.items():
            block = make(channels).train()
            results = {}
            for backward in (False, True):
                for explicit in (False, True):  # interleaved, so that load drifts hit both
                    block.explicit = explicit
                    runs = [measure(run_block(block, x, backward)) for _ in range(args.repeats)]
                    results[backward, explicit] = (
                        min(r[0] for r in runs),
                        statistics.median(r[1] for r in runs) / 2**20,
                    )
            fwd, fwd_x = results[False, False], results[False, True]
            both, both_x = results[True, False], results[True, True]
            print(
                f"| {stage} | {name} | {fwd[0]:.2f} | {fwd_x[0]:.2f} | {fwd_x[0] / fwd[0]:.1f}x "
                f"| {both[0]:.2f} | {both_x[0]:.2f} | {both_x[0] / both[0]:.1f}x "
                f"| {fwd[1]:.0f} / {both[1]:.0f} | {fwd_x[1]:.0f} / {both_x[1]:.0f} |",
                flush=True,
            )
        achieved, seconds = core_gflops(batch, channels, height * width, max(args.repeats, 1))
        rate = matmul_gflops()  # re-measured next to the core: the machine's load drifts
        print(
            f"| {stage} | embedded-Gaussian core alone | {seconds:.2f} | | | | | | "
            f"{achieved:.1f} GFLOP/s = {achieved / rate:.0%} of matmul ({rate:.1f}) | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
