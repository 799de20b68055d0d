#!/usr/bin/env python
"""
The long-range A/B experiment on one rung of ``nl_context`` (docs/context_benchmark.md): the stock
model and the same model with context blocks, trained and evaluated over several seeds, then one
table of mean and spread per model, the reference levels of the true boxes and the block-health
curves of every run in one figure.

Rungs (``--rung``): ``pair`` (one pair per image: the only partner's cue decides a target's
category) and ``bind`` (two pairs of different hues and opposite cues: the partner of the target's
hue decides). Every run is ``tools/train_net.py`` on one config (written to
``<output>/<model>/seed<S>/``) that differs from the others only in ``SEED`` and in the blocks:
``stock`` is detectron2's own backbone (``nl_detectron.analysis.stock_config``); ``mean`` is the
global-mean control (a GC block with average pooling: every position gets a transform of the
image's mean feature, no attention); ``gc``, ``nl``, ``dnl``, ``snl`` set ``MODEL.NONLOCAL.TYPE``.

Per run: COCO AP of the target categories and of the cue categories (FastCOCOEvaluator); the
category accuracy on the true boxes (``nl_detectron.analysis.context_readout``); for models with
blocks, the attention share of each target's partner and distractor
(``nl_detectron.analysis.partner_attention``) and the block's last health record. Finished runs are
reused, so an interrupted experiment continues where it stopped.

Examples:

    # the pair rung: stock, the global-mean control and NL, seeds 0 1 2, two trainings at once
    python tools/context_ab.py --rung pair --models stock mean nl --output output/context_ab/pair

    # the binding rung, every block type, on a GPU
    python tools/context_ab.py --rung bind --models stock mean gc nl dnl --output output/ab_gpu \\
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
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nl_detectron.analysis import (  # noqa: E402
    add_opts_argument,
    find_nonlocal_blocks,
    load_tool_config,
    stock_config,
)
from nl_detectron.analysis.context_readout import reference_ap, true_box_accuracy  # noqa: E402
from nl_detectron.analysis.partner_attention import partner_attention  # noqa: E402
from nl_detectron.data import context  # noqa: E402

logger = logging.getLogger("nl_detectron.context_ab")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
PLOT_HEALTH = os.path.join(REPO, "tools", "plot_block_health.py")
CONFIGS = {
    rung: os.path.join(
        REPO, "configs", "quick_schedules", f"faster_rcnn_nl_R18_C4_context_{rung}_quick.yaml"
    )
    for rung in context.RUNGS
}
# model -> MODEL.NONLOCAL settings beside the config's (None: the stock backbone)
MODEL_OPTS = {
    "stock": None,
    "mean": ["TYPE", "gc", "GC_POOLING", "avg", "GC_RATIO", "0.25"],
    "gc": ["TYPE", "gc", "GC_RATIO", "0.25"],
    "nl": ["TYPE", "nl", "INSTANTIATION", "embedded_gaussian"],
    "nl_gaussian": ["TYPE", "nl", "INSTANTIATION", "gaussian"],
    "dnl": ["TYPE", "dnl"],
    "snl": ["TYPE", "snl"],
}
MODELS = tuple(MODEL_OPTS)


def run_config(base_cfg, model: str, seed: int, scale: float, output_dir: str):
    """The config of one run: ``base_cfg`` with ``model``'s blocks, ``seed`` and the schedule
    scaled by ``scale`` (iterations, LR steps and warm-up)."""
    opts = MODEL_OPTS[model]
    cfg = stock_config(base_cfg, source="the A/B config") if opts is None else base_cfg
    cfg = cfg.clone()
    cfg.defrost()
    if opts is not None:
        pairs = [(f"MODEL.NONLOCAL.{k}", v) for k, v in zip(opts[::2], opts[1::2])]
        cfg.merge_from_list([item for pair in pairs for item in pair])
    solver = cfg.SOLVER
    solver.MAX_ITER = max(1, round(solver.MAX_ITER * scale))
    # LR steps strictly inside the schedule and distinct (detectron2's scheduler refuses others)
    steps = sorted({max(1, round(s * scale)) for s in solver.STEPS})
    solver.STEPS = tuple(s for s in steps if s < solver.MAX_ITER)
    solver.WARMUP_ITERS = min(round(solver.WARMUP_ITERS * scale), solver.MAX_ITER)
    cfg.SEED = seed
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    return cfg


def read_metrics(output_dir: str) -> List[dict]:
    """The entries of ``output_dir/metrics.json`` (detectron2's JSON lines); [] if none."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_metrics(output_dir: str) -> Dict[str, float]:
    """The last evaluation train_net logged, with the target and cue AP (means of the per
    category AP); {} if none."""
    found = {}
    for entry in read_metrics(output_dir):
        if "bbox/AP" in entry:
            found = dict(entry)
    if found:
        for kind, names in (("target", context.TARGET_CATEGORIES), ("cue", context.CUE_CATEGORIES)):
            # NaN where a category got no AP (e.g. no detection at all)
            per_category = [found.get(f"bbox/AP-{n}", math.nan) for n in names]
            found[f"{kind}/AP"] = float(np.mean(per_category))
    return found


def last_health(output_dir: str) -> Dict[str, float]:
    """The last value of every ``nonlocal/<block>/<statistic>`` the run recorded."""
    health = {}
    for entry in read_metrics(output_dir):
        health.update({k: v for k, v in entry.items() if k.startswith("nonlocal/")})
    return health


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


def readout(cfg, dataset: str) -> dict:
    """True-box accuracies and, with blocks, the partner-attention statistic of the first
    backbone block, for the trained model of ``cfg`` on ``dataset``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    cfg.freeze()
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    transform = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    records = DatasetCatalog.get(dataset)
    result = {"accuracy": true_box_accuracy(model, records, transform, cfg.INPUT.FORMAT)}
    blocks = [n for n in find_nonlocal_blocks(model) if n.startswith("backbone.")]
    if blocks:
        stat = partner_attention(model, blocks[0], records, transform, cfg.INPUT.FORMAT)
        result["attention"] = stat.as_dict()
    return result


def mean_spread(values: List[float], digits: int = 1) -> str:
    """``mean ± sample standard deviation`` (just the value for one run)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


# (column, function of a run) of the summary table
COLUMNS = (
    ("target acc. %", lambda r: 100 * r["accuracy"]["target_accuracy"]),
    ("target AP", lambda r: r["metrics"]["target/AP"]),
    ("cue acc. %", lambda r: 100 * r["accuracy"]["cue_accuracy"]),
    ("cue AP", lambda r: r["metrics"]["cue/AP"]),
)


def _share(run: dict, key: str) -> float:
    return 100 * run["attention"].get(key, math.nan) if "attention" in run else math.nan


def _gate(run: dict) -> float:
    gates = [v for k, v in run["health"].items() if k.endswith("/gate")]
    return gates[0] if gates else math.nan


def summary_table(results: Dict[str, List[dict]]) -> str:
    """A Markdown table: one row per model, every column mean ± std over its seeds."""
    header = ["model", "seeds"] + [name for name, _ in COLUMNS]
    header += [
        "self share %",
        "partner % of the rest (uniform)",
        "distractor % of the rest (uniform)",
        "gate",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, runs in results.items():
        row = [model, str(len(runs))]
        row += [mean_spread([get(r) for r in runs]) for _, get in COLUMNS]
        row.append(mean_spread([_share(r, "self_share") for r in runs]))
        for kind in ("partner", "distractor"):
            share = mean_spread([_share(r, f"{kind}_outside") for r in runs])
            uniform = [_share(r, f"{kind}_outside_uniform") for r in runs if "attention" in r]
            finite = [u for u in uniform if not math.isnan(u)]
            row.append(f"{share} ({np.mean(finite):.1f})" if finite else "—")
        row.append(mean_spread([_gate(r) for r in runs], digits=3))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def decide(results: Dict[str, List[dict]], metric: str = "target acc. %") -> List[str]:
    """For each model against ``stock``: the difference of the means of ``metric`` and whether it
    exceeds three times the larger of the two seed standard deviations."""
    get = dict(COLUMNS)[metric]
    if "stock" not in results:
        return []
    base = [get(r) for r in results["stock"]]
    lines = []
    for model, runs in results.items():
        if model == "stock":
            continue
        values = [get(r) for r in runs]
        if len(values) < 2 or len(base) < 2:
            lines.append(f"{model} vs stock: needs 2 or more seeds of each to decide")
            continue
        diff = float(np.mean(values) - np.mean(base))
        spread = max(np.std(values, ddof=1), np.std(base, ddof=1))
        verdict = "decided" if abs(diff) > 3 * spread else "not decided"
        lines.append(
            f"{model} vs stock: {metric} {diff:+.1f} (3 x larger seed std {3 * spread:.1f}): "
            f"{verdict}"
        )
    return lines


def reference_lines(dataset: str) -> List[str]:
    """The target AP of the true boxes named by the rule and by a coin (3 draws)."""
    json_file = MetadataCatalog.get(dataset).json_file
    rule = reference_ap(json_file, "rule")
    chance = [reference_ap(json_file, "chance", seed=s) for s in range(3)]
    return [
        f"true boxes named by the rule: target AP {rule['AP']:.1f}, AP50 {rule['AP50']:.1f}",
        "true boxes named by a coin (3 draws): target AP "
        + mean_spread([c["AP"] for c in chance])
        + ", AP50 "
        + mean_spread([c["AP50"] for c in chance])
        + "; target accuracy 50%",
    ]


def plot_health(results: Dict[str, List[dict]], output: str) -> str:
    """Draws the block-health curves of every run with blocks into ``output/block_health.png``."""
    runs = [r["output_dir"] for rs in results.values() for r in rs if r["health"]]
    if not runs:
        return ""
    labels = [os.path.relpath(r, output) for r in runs]
    path = os.path.join(output, "block_health.png")
    subprocess.run(
        [sys.executable, PLOT_HEALTH, *runs, "--labels", *labels, "--output", path], check=True
    )
    return path


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
    config_file = args.config_file or CONFIGS[args.rung]
    base = load_tool_config(config_file, args.opts)
    base.freeze()
    dataset = base.DATASETS.TEST[0]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    configs = {
        (seed, model): run_config(
            base, model, seed, args.scale, os.path.join(args.output, model, f"seed{seed}")
        )
        # seed by seed, so that an interrupted experiment leaves whole A/B sets
        for seed in args.seeds
        for model in args.models
    }
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {key: pool.submit(train, cfg, threads) for key, cfg in configs.items()}
        metrics = {key: future.result() for key, future in futures.items()}

    results: Dict[str, List[dict]] = {model: [] for model in args.models}
    for (seed, model), cfg in configs.items():
        run = {"seed": seed, "output_dir": cfg.OUTPUT_DIR, "metrics": metrics[(seed, model)]}
        run.update(readout(cfg, dataset))
        run["health"] = last_health(cfg.OUTPUT_DIR)
        results[model].append(run)
        logger.info(
            f"{model} seed {seed}: target accuracy {run['accuracy']['target_accuracy']:.3f}, "
            f"target AP {run['metrics']['target/AP']:.1f}, cue accuracy "
            f"{run['accuracy']['cue_accuracy']:.3f}"
            + (
                f", partner share {run['attention']['partner_share']:.3f} (uniform "
                f"{run['attention']['partner_uniform']:.3f})"
                if "attention" in run
                else ""
            )
        )
    report = [summary_table(results), ""]
    report += [f"- {line}" for line in reference_lines(dataset) + decide(results)]
    plot = plot_health(results, args.output)
    if plot:
        report += ["", f"Block health: {os.path.basename(plot)}"]
    text = "\n".join(report)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(
            {"config": config_file, "scale": args.scale, "opts": args.opts, "runs": results},
            f,
            indent=1,
        )
    with open(os.path.join(args.output, "table.md"), "w") as f:
        f.write(text + "\n")
    logger.info(f"results on {dataset} ({len(args.seeds)} seeds):\n{text}")
    return results


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rung", choices=sorted(context.RUNGS), default="pair")
    parser.add_argument(
        "--config-file", default=None, metavar="FILE", help="default: the rung's quick config"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["stock", "mean", "nl"],
        choices=MODELS,
        help="models to compare (default: stock mean nl)",
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
    parser.add_argument(
        "--output", default="output/context_ab", help="folder for runs, table and plot"
    )
    add_opts_argument(parser)
    return parser


def main(argv=None):
    args = argument_parser().parse_args(argv)
    setup_logger(name="nl_detectron")
    os.makedirs(args.output, exist_ok=True)
    return run_experiment(args)


if __name__ == "__main__":
    main()  # pragma: no cover
