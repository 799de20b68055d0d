#!/usr/bin/env python
"""Plot the context blocks' health over training, from the ``metrics.json`` of one or more runs.

The block-health monitor (``MODEL.NONLOCAL.MONITOR_PERIOD``, ``train.block_health_period`` for
LazyConfig) writes ``nonlocal/<block>/<statistic>`` scalars into detectron2's ``metrics.json``
(JSON lines). This tool draws one panel per statistic (gate, share, entropy, diversity; rows of
the figure, sharing the iteration axis) with one line per (run, block): a colour per run, a line
style per block, so several runs (the models and seeds of an A/B) share one figure.

Usage:
    python tools/plot_block_health.py output/nl_seed0 output/dnl_seed0 --output health.png
    python tools/plot_block_health.py a/metrics.json b/metrics.json --labels NL DNL --output h.png

A RUN is a training output folder or its metrics.json; runs are labelled by folder name unless
``--labels`` names them. Definitions of the statistics: docs/tools.md.
"""

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nl_detectron.engine.block_health import PREFIX
from nl_detectron.layers.health import STATISTICS

# (block, statistic) -> (iterations, values), sorted by iteration.
Series = Dict[Tuple[str, str], Tuple[List[int], List[float]]]

_YLABELS = {
    "gate": "gate (RMS of the\nzero-init scale)",
    "share": "share\n||z - x|| / ||x||",
    "entropy": "entropy\nH / log M",
    "diversity": "diversity\n(TV to mean row)",
}
_STYLES = ("-", "--", ":", "-.")


def metrics_file(run: str) -> str:
    """The metrics.json of RUN (a folder or the file itself); ValueError if there is none."""
    path = os.path.join(run, "metrics.json") if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise ValueError(
            f"{run}: no metrics.json (looked for {path}); give a training output folder "
            "(OUTPUT_DIR, train.output_dir) or its metrics.json"
        )
    return path


def read_health(path: str) -> Series:
    """The ``nonlocal/<block>/<statistic>`` scalars of a metrics.json, by (block, statistic).

    A later line for the same iteration (a resumed run) replaces the earlier one; lines that are
    not JSON (a run killed while writing) are skipped. ValueError if no such scalar is there.
    """
    points: Dict[Tuple[str, str], Dict[int, float]] = defaultdict(dict)
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or "iteration" not in record:
                continue
            for key, value in record.items():
                parts = key.split("/")
                if len(parts) == 3 and parts[0] == PREFIX and parts[2] in STATISTICS:
                    points[parts[1], parts[2]][int(record["iteration"])] = float(value)
    if not points:
        raise ValueError(
            f"{path} has no '{PREFIX}/' metrics: the block-health monitor was off "
            "(MODEL.NONLOCAL.MONITOR_PERIOD 0; train.block_health_period=0 for LazyConfig), the "
            "model has no context blocks, or the run stopped before its first record"
        )
    return {key: tuple(map(list, zip(*sorted(series.items())))) for key, series in points.items()}


def run_labels(runs: Sequence[str]) -> List[str]:
    """Each run's folder name; the whole path where two runs share a folder name."""
    folders = [os.path.abspath(r if os.path.isdir(r) else os.path.dirname(r) or ".") for r in runs]
    names = [os.path.basename(f) for f in folders]
    return [n if names.count(n) == 1 else r for n, r in zip(names, runs)]


def plot(series_by_run: Dict[str, Series], output: str) -> None:
    """One panel per statistic, one line per (run, block); saves a PNG to ``output``."""
    fig, axes = plt.subplots(len(STATISTICS), 1, sharex=True, figsize=(9, 2.4 * len(STATISTICS)))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    blocks = sorted({block for series in series_by_run.values() for block, _ in series})
    for ax, stat in zip(axes, STATISTICS):
        for r, (label, series) in enumerate(series_by_run.items()):
            for b, block in enumerate(blocks):
                if (block, stat) not in series:
                    continue
                iterations, values = series[block, stat]
                style = _STYLES[b % len(_STYLES)]
                color = colors[r % len(colors)]
                ax.plot(iterations, values, style, color=color, label=f"{label}: {block}")
        ax.set_ylabel(_YLABELS[stat])
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "no block has this statistic", ha="center", transform=ax.transAxes)
    axes[-1].set_xlabel("iteration")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 3), fontsize="small")
    rows = math.ceil(len(labels) / 3)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.03 * rows))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="output folder or metrics.json")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--labels", nargs="+", help="one name per RUN (default: folder names)")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f"--labels has {len(args.labels)} names for {len(args.runs)} runs")
    labels = args.labels or run_labels(args.runs)
    if len(set(labels)) < len(labels):
        parser.error(f"the runs need distinct labels, got {labels}")
    try:
        series = {label: read_health(metrics_file(r)) for label, r in zip(labels, args.runs)}
    except ValueError as e:
        sys.exit(f"plot_block_health.py: {e}")
    plot(series, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()  # pragma: no cover
