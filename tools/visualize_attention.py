#!/usr/bin/env python
"""
Draw where the context blocks of a trained model look, for query points on real images.

For every image, every context block in the backbone and every query point, one PNG of the
image's size: the query's attention weights over the block's key grid as a heat overlay and
arrows from the query to its ``--top-k`` most-attended positions (Figure 3 of Wang et al. 2018).
The weights come from the block's own ``attention_weights(x, queries)`` on its input, captured
with a forward hook; no N x N affinity is built.

Examples:

    python tools/visualize_attention.py --config-file CONFIG --input photo.jpg \\
        --queries 320,200 100,50 --output attention/ --opts MODEL.WEIGHTS model_final.pth

    # the 3 queries each block changes most, on every image of a folder, plus an overview
    python tools/visualize_attention.py --config-file CONFIG --input photos/ --num-queries 3 \\
        --overview --output attention/ --opts MODEL.WEIGHTS model_final.pth

    # nl_context (docs/context_benchmark.md): queries on the targets of the first 4 val images,
    # and the share of attention on each target's partner averaged over the whole split
    python tools/visualize_attention.py --config-file CONFIG --dataset nl_context_bind_val \\
        --overview --output attention/ --opts MODEL.WEIGHTS model_final.pth
"""

import json
import logging
import os
import re

import cv2

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from nl_detectron.analysis import (
    attention_maps,
    draw_attention,
    expand_image_paths,
    find_nonlocal_blocks,
    image_tool_argument_parser,
    load_tool_config,
    parse_tool_args,
    partner_attention,
    record_block_inputs,
    strongest_queries,
    target_attention_shares,
    tile_images,
)

logger = logging.getLogger("nl_detectron.visualize_attention")

PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 9]  # photos compress poorly; keep files small


def setup(args):
    cfg = load_tool_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def parse_point(text):
    match = re.fullmatch(r"\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*", text)
    if not match:
        raise ValueError(f"query point {text!r} is not of the form X,Y (pixels, e.g. 320,200)")
    return float(match.group(1)), float(match.group(2))


def short_name(block_name):
    """backbone.bottom_up.res4.nonlocal5.block -> res4.nonlocal5"""
    name = block_name.replace("backbone.bottom_up.", "").replace("backbone.", "")
    return name[: -len(".block")] if name.endswith(".block") else name


def backbone_blocks(model, config_file, selected):
    blocks = find_nonlocal_blocks(model)
    if not blocks:
        raise ValueError(
            f"config {config_file!r} builds a model without context blocks (NonLocalBlock, "
            "DisentangledNonLocalBlock, SpectralNonLocalBlock or ContextBlock); use a config whose "
            "MODEL.BACKBONE.NAME is build_nonlocal_backbone, build_resnet_nl_fpn_backbone or "
            "build_resnet_nl_backbone"
        )
    in_backbone = {n: b for n, b in blocks.items() if n.startswith("backbone.")}
    if not in_backbone:
        raise ValueError(
            f"config {config_file!r} has context blocks only outside the backbone "
            f"({list(blocks)}); attention maps are drawn for blocks that see the whole image"
        )
    if selected:
        unknown = [s for s in selected if s not in {short_name(n) for n in in_backbone}]
        if unknown:
            raise ValueError(
                f"--blocks {unknown} not found; allowed: {[short_name(n) for n in in_backbone]}"
            )
        in_backbone = {n: b for n, b in in_backbone.items() if short_name(n) in selected}
    return in_backbone


def image_jobs(args):
    """(image path, dataset record or None) per image to draw, and the dataset's records (None
    without ``--dataset``)."""
    if args.dataset and args.input:
        raise ValueError("--input and --dataset both given; pass images or a dataset, not both")
    if not args.dataset:
        if not args.input:
            raise ValueError("no images: pass --input (files, folders, patterns) or --dataset NAME")
        return [(path, None) for path in expand_image_paths(args.input)], None
    if args.max_images < 1:
        raise ValueError(f"--max-images={args.max_images} must be >= 1")
    records = DatasetCatalog.get(args.dataset)
    return [(r["file_name"], r) for r in records[: args.max_images]], records


def target_centres(record):
    """Box centres of the targets (the annotations that name a partner; nl_context's cue objects
    are not queried), in the order of target_attention_shares."""
    return [
        (a["bbox"][0] + a["bbox"][2] / 2, a["bbox"][1] + a["bbox"][3] / 2)
        for a in record["annotations"]
        if "partner" in a
    ]


def visualize(args):
    """Writes the PNGs (and with ``--dataset`` partner_attention.json); returns their paths."""
    if args.top_k < 1:
        raise ValueError(f"--top-k={args.top_k} must be >= 1")
    if args.num_queries < 1:
        raise ValueError(f"--num-queries={args.num_queries} must be >= 1")
    queries = [parse_point(q) for q in args.queries or []]
    jobs, records = image_jobs(args)
    cfg = setup(args)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    blocks = backbone_blocks(model, args.config_file, args.blocks)
    transform = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    os.makedirs(args.output, exist_ok=True)

    written = []
    for path, record in jobs:
        image = detection_utils.read_image(path, format="RGB")  # [H, W, 3] uint8
        model_image = image if cfg.INPUT.FORMAT == "RGB" else image[:, :, ::-1]
        inputs, geometry = record_block_inputs(model, model_image, transform, blocks)
        stem = os.path.splitext(os.path.basename(path))[0]
        overview = []
        for name, block in blocks.items():
            x = inputs[name]
            shares = None
            if queries:
                points = queries
            elif record is not None:
                points = target_centres(record)
                shares = target_attention_shares(model, name, record, transform, cfg.INPUT.FORMAT)
            else:
                points = strongest_queries(block, x, geometry, args.num_queries)
            row = []
            for q, amap in enumerate(attention_maps(block, name, x, geometry, points, args.top_k)):
                title = (
                    f"{type(block).__name__} {short_name(name)}: max weight "
                    f"{amap.weights.max():.3g} (uniform {1 / amap.weights.size:.3g})"
                    if shares is None
                    # the uniform share goes to the log: a 128 px picture holds ~16 characters
                    else f"on partner {100 * shares[q]['partner_share']:.0f}%"
                )
                picture = draw_attention(image, amap, title=title)
                out = os.path.join(args.output, f"{stem}_{short_name(name)}_q{q}.png")
                cv2.imwrite(out, picture[:, :, ::-1], PNG_OPTIONS)
                written.append(out)
                row.append(picture)
                top = ", ".join(
                    f"({px:.0f},{py:.0f}):{w:.3g}"
                    for (px, py), w in zip(amap.top_xy[:3], amap.top_weights[:3])
                )
                on_partner = (
                    ""
                    if shares is None
                    else f", on the partner {100 * shares[q]['partner_share']:.1f}% (uniform "
                    f"{100 * shares[q]['partner_uniform']:.1f}%)"
                )
                logger.info(
                    f"{stem} {short_name(name)} query ({amap.query_xy[0]:.0f},"
                    f"{amap.query_xy[1]:.0f}): strongest keys {top}{on_partner} -> {out}"
                )
            overview.append(row)
        if args.overview:
            out = os.path.join(args.output, f"{stem}_overview.png")
            cv2.imwrite(out, tile_images(overview, args.overview_width)[:, :, ::-1], PNG_OPTIONS)
            written.append(out)
            logger.info(f"overview -> {out}")
    if records is not None:
        written.append(write_partner_statistic(args, cfg, model, blocks, records, transform))
    return written


def write_partner_statistic(args, cfg, model, blocks, records, transform):
    """Logs and writes (output/partner_attention.json) the partner share of every block."""
    stats = {}
    for name in blocks:
        stat = partner_attention(model, name, records, transform, cfg.INPUT.FORMAT)
        stats[short_name(name)] = stat.as_dict()
        logger.info(
            f"{args.dataset} {short_name(name)} over {stat.num_queries} targets: on the partner "
            f"{100 * stat.partner_share:.1f}% (uniform {100 * stat.partner_uniform:.1f}%, "
            f"x{stat.partner_lift:.1f}), on the distractor {100 * stat.distractor_share:.1f}% "
            f"(uniform {100 * stat.distractor_uniform:.1f}%)"
        )
    out = os.path.join(args.output, "partner_attention.json")
    with open(out, "w") as f:
        json.dump({"dataset": args.dataset, "blocks": stats}, f, indent=1)
    return out


def argument_parser():
    parser = image_tool_argument_parser(__doc__, "folder for the PNGs", input_required=False)
    parser.add_argument(
        "--dataset",
        metavar="NAME",
        help="instead of --input: a registered dataset whose targets name their partner "
        "(nl_context_bind_val); queries on its targets and the partner-attention statistic",
    )
    parser.add_argument(
        "--max-images", type=int, default=4, help="with --dataset: how many images to draw"
    )
    parser.add_argument(
        "--queries",
        nargs="+",
        metavar="X,Y",
        help="query points in original-image pixels (default: the strongest queries per block)",
    )
    parser.add_argument(
        "--num-queries",
        type=int,
        default=3,
        help="without --queries: how many of the positions each block changes most",
    )
    parser.add_argument("--top-k", type=int, default=20, help="arrows per query (paper: 20)")
    parser.add_argument(
        "--blocks", nargs="+", metavar="NAME", help="only these blocks, e.g. res4.nonlocal5"
    )
    parser.add_argument(
        "--overview", action="store_true", help="also one tiled PNG per image (blocks x queries)"
    )
    parser.add_argument("--overview-width", type=int, default=320, help="panel width in overviews")
    return parser


def main(argv=None):
    return visualize(parse_tool_args(argument_parser(), argv))


if __name__ == "__main__":
    main()
