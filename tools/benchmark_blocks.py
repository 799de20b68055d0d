#!/usr/bin/env python
"""Time and memory of every context block's fast path against the explicit N x M affinity.

For each stage (res4 / res3 of an 800x1333 image, batch 2) the script prints up to three tables of
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
- "paths": each NL/DNL variant forced onto every path it can take (fused / kept / chunked /
  triton, or sorted / chunked_concat / triton_concat; the Triton ones on CUDA; chunks sized by
  the budget; ``--paths`` picks some; the Gaussian also ``efficient``, SDPA's memory-efficient
  kernel with its value C/2 unpadded, a candidate the policy does not take yet), forward+backward
  against the explicit block: the figures the path policy's table is set from. Each row also
  gives the first call's time (where Triton compiles and autotunes its kernels, once per widths
  and dtype), the largest difference of the aggregated context y (what the output transform
  receives) from the explicit block's, relative to its largest entry, and the path the policy
  itself takes for that block, dtype and budget.
- "compile": each variant in training mode compiled with ``torch.compile`` (``--compile-backend``,
  default inductor), forward+backward against the same block in eager mode on the policy's path,
  their runs taken in turn: first the path the policy takes under compile, then each path of
  ``--paths`` the variant can take (forced on the compiled block only; not the Triton ones, which a
  trace never records). Each row gives the first
  call's time (the compilation), how many graphs dynamo made and how many graph breaks it met,
  and the largest difference of the compiled block's output from the eager one's, relative to its
  largest entry.

Each row names the path the fast run took (``block.last_path``: fused / kept / chunked with its
rows per chunk / triton / sorted / chunked_concat / triton_concat; "associative" for dot product
and SNL, "pooled" for GC), as chosen by nl_detectron.layers.attention_policy for the device,
dtype and ``--budget-mb``.

Devices and dtypes (``--device``, ``--dtype``, several dtypes make one table each):
- fp32: TF32 off on CUDA; tf32: fp32 tensors with TF32 matmuls allowed (CUDA only); bf16, fp16:
  fp32 parameters and inputs under ``torch.autocast``, as in mixed-precision training.
- CPU: wall time around the call (perf_counter); peak extra memory from ``torch.profiler`` with
  ``profile_memory=True``, which records every allocation and free ("[memory]" events with signed
  sizes); their running sum's maximum is the peak of bytes allocated during the call and alive.
- CUDA: ``--warmup`` untimed calls first, then CUDA events around each call (synchronised), and
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus the bytes allocated
  before the call.
Times are the best of ``--repeats``; memory the median. Inputs and parameters, allocated before,
are not counted; the gradients of parameters and of the core tables' inputs are. ``--json FILE``
also appends every row to FILE as one JSON object per line (times in seconds, memory in MiB), for
scripts/gpu_benchmarks.py's summary.

On the CPU in fp32 the script also measures the machine's matrix-multiplication rate (square 2048
GEMMs) and the rate the embedded-Gaussian core (4 B N M C' flops) reaches, as a fraction.

Usage: python tools/benchmark_blocks.py [--device cpu|cuda] [--dtype fp32 tf32 bf16 fp16]
    [--budget-mb MiB] [--stages res3 res4] [--tables block core paths compile]
    [--variants "DNL" ...] [--paths kept triton ...] [--compile-backend inductor|aot_eager|eager]
    [--repeats 1] [--warmup 1] [--threads 2] [--json FILE]
Explicit res3 needs several GB (N x N = 16800^2 floats per sample); a full CPU run takes many
minutes. The stage "small" (2 x 256 x 25 x 42: res4 of a 400x667 input at a quarter of its
channels) is what a loaded CPU affords for the compile table; "tiny" (2 x 64 x 12 x 10) is a quick
check of the script itself. The
1/5/15-minute load average is printed before and after each table (the machine may be shared).
"""

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import torch._dynamo
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
    attention,
)
from nl_detectron.layers.attention import softmax_attention
from nl_detectron.layers.attention_policy import (
    CHUNKED,
    CHUNKED_CONCAT,
    EFFICIENT,
    FUSED,
    KEPT,
    SORTED_CONCAT,
    TRITON,
    TRITON_CONCAT,
    PathChoice,
    budget_rows,
    cuda_fp32_precision,
    default_budget_mb,
)
from nl_detectron.layers.triton_support import triton_runs_on

# (batch, channels, height, width) of the res4 / res3 feature maps of an 800x1333 input.
STAGES = {
    "res4": (2, 1024, 50, 84),
    "res3": (2, 512, 100, 168),
    "small": (2, 256, 25, 42),
    "tiny": (2, 64, 12, 10),
}
# name -> (tensor dtype of the products, TF32 allowed); bf16 / fp16 run under autocast.
DTYPES = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
}

VARIANTS = {
    "NL gaussian": lambda c: NonLocalBlock(c, instantiation="gaussian", zero_init=False),
    "NL embedded_gaussian": lambda c: NonLocalBlock(c, zero_init=False),
    "NL dot_product": lambda c: NonLocalBlock(c, instantiation="dot_product", zero_init=False),
    "NL concatenation": lambda c: NonLocalBlock(c, instantiation="concatenation", zero_init=False),
    "DNL": lambda c: DisentangledNonLocalBlock(c, zero_init=False),
    "SNL (order 2)": lambda c: SpectralNonLocalBlock(c, zero_init=False),
    "GC": lambda c: ContextBlock(c),
}


def measure_cpu(fn):
    """Run ``fn`` once under the memory profiler; return (seconds, peak extra bytes)."""
    # Kineto otherwise writes two log lines per profiled call to stderr (and, on a machine
    # without a GPU, an error about the device count); a user's own setting wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
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


def measure_cuda(fn):
    """Run ``fn`` once between CUDA events; return (seconds, peak extra allocated bytes)."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3, torch.cuda.max_memory_allocated() - before


@contextlib.contextmanager
def precision(device, dtype_name):
    """TF32 on or off (CUDA) and autocast for bf16 / fp16, restored afterwards."""
    dtype, tf32 = DTYPES[dtype_name]
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context(cuda_fp32_precision(tf32))
        if dtype != torch.float32:
            stack.enter_context(torch.autocast(device.type, dtype=dtype))
        yield


def path_name(owner):
    """The fast path ``owner`` (a block) took in its last forward, for the table."""
    choice = getattr(owner, "last_path", None)
    if choice is not None:
        chunked = choice.path.startswith("chunked")
        return f"{choice.path} ({choice.rows} rows)" if chunked else choice.path
    return "pooled" if isinstance(owner, ContextBlock) else "associative"


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


def _leaf(*shape, relu=False, device="cpu"):
    t = torch.randn(*shape, device=device)
    return (t.relu() if relu else t).requires_grad_(True)


def nl_core(instantiation):
    """Core of ``NonLocalBlock``: (theta [B, N, D], phi [B, M, D], g [B, M, C']) -> y [B, N, C']."""

    def make(batch, channels, positions, device="cpu", budget_mb=None):
        block = NonLocalBlock(channels, instantiation=instantiation, zero_init=False).to(device)
        block.affinity_budget_mb = budget_mb
        width = block.inter_channels
        if instantiation == "gaussian":
            # Identity embeddings: theta = phi = x [B, N, C], one tensor as in the block.
            x = _leaf(batch, positions, channels, device=device)
            g = _leaf(batch, positions, width, device=device)

            def fast(x, g):
                return block._aggregate(x, x, g)

            def explicit(x, g):
                return _explicit_nl(block, x, x, g)

            return (x, g), fast, explicit, block
        inputs = tuple(_leaf(batch, positions, width, device=device) for _ in range(3))
        return inputs, block._aggregate, partial(_explicit_nl, block), block

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


def dnl_core(batch, channels, positions, device="cpu", budget_mb=None):
    """Core of DNL: (centred theta, centred phi, g [B, N, C'], softmax(u) [B, M]) -> y."""
    block = DisentangledNonLocalBlock(channels, zero_init=False).to(device)
    block.affinity_budget_mb = budget_mb
    width = block.inter_channels
    inputs = tuple(_leaf(batch, positions, width, device=device) for _ in range(3))
    unary = torch.softmax(torch.randn(batch, positions, device=device), dim=1)
    unary.requires_grad_(True)

    def explicit(theta, phi, g, unary):
        logits = torch.matmul(theta, phi.transpose(1, 2)) * block.scale  # [B, N, M]
        return torch.matmul(torch.softmax(logits, dim=-1) + unary.unsqueeze(1), g)

    return (*inputs, unary), block._aggregate, explicit, block


def snl_core(batch, channels, positions, device="cpu", budget_mb=None):
    """Core of SNL (order 2): (T, P >= 0, Z [B, N, C']) -> A Z, A = D^-1/2 M_hat D^-1/2."""
    block = SpectralNonLocalBlock(channels, zero_init=False).to(device)
    width = block.inter_channels
    inputs = tuple(
        _leaf(batch, positions, width, relu=relu, device=device) for relu in (True, True, False)
    )

    def fast(t, p, z):
        tp = torch.cat([t, p], dim=2)  # the block concatenates theta(x), phi(x) before the ReLU
        return block._propagate(tp, block._inv_sqrt(block._degree(tp)), z)

    def explicit(t, p, z):
        m = torch.matmul(t, p.transpose(1, 2))  # [B, N, N]; P T^T is its transpose
        m = (m + m.transpose(1, 2)) / 2
        inv_sqrt = block._inv_sqrt(m.sum(dim=2, keepdim=True))  # [B, N, 1]
        return torch.matmul(inv_sqrt * m * inv_sqrt.transpose(1, 2), z)

    return inputs, fast, explicit, block


# name -> make(batch, channels, positions, device, budget_mb)
#   -> (inputs, fast core, explicit core, the block whose ``last_path`` the fast core sets)
CORES = {
    "NL gaussian": nl_core("gaussian"),
    "NL embedded_gaussian": nl_core("embedded_gaussian"),
    "NL dot_product": nl_core("dot_product"),
    "NL concatenation": nl_core("concatenation"),
    "DNL": dnl_core,
    "SNL (order 2)": snl_core,
}


class Settings:
    """Device, dtype, budget and repetitions of one table."""

    def __init__(self, device, dtype_name, budget_mb, repeats, warmup, json_path=None):
        self.device = device
        self.dtype_name = dtype_name
        self.budget_mb = budget_mb
        self.repeats = repeats
        self.warmup = warmup
        self.json_path = json_path
        on_cuda = device.type == "cuda"
        self.device_name = torch.cuda.get_device_name(device) if on_cuda else "CPU"
        self.measure = measure_cuda if on_cuda else measure_cpu
        self.unit, self.scale = ("ms", 1e3) if on_cuda else ("s", 1.0)

    def record(self, table, stage, variant, **figures):
        """Append one row to ``--json`` (if given): times in the table's unit become seconds."""
        if self.json_path is None:
            return
        row = {
            "table": table,
            "device": self.device.type,
            "device_name": self.device_name,
            "stage": stage,
            "dtype": self.dtype_name,
            "variant": variant,
            "budget_mb": self.budget_mb,  # None: the device's default, which follows
            "effective_budget_mb": self.budget_mb or default_budget_mb(self.device),
        }
        for name, value in figures.items():
            row[name] = value / self.scale if name.endswith("_s") else value
        with open(self.json_path, "a") as f:
            f.write(json.dumps(row) + "\n")


def header(unit):
    return (
        f"| stage | dtype | variant | fast path | fwd fast {unit} | fwd explicit {unit} "
        f"| fwd speed-up | fwd+bwd fast {unit} | fwd+bwd explicit {unit} | fwd+bwd speed-up "
        "| peak MB fast (fwd / fwd+bwd) | peak MB explicit (fwd / fwd+bwd) |"
    )


def compare(table, stage, name, make_fn, owner, settings):
    """Print one row of ``table``; ``make_fn(explicit, backward)`` returns the call to measure."""
    results, path = {}, "-"
    for backward in (False, True):
        for explicit in (False, True):  # interleaved, so that load drifts hit both
            results[backward, explicit] = _best(make_fn(explicit, backward), settings)
            if backward and not explicit:
                path = path_name(owner)
    fwd, fwd_x = results[False, False], results[False, True]
    both, both_x = results[True, False], results[True, True]
    print(
        f"| {stage} | {settings.dtype_name} | {name} | {path} | {fwd[0]:.3g} | {fwd_x[0]:.3g} "
        f"| {fwd_x[0] / fwd[0]:.2f}x | {both[0]:.3g} | {both_x[0]:.3g} "
        f"| {both_x[0] / both[0]:.2f}x | {fwd[1]:.0f} / {both[1]:.0f} "
        f"| {fwd_x[1]:.0f} / {both_x[1]:.0f} |",
        flush=True,
    )
    settings.record(
        table,
        stage,
        name,
        path=path,
        fwd_s=fwd[0],
        fwd_explicit_s=fwd_x[0],
        fwd_bwd_s=both[0],
        fwd_bwd_explicit_s=both_x[0],
        peak_mib_fwd=fwd[1],
        peak_mib_fwd_bwd=both[1],
        peak_mib_explicit_fwd=fwd_x[1],
        peak_mib_explicit_fwd_bwd=both_x[1],
    )


def print_table_header(title, settings, head=None):
    budget = "device default" if settings.budget_mb is None else f"{settings.budget_mb:g} MiB"
    print(
        f"\n{title}; {settings.device.type} {settings.dtype_name}, affinity budget {budget}; "
        f"load average {_load()}"
    )
    head = head or header(settings.unit)
    print(head)
    print("|" + "---|" * (head.count("|") - 1), flush=True)


def _load():
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def _training_block(name, channels, settings):
    """The variant ``name`` in train mode on the table's device, with the table's budget."""
    block = VARIANTS[name](channels).to(settings.device).train()
    block.affinity_budget_mb = settings.budget_mb
    return block


def _stage_blocks(stages, variants, settings):
    """(stage, input x, variant name, block in train mode) for each stage and each variant of
    ``variants``, in the order of VARIANTS."""
    for stage in stages:
        batch, channels, height, width = STAGES[stage]
        x = torch.randn(batch, channels, height, width, device=settings.device)
        for name in VARIANTS:
            if name in variants:
                yield stage, x, name, _training_block(name, channels, settings)


def block_table(stages, variants, settings):
    print_table_header("Whole blocks, fast path vs explicit = True", settings)
    device = settings.device
    for stage in stages:
        batch, channels, height, width = STAGES[stage]
        for _, x, name, block in _stage_blocks([stage], variants, settings):

            def make_fn(explicit, backward, block=block, x=x):
                block.explicit = explicit
                return run_block(block, x, backward)

            compare("block", stage, name, make_fn, block, settings)
            del block
        if device.type == "cpu" and settings.dtype_name == "fp32":
            repeats = max(settings.repeats, 1)
            achieved, seconds = core_gflops(batch, channels, height * width, repeats)
            rate = matmul_gflops()  # re-measured next to the core: the machine's load drifts
            print(
                f"| {stage} | fp32 | embedded-Gaussian core alone | | {seconds:.2f} | | | | | | "
                f"{achieved:.1f} GFLOP/s = {achieved / rate:.0%} of matmul ({rate:.1f}) | |",
                flush=True,
            )
    print(f"load average after: {_load()}", flush=True)


# Variants with a choice of path, and the paths each can be forced onto. ``efficient`` is the
# Gaussian's candidate over its budget (its value narrower than its keys; the other softmax forms
# reach the same kernel through ``fused`` where no flash kernel takes them).
PATH_VARIANTS = {
    "NL gaussian": (FUSED, KEPT, CHUNKED, TRITON, EFFICIENT),
    "NL embedded_gaussian": (FUSED, KEPT, CHUNKED, TRITON),
    "DNL": (FUSED, KEPT, CHUNKED, TRITON),
    "NL concatenation": (SORTED_CONCAT, CHUNKED_CONCAT, TRITON_CONCAT),
}
ALL_PATHS = sorted({path for paths in PATH_VARIANTS.values() for path in paths})


@contextlib.contextmanager
def forced_path(path, compiled_only=False):
    """Every aggregation takes ``path``; chunked ones with the rows the budget allows.
    ``compiled_only``: only those traced or compiled, the others take the policy's path."""
    chooses = attention.choose_path

    def choose(call):
        if compiled_only and not call.tracing:
            return chooses(call)
        chunked = path in (CHUNKED, CHUNKED_CONCAT)
        return PathChoice(path, budget_rows(call) if chunked else call.num_queries)

    attention.choose_path = choose
    try:
        with warnings.catch_warnings():
            # A forced path may hold more than the budget on purpose.
            warnings.filterwarnings("ignore", message="affinity_budget_mb=.* cannot be met")
            yield
    finally:
        attention.choose_path = chooses


def path_table(stages, variants, paths, settings):
    """Whole blocks forced onto each of ``paths`` they can take, forward+backward, against
    explicit: the figures a change of the policy's table would be made from. Also the first
    call's time (Triton compiles and autotunes its kernels there, once per widths and dtype),
    how far the aggregated context y lies from the explicit block's, relative to its largest
    entry (the same dtype on both sides), and the path the policy takes unforced."""
    unit = settings.unit
    head = (
        f"| stage | dtype | variant | path | fwd+bwd {unit} | fwd+bwd explicit {unit} "
        "| speed-up | first call s | peak MB | peak MB explicit | max rel. diff | policy's path |"
    )
    print_table_header("Whole blocks on each path (forced), forward+backward", settings, head)
    device = settings.device
    for stage in stages:
        batch, channels, height, width = STAGES[stage]
        x = torch.randn(batch, channels, height, width, device=device)
        for name, variant_paths in PATH_VARIANTS.items():
            chosen = [p for p in variant_paths if p in paths and path_runs_on(p, device)]
            if name not in variants or not chosen:
                continue
            block = _training_block(name, channels, settings)
            block.explicit = True
            explicit = _best(run_block(block, x, True), settings)
            reference = _aggregation(block, x, settings)
            block.explicit = False
            _first_call_seconds(run_block(block, x, True), settings)
            policy = path_name(block)
            for path in chosen:
                with forced_path(path):
                    first = _first_call_seconds(run_block(block, x, True), settings)
                    fast = _best(run_block(block, x, True), settings)
                    taken = path_name(block)  # the training step's (rows differ without one)
                    diff = _relative_diff(_aggregation(block, x, settings), reference)
                print(
                    f"| {stage} | {settings.dtype_name} | {name} | {taken} "
                    f"| {fast[0]:.3g} | {explicit[0]:.3g} | {explicit[0] / fast[0]:.3g}x "
                    f"| {first:.3g} | {fast[1]:.0f} | {explicit[1]:.0f} | {diff:.2g} "
                    f"| {policy} |",
                    flush=True,
                )
                settings.record(
                    "paths",
                    stage,
                    name,
                    path=taken,
                    forced=path,
                    policy=policy,
                    fwd_bwd_s=fast[0],
                    fwd_bwd_explicit_s=explicit[0],
                    first_call_seconds=first,
                    peak_mib_fwd_bwd=fast[1],
                    peak_mib_explicit_fwd_bwd=explicit[1],
                    max_rel_diff=diff,
                )
            del block, reference
    print(f"load average after: {_load()}", flush=True)


# Paths a compiled block can be forced onto: a trace records the portable path, never Triton.
COMPILED_PATHS = tuple(p for p in ALL_PATHS if p not in (TRITON, TRITON_CONCAT))
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def _compiled(block, backend):
    """``block`` compiled afresh (dynamo's caches and counters cleared): graph breaks are counted,
    not raised, so that a path that breaks is still timed."""
    torch._dynamo.reset()
    counters.clear()
    return torch.compile(block, backend=backend)


def _graphs_and_breaks():
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _output(block, x, settings):
    """The block's output for an input that needs a gradient (as in the timed steps, so that a
    compiled block runs the graph it compiled), without autograd's graph kept."""
    with precision(settings.device, settings.dtype_name):
        return block(x.detach().requires_grad_(True)).detach().float()


def compile_table(stages, variants, paths, backend, settings):
    """Whole blocks in training mode compiled with ``backend``, forward+backward, against eager
    on the policy's path (the runs of both taken in turn): first the path the policy takes under
    compile, then each of ``paths`` the variant can take (forced on the compiled block only)."""
    unit = settings.unit
    head = (
        f"| stage | dtype | variant | compiled path | fwd+bwd eager {unit} "
        f"| fwd+bwd compiled {unit} | compiled / eager | first call s | graphs | graph breaks "
        "| peak MB eager | peak MB compiled | max rel. diff | eager path |"
    )
    title = f"Whole blocks compiled (torch.compile, backend {backend}) vs eager, forward+backward"
    print_table_header(title, settings, head)
    for stage, x, name, block in _stage_blocks(stages, variants, settings):
        forced = [p for p in PATH_VARIANTS.get(name, ()) if p in paths]
        for path in [None] + [p for p in forced if p in COMPILED_PATHS]:
            with forced_path(path, compiled_only=True) if path else contextlib.nullcontext():
                compiled = _compiled(block, backend)
                first = _first_call_seconds(run_block(compiled, x, True), settings)
                graphs, breaks = _graphs_and_breaks()
                taken = path_name(block) + (" (forced)" if path else "")
                diff = _relative_diff(_output(compiled, x, settings), _output(block, x, settings))
                eager_path = path_name(block)
                eager, fast = _best_interleaved(
                    [run_block(block, x, True), run_block(compiled, x, True)], settings
                )
            print(
                f"| {stage} | {settings.dtype_name} | {name} | {taken} | {eager[0]:.3g} "
                f"| {fast[0]:.3g} | {fast[0] / eager[0]:.2f}x | {first:.3g} | {graphs} "
                f"| {breaks} | {eager[1]:.0f} | {fast[1]:.0f} | {diff:.2g} | {eager_path} |",
                flush=True,
            )
            figures = {
                "path": taken,
                "forced": path,
                "eager_path": eager_path,
                "backend": backend,
                "fwd_bwd_s": fast[0],
                "fwd_bwd_eager_s": eager[0],
                "first_call_seconds": first,
                "graphs": graphs,
                "graph_breaks": breaks,
                "peak_mib_fwd_bwd": fast[1],
                "peak_mib_eager_fwd_bwd": eager[1],
                "max_rel_diff": diff,
            }
            settings.record("compile", stage, name, **figures)
        del block
    torch._dynamo.reset()
    print(f"load average after: {_load()}", flush=True)


def path_runs_on(path, device):
    """Whether ``path`` can run on ``device``: the Triton ones on CUDA (or in the interpreter)."""
    return path not in (TRITON, TRITON_CONCAT) or triton_runs_on(device.type)


def _aggregation(block, x, settings):
    """y, the aggregated context the block's output transform receives, in fp32, computed
    without autograd under the table's precision."""
    captured = []
    hook = block.out.register_forward_pre_hook(lambda _, args: captured.append(args[0].float()))
    try:
        with torch.no_grad(), precision(settings.device, settings.dtype_name):
            block(x)
    finally:
        hook.remove()
    return captured[0]


def _relative_diff(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def _first_call_seconds(fn, settings):
    """Seconds of one call of ``fn`` (synchronised on CUDA) under the table's precision."""
    sync = torch.cuda.synchronize if settings.device.type == "cuda" else (lambda: None)
    with precision(settings.device, settings.dtype_name):
        sync()
        start = time.perf_counter()
        fn()
        sync()
    return time.perf_counter() - start


def _best(fn, settings):
    """(best time in the table's unit, median peak MiB) of ``fn`` under the table's precision."""
    return _best_interleaved([fn], settings)[0]


def _best_interleaved(fns, settings):
    """:func:`_best` of each of ``fns``, their runs taken in turn (load drifts hit them all)."""
    with precision(settings.device, settings.dtype_name):
        for fn in fns:
            for _ in range(settings.warmup):
                fn()
        runs = [[] for _ in fns]
        for _ in range(settings.repeats):
            for fn, fn_runs in zip(fns, runs):
                fn_runs.append(settings.measure(fn))
    return [
        (
            min(r[0] for r in fn_runs) * settings.scale,
            statistics.median(r[1] for r in fn_runs) / 2**20,
        )
        for fn_runs in runs
    ]


def core_table(stages, variants, settings):
    print_table_header(
        "Pairwise cores only (embeddings -> y), library fast core vs explicit", settings
    )
    for stage in stages:
        batch, channels, height, width = STAGES[stage]
        for name, make in CORES.items():
            if name not in variants:
                continue
            inputs, fast, explicit, owner = make(
                batch, channels, height * width, settings.device, settings.budget_mb
            )

            def make_fn(use_explicit, backward, inputs=inputs, fast=fast, explicit=explicit):
                return run_core(explicit if use_explicit else fast, inputs, backward)

            compare("core", stage, name, make_fn, owner, settings)
            del inputs, fast, explicit, owner
    print(f"load average after: {_load()}", flush=True)


def check_cores():
    """Every fast core equals its explicit one (outputs and input gradients) on a small input."""
    for name, make in CORES.items():
        inputs, fast, explicit, _ = make(2, 64, 30)
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


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", nargs="+", choices=sorted(STAGES), default=["res4", "res3"])
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=("block", "core", "paths", "compile"),
        default=["block", "core"],
        help="block: default path vs explicit; core: the aggregation alone; paths: each block "
        "forced onto each path it can take (fwd+bwd); compile: each block compiled with "
        "torch.compile vs eager (fwd+bwd)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        metavar="NAME",
        help=f"rows to measure (default all): {', '.join(map(repr, VARIANTS))}",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=ALL_PATHS,
        default=None,
        metavar="PATH",
        help="paths table: the paths to force (default every one the device can run): "
        + ", ".join(ALL_PATHS),
    )
    parser.add_argument(
        "--compile-backend",
        choices=COMPILE_BACKENDS,
        default="inductor",
        help="compile table: torch.compile's backend (default inductor)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=list(DTYPES),
        default=["fp32"],
        help="one table per dtype: fp32 (TF32 off), tf32 (CUDA), bf16 / fp16 (autocast)",
    )
    parser.add_argument(
        "--budget-mb",
        type=float,
        default=None,
        help="affinity_budget_mb of every block (default: the device's)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement (best kept)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed runs first (default: CUDA 2, CPU 0)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help="also append every row to FILE, one JSON object per line (seconds, MiB)",
    )
    return parser


def check_arguments(args):
    if args.repeats < 1:
        raise ValueError(f"--repeats={args.repeats} must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        raise ValueError(f"--warmup={args.warmup} must be >= 0")
    if args.budget_mb is not None and not args.budget_mb > 0:
        raise ValueError(f"--budget-mb={args.budget_mb} must be > 0 MiB (omit it for the default)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here (allowed: --device cpu)")
    if args.paths is not None:
        if "paths" not in args.tables and "compile" not in args.tables:
            raise ValueError(
                f"--paths {' '.join(args.paths)} selects rows of the paths and compile tables: "
                "add 'paths' or 'compile' to --tables"
            )
        device = torch.device(args.device)
        cannot = [path for path in args.paths if not path_runs_on(path, device)]
        if cannot:
            raise ValueError(
                f"--paths {' '.join(cannot)}: Triton cannot run on {args.device} here "
                "(CUDA with triton installed, or TRITON_INTERPRET=1)"
            )
        taken = {n: sorted(set(p) & set(args.paths)) for n, p in PATH_VARIANTS.items()}
        if not any(taken[name] for name in args.variants if name in taken):
            offers = "; ".join(f"{n}: {', '.join(p)}" for n, p in PATH_VARIANTS.items())
            raise ValueError(
                f"--paths {' '.join(args.paths)}: no variant of --variants takes any of them "
                f"(paths per variant: {offers})"
            )
    if args.device == "cpu" and "tf32" in args.dtype:
        raise ValueError("--dtype tf32 needs --device cuda (TF32 is a CUDA matmul mode)")


def main(argv=None):
    args = argument_parser().parse_args(argv)
    check_arguments(args)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warmup = args.warmup if args.warmup is not None else (2 if device.type == "cuda" else 0)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {where}, {args.threads} threads")
    if device.type == "cpu":
        print(f"fp32 matmul: {matmul_gflops():.1f} GFLOP/s")
    if "block" in args.tables or "paths" in args.tables:
        for make in VARIANTS.values():  # warm up every code path on a small map
            block = make(64).to(device)
            for explicit in (False, True):
                block.explicit = explicit
                run_block(block, torch.randn(2, 64, 6, 5, device=device), backward=True)()
    if "core" in args.tables:
        check_cores()  # also warms up every core
    for dtype_name in args.dtype:
        settings = Settings(device, dtype_name, args.budget_mb, args.repeats, warmup, args.json)
        if "block" in args.tables:
            block_table(args.stages, args.variants, settings)
        if "core" in args.tables:
            core_table(args.stages, args.variants, settings)
        if "paths" in args.tables:
            path_table(args.stages, args.variants, args.paths or ALL_PATHS, settings)
        if "compile" in args.tables:
            paths = args.paths or COMPILED_PATHS
            compile_table(args.stages, args.variants, paths, args.compile_backend, settings)


if __name__ == "__main__":
    main()
