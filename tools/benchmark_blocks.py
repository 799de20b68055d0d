#!/usr/bin/env python
"""Time and memory of every context block's fast path against the explicit N x M affinity.

For each stage (res4 / res3 of an 800x1333 image, batch 2) the script prints up to two tables of
forward (no grad) and forward+backward wall times, their ratio, and the peak extra memory:

- "block": each variant (non-local with its four instantiations, disentangled NL, spectral NL,
  global context) runs as a whole block (1x1 convs, norm, residual) twice, once on its fast path
  and once with ``block.explicit = True`` (the affinity built in one piece).
- "core": only the pairwise aggregation, from precomputed embeddings (leaf tensors that require a
  gradient) to y, for every variant but GC: the library's own fast core against the straightforward
  explicit one (build the N x M affinity, normalise, multiply), written out in this script as an
  independent reference. The fast cores are the library's internal functions called by the
  blocks' forward: ``NonLocalBlock._aggregate`` (all four instantiations),
  ``DisentangledNonLocalBlock._aggregate`` and, for SNL, ``SpectralNonLocalBlock._degree``,
  ``_inv_sqrt`` and ``_propagate`` on [T, P] (concatenated here, as the block does before its
  ReLU). The explicit SNL builds T P^T once and adds its transpose (one N x N x C' product, not
  the formula's two). Before timing, every fast core is checked against its explicit one on a
  small input.

Peak extra memory: each measured call runs under ``torch.profiler`` with ``profile_memory=True``,
which records every CPU allocation and free ("[memory]" events with signed sizes). Summing them in
time order gives the bytes allocated during the call that are alive at each moment; the maximum is
the peak extra memory (inputs and parameters, allocated before, are not counted; the gradients
of parameters and of the core tables' inputs are). The profiler adds little time to these calls,
which consist of few, large ops.

The script also measures this machine's fp32 matrix-multiplication rate (square 2048 GEMMs) and the
rate the embedded-Gaussian core (the fused attention call, 4 B N M C' flops) reaches, as a fraction.

Usage: python tools/benchmark_blocks.py [--stages res3 res4] [--tables block core]
    [--variants "NL dot_product" ...] [--repeats 1] [--threads 2]
Explicit res3 needs several GB (N x N = 16800^2 floats per sample); a full run takes many minutes.
The 1/5/15-minute load average is printed before and after each table (the machine may be shared).
"""

import argparse
import gc
import os
import statistics
import sys
import time
from functools import partial
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


def run_core(core, inputs, backward):
    def fn():
        for t in inputs:
            t.grad = None
        if backward:
            core(*inputs).sum().backward()
        else:
            with torch.no_grad():
                core(*inputs)

    return fn


def _leaf(*shape, relu=False):
    t = torch.randn(*shape)
    return (t.relu() if relu else t).requires_grad_(True)


def nl_core(instantiation):
    """Core of ``NonLocalBlock``: (theta [B, N, D], phi [B, M, D], g [B, M, C']) -> y [B, N, C']."""

    def make(batch, channels, positions):
        block = NonLocalBlock(channels, instantiation=instantiation, zero_init=False)
        width = block.inter_channels
        if instantiation == "gaussian":
            # Identity embeddings: theta = phi = x [B, N, C], one tensor as in the block.
            x, g = _leaf(batch, positions, channels), _leaf(batch, positions, width)

            def fast(x, g):
                return block._aggregate(x, x, g)

            def explicit(x, g):
                return _explicit_nl(block, x, x, g)

            return (x, g), fast, explicit
        inputs = tuple(_leaf(batch, positions, width) for _ in range(3))
        return inputs, block._aggregate, partial(_explicit_nl, block)

    return make


def _explicit_nl(block, theta, phi, g):
    num_keys = phi.shape[1]
    if block.instantiation == "concatenation":
        a, b = block._concat_terms(theta, phi)  # w_f^T [theta_i, phi_j] = a_i + b_j
        affinity = torch.relu(a.unsqueeze(2) + b.unsqueeze(1)) / num_keys
    else:
        logits = torch.matmul(theta, phi.transpose(1, 2))  # [B, N, M]
        if block.instantiation == "dot_product":
            affinity = logits / num_keys
        else:
            affinity = torch.softmax(logits * block.scale, dim=-1)
    return torch.matmul(affinity, g)


def dnl_core(batch, channels, positions):
    """Core of DNL: (centred theta, centred phi, g [B, N, C'], softmax(u) [B, M]) -> y."""
    block = DisentangledNonLocalBlock(channels, zero_init=False)
    width = block.inter_channels
    inputs = tuple(_leaf(batch, positions, width) for _ in range(3))
    unary = torch.softmax(torch.randn(batch, positions), dim=1).requires_grad_(True)

    def explicit(theta, phi, g, unary):
        logits = torch.matmul(theta, phi.transpose(1, 2)) * block.scale  # [B, N, M]
        return torch.matmul(torch.softmax(logits, dim=-1) + unary.unsqueeze(1), g)

    return (*inputs, unary), block._aggregate, explicit


def snl_core(batch, channels, positions):
    """Core of SNL (order 2): (T, P >= 0, Z [B, N, C']) -> A Z, A = D^-1/2 M_hat D^-1/2."""
    block = SpectralNonLocalBlock(channels, zero_init=False)
    width = block.inter_channels
    inputs = (_leaf(batch, positions, width, relu=True), _leaf(batch, positions, width, relu=True))
    inputs += (_leaf(batch, positions, width),)

    def fast(t, p, z):
        tp = torch.cat([t, p], dim=2)  # the block concatenates theta(x), phi(x) before the ReLU
        return block._propagate(tp, block._inv_sqrt(block._degree(tp)), z)

    def explicit(t, p, z):
        m = torch.matmul(t, p.transpose(1, 2))  # [B, N, N]; P T^T is its transpose
        m = (m + m.transpose(1, 2)) / 2
        inv_sqrt = block._inv_sqrt(m.sum(dim=2, keepdim=True))  # [B, N, 1]
        return torch.matmul(inv_sqrt * m * inv_sqrt.transpose(1, 2), z)

    return inputs, fast, explicit


# name -> make(batch, channels, positions) -> (inputs, fast core, explicit core)
CORES = {
    "NL gaussian": nl_core("gaussian"),
    "NL embedded_gaussian": nl_core("embedded_gaussian"),
    "NL dot_product": nl_core("dot_product"),
    "NL concatenation": nl_core("concatenation"),
    "DNL": dnl_core,
    "SNL (order 2)": snl_core,
}

HEADER = (
    "| stage | variant | fwd fast s | fwd explicit s | fwd speed-up | fwd+bwd fast s "
    "| fwd+bwd explicit s | fwd+bwd speed-up | peak MB fast (fwd / fwd+bwd) "
    "| peak MB explicit (fwd / fwd+bwd) |"
)


def compare(stage, name, make_fn, repeats):
    """Print one table row; ``make_fn(explicit, backward)`` returns the call to measure."""
    results = {}
    for backward in (False, True):
        for explicit in (False, True):  # interleaved, so that load drifts hit both
            fn = make_fn(explicit, backward)
            runs = [measure(fn) for _ in range(repeats)]
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


def print_table_header(title):
    print(f"\n{title}; load average {_load()}")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1), flush=True)


def _load():
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def block_table(stages, repeats, variants):
    print_table_header("Whole blocks, fast path vs explicit = True")
    for stage in stages:
        batch, channels, height, width = STAGES[stage]
        x = torch.randn(batch, channels, height, width)
        for name, make in VARIANTS.items():
            if name not in variants:
                continue
            block = make(channels).train()

            def make_fn(explicit, backward, block=block, x=x):
                block.explicit = explicit
                return run_block(block, x, backward)

            compare(stage, name, make_fn, repeats)
        achieved, seconds = core_gflops(batch, channels, height * width, max(repeats, 1))
        rate = matmul_gflops()  # re-measured next to the core: the machine's load drifts
        print(
            f"| {stage} | embedded-Gaussian core alone | {seconds:.2f} | | | | | | "
            f"{achieved:.1f} GFLOP/s = {achieved / rate:.0%} of matmul ({rate:.1f}) | |",
            flush=True,
        )
    print(f"load average after: {_load()}", flush=True)


def core_table(stages, repeats, variants):
    print_table_header("Pairwise cores only (embeddings -> y), library fast core vs explicit")
    for stage in stages:
        batch, channels, height, width = STAGES[stage]
        for name, make in CORES.items():
            if name not in variants:
                continue
            inputs, fast, explicit = make(batch, channels, height * width)

            def make_fn(use_explicit, backward, inputs=inputs, fast=fast, explicit=explicit):
                return run_core(explicit if use_explicit else fast, inputs, backward)

            compare(stage, name, make_fn, repeats)
            del inputs, fast, explicit
    print(f"load average after: {_load()}", flush=True)


def check_cores():
    """Every fast core equals its explicit one (outputs and input gradients) on a small input."""
    for name, make in CORES.items():
        inputs, fast, explicit = make(2, 64, 30)
        results = []
        for core in (fast, explicit):
            for t in inputs:
                t.grad = None
            y = core(*inputs)
            y.square().sum().backward()
            results.append([y.detach()] + [t.grad for t in inputs])
        for got, want in zip(*results):
            # fp32 sums of different order: errors scale with the largest entry.
            atol = 1e-5 * want.abs().max().item()
            torch.testing.assert_close(
                got, want, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
            )


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
    parser.add_argument("--tables", nargs="+", choices=("block", "core"), default=["block", "core"])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        metavar="NAME",
        help=f"rows to measure (default all): {', '.join(map(repr, VARIANTS))}",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rate = matmul_gflops()
    print(f"torch {torch.__version__}, {args.threads} threads, fp32 matmul: {rate:.1f} GFLOP/s")
    if "block" in args.tables:
        for make in VARIANTS.values():  # warm up every code path on a small map
            block = make(64)
            for explicit in (False, True):
                block.explicit = explicit
                run_block(block, torch.randn(2, 64, 6, 5), backward=True)()
        block_table(args.stages, args.repeats, args.variants)
    if "core" in args.tables:
        check_cores()  # also warms up every core
        core_table(args.stages, args.repeats, args.variants)


if __name__ == "__main__":
    main()
