#!/usr/bin/env python
"""
FLOPs, activations, parameters and structure of models with context blocks.

Works like detectron2's ``tools/analyze_model.py``, with two differences: FLOPs are counted with
:func:`nl_detectron.analysis.nonlocal_flop_handles`, so the attention of the blocks is included
(fvcore alone skips it), and the ``overhead`` task prints, for one or more configs, the cost of the
blocks relative to the stock detectron2 model of the same architecture.

Examples:

    # block cost of NL/DNL/SNL/GC Mask R-CNN R50-FPN on one synthetic 800x1333 image
    python tools/analyze_model.py --tasks overhead --input-size 800 1333 \\
        --config-file configs/mask_rcnn_nl_R50.yaml --config-file configs/mask_rcnn_dnl_R50.yaml \\
        --config-file configs/mask_rcnn_snl_R50.yaml --config-file configs/mask_rcnn_gc_R50.yaml \\
        MODEL.WEIGHTS ""

    # per-module FLOP table averaged over 10 images of cfg.DATASETS.TEST[0]
    python tools/analyze_model.py --tasks flop -n 10 --config-file CONFIG MODEL.WEIGHTS model.pth
"""

import argparse
import itertools
import logging
from collections import Counter

import numpy as np
import torch
import tqdm
from fvcore.nn import flop_count_table
from fvcore.nn.jit_handles import generic_activation_jit
from tabulate import tabulate

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils.analysis import (
    FlopCountAnalysis,
    activation_count_operators,
    parameter_count_table,
)
from detectron2.utils.logger import setup_logger

from nl_detectron.analysis import (
    find_nonlocal_blocks,
    load_stock_weights,
    load_tool_config,
    nonlocal_flop_handles,
    stock_config,
)

logger = logging.getLogger("nl_detectron.analyze_model")


def setup(config_file, opts):
    cfg = load_tool_config(config_file, opts, defaults=["DATALOADER.NUM_WORKERS", 0])
    cfg.freeze()
    return cfg


def load_model(cfg):
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def synthetic_inputs(size, seed=0):
    """Endless copies of one random image of network-input ``size`` (H, W), as model inputs."""
    height, width = size
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=generator).float()
    return itertools.repeat([{"image": image, "height": height, "width": width}])


def model_inputs(cfg, args):
    if args.input_size:
        return synthetic_inputs(args.input_size)
    return iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0]))


def count_flops(model, inputs, *, warn=True):
    flops = FlopCountAnalysis(model, inputs).set_op_handle(**nonlocal_flop_handles())
    if not warn:
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    flops.total()  # runs the trace
    return flops


def block_flops(flops, model):
    """FLOPs of the context blocks of ``model`` in a finished count of it."""
    by_module = flops.by_module()
    # detectron2's FlopCountAnalysis traces a TracingAdapter whose child "model" is the model
    return sum(by_module.get(f"model.{name}", 0) for name in find_nonlocal_blocks(model))


def do_flop(cfg, args):
    model = load_model(cfg)
    counts = Counter()
    totals = []
    for idx, data in zip(tqdm.trange(args.num_inputs), model_inputs(cfg, args)):
        flops = count_flops(model, data, warn=idx == 0)
        counts += flops.by_operator()
        totals.append(flops.total())
        blocks = block_flops(flops, model)
    logger.info("FLOP table of the last input:\n" + flop_count_table(flops, max_depth=5))
    logger.info(
        "Average GFLOPs per operator: "
        + ", ".join(f"{k}: {v / len(totals) / 1e9:.3f}" for k, v in counts.most_common())
    )
    logger.info(
        f"Total GFLOPs: {np.mean(totals) / 1e9:.2f} ± {np.std(totals) / 1e9:.2f}; "
        f"context blocks (last input): {blocks / 1e9:.3f}"
    )


def do_activation(cfg, args):
    model = load_model(cfg)
    # the output of the fused attention is an activation like any conv output
    extra = {"aten::scaled_dot_product_attention": generic_activation_jit()}
    counts = Counter()
    totals = []
    for _, data in zip(tqdm.trange(args.num_inputs), model_inputs(cfg, args)):
        count = activation_count_operators(model, data, supported_ops=extra)
        counts += count
        totals.append(sum(count.values()))
    logger.info(
        "Average (million) activations per operator: "
        + ", ".join(f"{k}: {v / len(totals):.2f}" for k, v in counts.most_common())
    )
    logger.info(f"Total (million) activations: {np.mean(totals):.2f} ± {np.std(totals):.2f}")


def do_parameter(cfg, args):
    logger.info("Parameter count:\n" + parameter_count_table(build_model(cfg), max_depth=5))


def do_structure(cfg, args):
    logger.info("Model structure:\n" + str(build_model(cfg)))


def describe_blocks(model):
    """e.g. "1 NonLocalBlock: res4.nonlocal5" for the blocks of a model."""
    places = {}
    for name, block in find_nonlocal_blocks(model).items():
        where = name.replace("backbone.bottom_up.", "").replace("backbone.", "")
        where = where.replace("roi_heads.keypoint_head.", "keypoint_head.").replace(".block", "")
        places.setdefault(type(block).__name__, []).append(where)
    return "; ".join(f"{len(p)} {kind}: {', '.join(p)}" for kind, p in places.items())


def do_overhead(cfgs, args):
    """
    For each config: FLOPs and parameters of the model with context blocks vs. the stock model.

    The model with blocks loads the stock model's weights (only the blocks are missing), and the
    blocks start as the identity, so both models make the same detections and the difference is
    the blocks' own cost. On synthetic input the box score threshold is 0, so the heads always run
    on the full cfg.TEST.DETECTIONS_PER_IMAGE detections.

    Returns:
        list[dict]: per config: config, blocks (description), flops, block_flops, params,
        stock_flops, stock_params.
    """
    stock_results = {}  # one stock model per distinct architecture
    results = []
    for path, cfg in cfgs:
        if args.input_size:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
            cfg.freeze()
        stock_cfg = stock_config(cfg, source=path)
        key = stock_cfg.clone()
        key.defrost()
        del key.MODEL["NONLOCAL"]  # the stock model does not read it
        key = key.dump()
        if key not in stock_results:
            torch.manual_seed(0)
            stock = load_model(stock_cfg)
            flops = count_flops(stock, next(model_inputs(stock_cfg, args)), warn=False)
            stock_results[key] = (stock, flops.total(), sum(p.numel() for p in stock.parameters()))
        stock, stock_flops, stock_params = stock_results[key]

        model = build_model(cfg).eval()
        if not load_stock_weights(model, stock, source=path):
            raise ValueError(f"{path} builds a model without context blocks")
        flops = count_flops(model, next(model_inputs(cfg, args)), warn=False)
        results.append(
            {
                "config": path,
                "stock": stock_cfg.MODEL.BACKBONE.NAME,
                "blocks": describe_blocks(model),
                "flops": flops.total(),
                "block_flops": block_flops(flops, model),
                "params": sum(p.numel() for p in model.parameters()),
                "stock_flops": stock_flops,
                "stock_params": stock_params,
            }
        )
    log_overhead_table(results, args)
    return results


def log_overhead_table(results, args):
    rows, stocks = [], set()
    for r in results:
        if (r["stock"], r["stock_flops"]) not in stocks:
            stocks.add((r["stock"], r["stock_flops"]))
            rows.append(
                [f"stock ({r['stock']})", "-", r["stock_flops"] / 1e9, "-", "-"]
                + [r["stock_params"] / 1e6, "-"]
            )
        rows.append(
            [
                r["config"],
                r["blocks"],
                r["flops"] / 1e9,
                f"+{100 * (r['flops'] / r['stock_flops'] - 1):.2f}%",
                f"{r['block_flops'] / 1e9:.2f}",  # a text column ("-" for stock): format here
                r["params"] / 1e6,
                f"+{100 * (r['params'] / r['stock_params'] - 1):.2f}%",
            ]
        )
    headers = ["config", "blocks", "GFLOPs", "vs stock", "blocks GFLOPs", "params (M)", "vs stock"]
    source = (
        f"one synthetic {args.input_size[0]}x{args.input_size[1]} image"
        if args.input_size
        else "the first image of cfg.DATASETS.TEST[0]"
    )
    logger.info(
        f"Cost of the context blocks, eval mode, FLOPs (multiply-adds) on {source}:\n"
        + tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".2f")
    )


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file",
        required=True,
        action="append",
        metavar="FILE",
        help="path to config file; repeat it to analyse several (one overhead row each)",
    )
    parser.add_argument(
        "--tasks",
        choices=["flop", "activation", "parameter", "structure", "overhead"],
        required=True,
        nargs="+",
    )
    parser.add_argument(
        "-n",
        "--num-inputs",
        default=100,
        type=int,
        help="inputs to average flops/activations over (both depend on the image)",
    )
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="use one synthetic image of this network-input size instead of the test dataset",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config options (KEY VALUE pairs) applied to every config, e.g. MODEL.WEIGHTS ''",
    )
    return parser


def main(argv=None):
    args = argument_parser().parse_args(argv)
    if args.num_inputs < 1:
        raise ValueError(f"--num-inputs={args.num_inputs} must be >= 1")
    if args.input_size and min(args.input_size) < 32:
        raise ValueError(f"--input-size {args.input_size} must be at least 32 pixels per side")
    setup_logger(name="fvcore")
    setup_logger(name="nl_detectron")
    setup_logger()
    cfgs = [(path, setup(path, args.opts or [])) for path in args.config_file]
    results = {}
    for task in args.tasks:
        if task == "overhead":
            results[task] = do_overhead(cfgs, args)
            continue
        fn = {
            "flop": do_flop,
            "activation": do_activation,
            "parameter": do_parameter,
            "structure": do_structure,
        }[task]
        for _, cfg in cfgs:
            fn(cfg, args)
    return results


if __name__ == "__main__":
    main()
