#!/usr/bin/env python
"""
The long-range A/B experiment: the stock model and the same model with context blocks, trained
and evaluated on ``nl_context`` (an ellipse's category is the shape of a distant partner) over
several seeds, then one table of mean and spread per model. See docs/context_benchmark.md.

Every run is ``tools/train_net.py`` on one config (written to ``<output>/<model>/seed<S>/``) that
differs from the others only in ``SEED`` and in the blocks: ``stock`` is detectron2's own backbone
(``nl_detectron.analysis.stock_config``), ``nl`` / ``dnl`` / ``snl`` / ``gc`` set
``MODEL.NONLOCAL.TYPE``. Box and mask AP come from the project's evaluator (FastCOCOEvaluator) on
``nl_context_val``; for models with blocks the attention share on each target's partner
(``nl_detectron.analysis.partner_attention``) is measured on the same split. Finished runs are
reused, so an interrupted experiment continues where it stopped.

Examples:

    # the default: stock vs NL, seeds 0 1 2, two trainings at once; about 16 minutes on 2 CPU
    # cores shared with other jobs (docs/context_benchmark.md)
    python tools/context_ab.py --output output/context_ab

    # every block type, a 4x longer schedule, on a GPU
    python tools/context_ab.py --models stock nl dnl snl gc --scale 4 --output output/ab_gpu \\
        --opts MODEL.DEVICE cuda
"""

import argparse
import json
import logging
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

import numpy as np

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from nl_detectron.analysis import (
    add_opts_argument,
    find_nonlocal_blocks,
    load_tool_config,
    stock_config,
)
from nl_detectron.analysis.partner_attention import partner_attention

logger = logging.getLogger("nl_detectron.context_ab")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
DEFAULT_CONFIG = os.path.join(
    REPO, "configs", "quick_schedules", "mask_rcnn_nl_R18_context_quick.yaml"
)
BLOCK_TYPES = ("nl", "dnl", "snl", "gc")
MODELS = ("stock",) + BLOCK_TYPES
# Per-type settings beside MODEL.NONLOCAL.TYPE (as in configs/quick_schedules/*_R18_kp_quick.yaml).
TYPE_OPTS = {"gc": ["MODEL.NONLOCAL.GC_RATIO", "0.25"]}
# (column, metrics.json key) of the AP columns, COCO AP in percent.
AP_METRICS = (
    ("box AP", "bbox/AP"),
    ("box AP50", "bbox/AP50"),
    ("mask AP", "segm/AP"),
    ("mask AP50", "segm/AP50"),
)


def run_config(base_cfg, model: str, seed: int, scale: float, output_dir: str):
    """The config of one run: ``base_cfg`` with ``model``'s blocks, ``seed`` and the schedule
    scaled by ``scale`` (iterations, LR steps and warm-up)."""
    cfg = stock_config(base_cfg, source="the A/B config") if model == "stock" else base_cfg
    cfg = cfg.clone()
    cfg.defrost()
    if model != "stock":
        cfg.merge_from_list(["MODEL.NONLOCAL.TYPE", model] + TYPE_OPTS.get(model, []))
    solver = cfg.SOLVER
    solver.MAX_ITER = max(1, round(solver.MAX_ITER * scale))
    solver.STEPS = tuple(max(1, round(s * scale)) for s in solver.STEPS)
    solver.WARMUP_ITERS = min(round(solver.WARMUP_ITERS * scale), solver.MAX_ITER)
    cfg.SEED = seed
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    return cfg


def final_metrics(output_dir: str) -> Dict[str, float]:
    """The last evaluation that train_net logged to ``output_dir/metrics.json``; {} if none."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return {}
    found = {}
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            if "bbox/AP" in entry:
                found = entry
    return found


def train(cfg, threads: int) -> Dict[str, float]:
    """Runs tools/train_net.py on ``cfg`` (log in OUTPUT_DIR/train.log) unless it has finished."""
    out = cfg.OUTPUT_DIR
    metrics = final_metrics(out)
    if metrics and os.path.isfile(os.path.join(out, "model_final.pth")):
        logger.info(f"{out}: finished earlier, reusing its results")
        return metrics
    os.makedirs(out, exist_ok=True)
    config_file = os.path.join(out, "config.yaml")
    with open(config_file, "w") as f:
        f.write(cfg.dump())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    log_file = os.path.join(out, "train.log")
    logger.info(f"training {out} ({cfg.SOLVER.MAX_ITER} iterations) -> {log_file}")
    with open(log_file, "w") as log:
        proc = subprocess.run(
            [sys.executable, TRAIN_NET, "--config-file", config_file],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    metrics = final_metrics(out)
    if proc.returncode != 0 or not metrics:
        raise RuntimeError(f"training {out} failed (exit code {proc.returncode}); see {log_file}")
    return metrics


def attention_statistic(cfg, dataset: str) -> dict:
    """The partner-attention statistic of the trained model of ``cfg`` (its first backbone block)
    on ``dataset``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    cfg.freeze()
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    blocks = [n for n in find_nonlocal_blocks(model) if n.startswith("backbone.")]
    transform = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    records = DatasetCatalog.get(dataset)
    return partner_attention(model, blocks[0], records, transform, cfg.INPUT.FORMAT).as_dict()


def mean_spread(values: List[float]) -> str:
    """``mean ± sample standard deviation`` (just the value for one run)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def summary_table(results: Dict[str, List[dict]]) -> str:
    """A Markdown table: one row per model, AP columns and attention shares as mean ± std."""
    header = ["model", "seeds"] + [name for name, _ in AP_METRICS]
    header += ["partner share % (uniform)", "distractor share % (uniform)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, runs in results.items():
        row = [model, str(len(runs))]
        row += [
            mean_spread([r["metrics"].get(key, math.nan) for r in runs]) for _, key in AP_METRICS
        ]
        for kind in ("partner", "distractor"):
            stats = [r["attention"] for r in runs if r.get("attention")]
            if not stats:
                row.append("—")
                continue
            share = mean_spread([100 * s[f"{kind}_share"] for s in stats])
            uniform = np.mean([100 * s[f"{kind}_uniform"] for s in stats])
            row.append(f"{share} ({uniform:.1f})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_experiment(args) -> Dict[str, List[dict]]:
    """Trains and evaluates every (model, seed); writes results.json and table.md to --output."""
    if args.scale <= 0:
        raise ValueError(f"--scale={args.scale} must be > 0")
    if args.jobs < 1:
        raise ValueError(f"--jobs={args.jobs} must be >= 1")
    if args.threads < 0:
        raise ValueError(f"--threads={args.threads} must be >= 0 (0: cores / jobs)")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds {args.seeds} repeat a seed; give distinct seeds")
    base = load_tool_config(args.config_file, args.opts)
    base.freeze()
    dataset = base.DATASETS.TEST[0]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    configs = {
        (seed, model): run_config(
            base, model, seed, args.scale, os.path.join(args.output, model, f"seed{seed}")
        )
        # seed by seed, so that an interrupted experiment leaves whole A/B pairs
        for seed in args.seeds
        for model in args.models
    }
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {key: pool.submit(train, cfg, threads) for key, cfg in configs.items()}
        metrics = {key: future.result() for key, future in futures.items()}

    results: Dict[str, List[dict]] = {model: [] for model in args.models}
    for (seed, model), cfg in configs.items():
        run = {"seed": seed, "output_dir": cfg.OUTPUT_DIR, "metrics": metrics[(seed, model)]}
        if model != "stock":
            run["attention"] = attention_statistic(cfg, dataset)
        results[model].append(run)
        logger.info(
            f"{model} seed {seed}: box AP {run['metrics']['bbox/AP']:.1f}, mask AP "
            f"{run['metrics'].get('segm/AP', math.nan):.1f}"
            + (
                f", partner share {run['attention']['partner_share']:.3f} (uniform "
                f"{run['attention']['partner_uniform']:.3f})"
                if "attention" in run
                else ""
            )
        )
    table = summary_table(results)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(
            {"config": args.config_file, "scale": args.scale, "opts": args.opts, "runs": results},
            f,
            indent=1,
        )
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(table + "\n")
    logger.info(f"results on {dataset} ({len(args.seeds)} seeds, COCO AP in %):\n{table}")
    return results


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["stock", "nl"],
        choices=MODELS,
        help="models to compare (default: stock nl)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies the config's schedule (iterations, LR steps, warm-up)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    parser.add_argument(
        "--threads", type=int, default=0, help="OMP threads per training (0: cores / jobs)"
    )
    parser.add_argument("--output", default="output/context_ab", help="folder for runs and table")
    add_opts_argument(parser)
    return parser


def main(argv=None):
    args = argument_parser().parse_args(argv)
    setup_logger(name="nl_detectron")
    os.makedirs(args.output, exist_ok=True)
    return run_experiment(args)


if __name__ == "__main__":
    main()  # pragma: no cover
