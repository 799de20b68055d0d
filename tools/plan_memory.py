#!/usr/bin/env python
"""
What each context block's pairwise aggregation will hold on the GPU (or CPU), before you launch.

For a config, an input size, a batch, a device type, a compute dtype and a memory budget, prints
per block its map (N query and M key positions), the computation path the path policy would take
and the predicted peak bytes of its aggregation in training and in inference, then the blocks'
sum. The policy is a pure function of those facts, so a CUDA plan needs no GPU: the CUDA default
budget (1/16 of the card) then comes from --gpu-memory-gb. Model, methodology and where the
predictions differ from measured peaks: docs/attention_paths.md ("Planning memory").

Examples:

    # R-50 Mask R-CNN with 5 NL blocks, 800x1333 (the config's largest test size), 2 images per
    # GPU, bf16 autocast, on an 80 GiB card's default budget
    python tools/plan_memory.py --config-file configs/mask_rcnn_nl5_R50.yaml --dtype bf16

    # the same on a 16 GB card under a 512 MiB budget, TF32
    python tools/plan_memory.py --config-file configs/mask_rcnn_nl5_R50.yaml --dtype tf32 \\
        --gpu-memory-gb 16 --budget-mb 512

    # check the predictions on this machine: run each block's aggregation on the planned path
    python tools/plan_memory.py --config-file configs/mask_rcnn_nl_R50.yaml --device cpu --measure
"""

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from detectron2.modeling import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_blocks import forced_path, measure_cpu, measure_cuda, precision

from nl_detectron.analysis import load_tool_config
from nl_detectron.analysis.memory_plan import (
    DEVICES,
    DTYPES,
    Settings,
    block_places,
    largest_test_size,
    padded,
    parse_size,
    plan_model,
    totals,
)
from nl_detectron.layers.attention_policy import (
    CPU_DEFAULT_BUDGET_MB,
    CUDA_DEFAULT_BUDGET_FRACTION,
)

MiB = 2**20
# Card memory assumed for a CUDA plan on a machine without a GPU (GiB, as torch reports it).
DEFAULT_GPU_MEMORY_GB = 80


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a YAML config")
    parser.add_argument(
        "--size",
        metavar="HxW",
        help="network input in pixels, e.g. 800x1333 (default: the config's largest test size, "
        "INPUT.MIN_SIZE_TEST x INPUT.MAX_SIZE_TEST)",
    )
    parser.add_argument("--batch", type=int, default=2, help="images per device (default 2)")
    parser.add_argument("--device", choices=DEVICES, default="cuda")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="fp32",
        help="fp32 (TF32 off), tf32 (fp32 with TF32 matmuls, CUDA), bf16 / fp16 (autocast)",
    )
    parser.add_argument(
        "--budget-mb",
        type=float,
        help="affinity budget of every block, MiB (default: MODEL.NONLOCAL.AFFINITY_BUDGET_MB, "
        "else the device's default: CPU 512, CUDA 1/16 of the card)",
    )
    parser.add_argument(
        "--gpu-memory-gb",
        type=float,
        help="the card's memory in GiB, for the CUDA default budget (default: this machine's GPU, "
        f"else {DEFAULT_GPU_MEMORY_GB})",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="also run each block's aggregation on this machine on its planned path and print "
        "the measured peaks (CPU; CUDA where a GPU is; a CUDA plan without one runs its paths on "
        "the CPU, fp32 / tf32 only)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config options (KEY VALUE pairs), e.g. MODEL.NONLOCAL.INSTANTIATION gaussian",
    )
    return parser


def check_arguments(args):
    """ValueErrors naming the option for what cannot be planned."""
    if args.batch < 1:
        raise ValueError(f"--batch={args.batch} must be >= 1")
    if args.dtype == "tf32" and args.device != "cuda":
        raise ValueError("--dtype tf32 needs --device cuda (TF32 is a CUDA matmul mode)")
    if args.budget_mb is not None and not args.budget_mb > 0:
        raise ValueError(f"--budget-mb={args.budget_mb} must be > 0 MiB (omit it for the default)")
    if args.gpu_memory_gb is not None:
        if args.device != "cuda":
            raise ValueError("--gpu-memory-gb sets the CUDA default budget: it needs --device cuda")
        if not args.gpu_memory_gb > 0:
            raise ValueError(f"--gpu-memory-gb={args.gpu_memory_gb} must be > 0")
    size = parse_size(args.size) if args.size else None
    on_cpu_instead = args.device == "cuda" and not torch.cuda.is_available()
    if args.measure and on_cpu_instead and args.dtype in ("bf16", "fp16"):
        raise ValueError(
            f"--measure --device cuda --dtype {args.dtype}: no GPU here, and the CPU's 16-bit "
            "products copy operands to fp32 where CUDA's do not (measure fp32 / tf32 plans, or "
            "--device cpu)"
        )
    return size


def default_budget(args):
    """(MiB, how it was chosen) of the device's default budget."""
    if args.device == "cpu":
        return float(CPU_DEFAULT_BUDGET_MB), f"CPU default {CPU_DEFAULT_BUDGET_MB} MiB"
    if args.gpu_memory_gb is not None:
        gib, source = args.gpu_memory_gb, "--gpu-memory-gb"
    elif torch.cuda.is_available():
        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
        source = torch.cuda.get_device_name(0)
    else:
        gib, source = DEFAULT_GPU_MEMORY_GB, "assumed: no GPU here, set --gpu-memory-gb"
    budget = gib * 1024 * CUDA_DEFAULT_BUDGET_FRACTION
    return budget, f"CUDA default 1/16 of a {gib:g} GiB card ({source}): {budget:.0f} MiB"


def setup(args):
    # The model is only built to find its blocks (on the CPU), never run as a whole.
    defaults = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
    cfg = load_tool_config(args.config_file, args.opts or [], defaults=defaults)
    cfg.freeze()
    return cfg


def _mib(value):
    return f"{value / MiB:.0f}" if value is not None else "-"


def _path(mode):
    if mode is None:
        return "-"
    choice = mode[0]
    chunked = choice.path.startswith("chunked")
    return f"{choice.path} ({choice.rows} rows)" if chunked else choice.path


def short_name(name):
    """ "res4.nonlocal5" for "backbone.bottom_up.res4.nonlocal5.block"."""
    for prefix in ("backbone.bottom_up.", "backbone.", "roi_heads."):
        name = name[len(prefix) :] if name.startswith(prefix) else name
    return name[: -len(".block")] if name.endswith(".block") else name


def plan_rows(plans, measured=None):
    """Table rows, one per block; ``measured``: name -> (training, inference) bytes or None."""
    rows = []
    for plan in plans:
        widths = f"{plan.widths[0]}/{plan.widths[1]}" if plan.widths else plan.kind
        row = [
            short_name(plan.name),
            plan.block,
            plan.channels,
            "x".join(map(str, plan.spatial)),
            plan.num_queries,
            plan.num_keys,
            widths,
            f"{plan.batch[0]} / {plan.batch[1]}",
            _path(plan.training),
            _mib(plan.training and plan.training[1]),
            _path(plan.inference),
            _mib(plan.inference and plan.inference[1]),
        ]
        if measured is not None:
            row += [_mib(value) for value in measured.get(plan.name, (None, None))]
        rows.append(row)
    return rows


HEADERS = [
    "block",
    "type",
    "C",
    "map",
    "N",
    "M",
    "D/E",
    "samples (train / infer)",
    "training path",
    "training MiB",
    "inference path",
    "inference MiB",
]


def print_plan(args, size, padded_size, budget_note, plans, measured=None):
    padding = "" if padded_size == size else " (padded to {}x{})".format(*padded_size)
    budget = f"{args.budget_mb:g} MiB (--budget-mb)" if args.budget_mb else budget_note
    print(
        f"{args.config_file}: {size[0]}x{size[1]} input{padding}, {args.batch} image(s) per "
        f"device, {args.device} {args.dtype}; budget (unless the config sets one): {budget}"
    )
    headers = HEADERS + (["measured train MiB", "measured infer MiB"] if measured else [])
    print(tabulate(plan_rows(plans, measured), headers=headers, tablefmt="pipe"))
    sums = totals(plans)
    print(
        f"\nblocks' aggregations: training {_mib(sums['training'][0])} MiB in all "
        f"(largest {_mib(sums['training'][1])}), inference {_mib(sums['inference'][0])} MiB in all "
        f"(largest {_mib(sums['inference'][1])}). Peak bytes of each aggregation: its kept "
        "operands, output and gradients plus its N x M buffers; '-': no N x M aggregation "
        "(dot product, SNL: associative; GC: pooled), not under the budget. In training a kept "
        "affinity stays alive from its block's forward to its backward, so kept blocks add up."
    )


def _forced(choice):
    """The block's aggregation takes the plan's ``choice`` (None: a block without one), whatever
    this device would pick; chunks as the plan's budget sizes them (the block carries it)."""
    return forced_path(choice.path) if choice else contextlib.nullcontext()


def _aggregation_args(block, x, device, dtype_name):
    """The arguments the block's forward on ``x`` passes to its ``_aggregate``."""
    captured = []

    def capture(*args):
        captured.append(args)
        return type(block)._aggregate(block, *args)

    block._aggregate = capture  # an instance attribute shadows the method for this call
    try:
        with torch.no_grad(), precision(device, dtype_name):
            block(x)
    finally:
        del block._aggregate
    return captured[0]


def measure_aggregation(block, plan, samples, training, choice, device, dtype_name):
    """Peak extra bytes of ``block``'s aggregation on [samples, C, *spatial] on ``choice``, as
    in the block: its inputs are copies of the block's own embeddings made inside the
    measurement (so counted, and freed once nothing holds them, as the block's are), and in
    training its incoming gradient is made there too, laid out as the block's (transposed), and
    the gradients it returns are counted as they come out (none is copied into a ``.grad``)."""
    x = torch.randn(samples, plan.channels, *plan.spatial, device=device)
    block.affinity_budget_mb = plan.budget_mb
    with _forced(choice):
        args = _aggregation_args(block, x, device, dtype_name)
    del x
    leaves = {id(a): a.detach().requires_grad_(training) for a in args}
    sources = list(leaves.values())

    def forward():
        copies = {}  # "gaussian" passes one tensor as queries and keys: one copy
        inputs = [copies.setdefault(id(a), leaves[id(a)].clone()) for a in args]
        return block._aggregate(*inputs)  # [B, N, E]; the copies live on where it keeps them

    def run():
        with torch.set_grad_enabled(training):
            y = forward()
            if training:
                grad = torch.ones(y.shape[0], y.shape[2], y.shape[1], dtype=y.dtype, device=device)
                torch.autograd.grad(y.transpose(1, 2), sources, grad)

    measure = measure_cuda if device.type == "cuda" else measure_cpu
    with _forced(choice), precision(device, dtype_name):
        run()  # warm-up
        peak = measure(run)[1]
    if choice and block.last_path != choice:
        raise RuntimeError(f"{plan.name}: planned {choice}, measured {block.last_path}")
    return peak


def measure_plans(plans, places, args):
    """name -> (training, inference) measured peak bytes (None where the plan has no
    aggregation to measure), one measurement per distinct block, map and batch."""
    on_gpu = args.device == "cuda" and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype_name = "fp32" if args.dtype == "tf32" and not on_gpu else args.dtype
    cache, measured = {}, {}
    for plan in plans:
        block = places[plan.name][0].to(device).train()
        values = []
        for index, (mode, samples) in enumerate(zip((plan.training, plan.inference), plan.batch)):
            dot_product = getattr(block, "instantiation", None) == "dot_product"
            if mode is None and not dot_product:  # SNL, GC: nothing pairwise to measure
                values.append(None)
                continue
            key = (plan.block, plan.channels, plan.spatial, samples, index, mode and mode[0])
            if key not in cache:
                choice = mode[0] if mode else None
                cache[key] = measure_aggregation(
                    block, plan, samples, index == 0, choice, device, dtype_name
                )
            values.append(cache[key])
        measured[plan.name] = tuple(values)
    return measured


def main(argv=None):
    args = argument_parser().parse_args(argv)
    size = check_arguments(args)
    cfg = setup(args)
    size = size or largest_test_size(cfg)
    budget_mb, budget_note = default_budget(args)
    settings = Settings(args.batch, args.device, args.dtype, args.budget_mb, budget_mb)
    torch.manual_seed(0)
    model = build_model(cfg)
    plans = plan_model(model, cfg, *size, settings)
    if not plans:
        raise ValueError(f"{args.config_file} builds no context block (MODEL.NONLOCAL.STAGES?)")
    measured = None
    if args.measure:
        measured = measure_plans(plans, block_places(model, cfg, *size, args.batch), args)
    divisibility = model.backbone.size_divisibility
    padded_size = tuple(padded(side, divisibility) for side in size)
    print_plan(args, size, padded_size, budget_note, plans, measured)
    return {"plans": plans, "measured": measured, "size": size, "budget_mb": budget_mb}


if __name__ == "__main__":
    main()
