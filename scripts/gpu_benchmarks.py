#!/usr/bin/env python
"""The Python half of scripts/gpu_benchmarks.sh: its preflight, and its summary of the goal cells.

    python scripts/gpu_benchmarks.py preflight PART...

Imports what the parts need, one package at a time, and prints one line per package that is
missing, naming what to carry (the shell script's header says how to get each wheel); then checks
that torch sees a CUDA device and, for the Triton parts, that Triton runs on it. Exit status 3
when anything is missing, so that no device time goes to a run that would fail at its first
import.

    python scripts/gpu_benchmarks.py summary OUT_DIR [ROWS.jsonl | OTHER/summary.json ...]

Adds the rows that tools/benchmark_blocks.py and tools/benchmark_model.py wrote with ``--json``
(or those of other summaries) to the rows of OUT_DIR/summary.json (a row measured again replaces
the earlier one), and writes
OUT_DIR/summary.json and OUT_DIR/summary.md: every goal cell of issue #9 (variant x stage x dtype
x budget, or model x precision) with its ratio, peak memory, path and target, unmeasured ones
included, and for the blocks forced onto each path the fastest path within the budget beside the
one the policy takes. The summary needs only the standard library.
"""

import argparse
import importlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "see the header of scripts/gpu_benchmarks.sh"

# Import name -> what to carry when it is missing.
CARRY = {
    "torch": "a CUDA build of torch for this Python",
    "numpy": "a numpy wheel for this Python",
    "yaml": "a PyYAML wheel for this Python (manylinux)",
    "PIL": "a Pillow wheel for this Python (manylinux)",
    "cv2": "an opencv-python-headless wheel for this Python (manylinux)",
    "tqdm": "the tqdm wheel",
    "termcolor": "the termcolor wheel",
    "tabulate": "the tabulate wheel",
    "cloudpickle": "the cloudpickle wheel",
    "portalocker": "the portalocker wheel",
    "yacs": "the yacs wheel",
    "iopath": "the iopath==0.1.10 wheel, built with pip wheel --no-deps",
    "fvcore": "the fvcore==0.1.5.post20221221 wheel, built with pip wheel --no-deps",
    "antlr4": "the antlr4-python3-runtime==4.9.3 wheel, built with pip wheel --no-deps",
    "omegaconf": "the omegaconf==2.3.0 wheel",
    "pycocotools": "a pycocotools wheel for this Python (manylinux)",
    "torchvision": "the torchvision build of this torch release",
    "detectron2": "the sal-detectron2 wheel",
    "pytest": "the wheels of pytest, pluggy, iniconfig, packaging and pygments",
    "triton": "the triton release this torch build names",
}
# What ``import nl_detectron`` imports (it registers its detectron2 parts), dependencies before
# what needs them: the first import to fail names the package that is absent.
PACKAGE = tuple(name for name in CARRY if name not in ("pytest", "triton"))
# Every part of scripts/gpu_benchmarks.sh and what it imports: tools/benchmark_blocks.py and
# tools/benchmark_model.py import nl_detectron; the test parts pytest; the Triton parts triton.
PART_NEEDS = {
    "goals-blocks": PACKAGE,
    "goals-models": PACKAGE,
    "paths": PACKAGE + ("pytest",),
    "triton-tests": PACKAGE + ("pytest", "triton"),
    "triton-tables": PACKAGE + ("triton",),
}
EXIT_MISSING = 3


def _import_problem(name):
    """None if ``name`` imports, else (the package that is missing or broken, a note)."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing = (e.name or name).split(".")[0]
        return missing, None if missing == name else f"needed by {name}"
    except Exception as e:  # there but broken: built for another Python, numpy or torch
        return name, f"it is there but fails: {type(e).__name__}: {e}"
    return None


def _missing_line(name, note):
    what = CARRY.get(name, f"a wheel of the distribution that provides {name!r}")
    return f"missing: {name} (carry {what}; {HEADER}{'; ' + note if note else ''})"


def preflight(parts):
    """The lines naming what ``parts`` need and do not find here (empty: all there)."""
    problems = {}
    for name in dict.fromkeys(n for part in parts for n in PART_NEEDS[part]):
        found = _import_problem(name)
        if found is not None and found[0] not in problems:
            problems[found[0]] = _missing_line(*found)
    if problems:
        return list(problems.values())
    sys.path.insert(0, ROOT)  # the checkout's nl_detectron, as the tools import it
    found = _import_problem("nl_detectron")
    if found is not None:
        return [_missing_line(*found)]
    import torch

    if not torch.cuda.is_available():
        built = f"torch {torch.__version__} built for CUDA {torch.version.cuda}"
        return [f"missing: a CUDA device visible to torch ({built})"]
    if any("triton" in part for part in parts):
        from nl_detectron.layers.triton_support import triton_needs, triton_runs_on

        if not triton_runs_on("cuda"):
            return [f"missing: Triton on CUDA (the Triton parts need {triton_needs()})"]
    return []


def run_preflight(parts):
    lines = preflight(parts)
    if lines:
        print("\n".join(lines), file=sys.stderr)
        return EXIT_MISSING
    import torch

    device = torch.cuda.get_device_name()
    found = [f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {device}"]
    for name in ("detectron2", "numpy", "triton", "pytest"):
        if name in sys.modules:
            found.append(f"{name} {getattr(sys.modules[name], '__version__', '?')}")
    print(f"preflight of {' '.join(parts)}: {', '.join(found)}")
    if "triton-tests" in parts and _import_problem("xdist") is not None:
        print(
            "note: pytest-xdist is not importable, so the Triton tests run in one process "
            f"(carry the pytest-xdist and execnet wheels; {HEADER})"
        )
    return 0


# The goal cells of issue #9 (whole blocks, forward + backward, batch 2; models at 800x1333,
# batch 2). Block ratios are the explicit block's time over the default path's (> 1: faster),
# as tools/benchmark_blocks.py prints them; model ratios the NL model's time over the stock one's.
VARIANTS = (
    "NL gaussian",
    "NL embedded_gaussian",
    "NL dot_product",
    "NL concatenation",
    "DNL",
    "SNL (order 2)",
    "GC",
)
DTYPES = ("fp32", "tf32", "bf16")
ONE_GIB_MB = 1024.0
# the variants whose default path must stay >= 2x the explicit block in bf16 at res3 (flash)
TWICE_AS_FAST = ("NL embedded_gaussian", "DNL")
# dtype -> (least ratio, its wording in the issue) at res3 under a 1 GiB budget
ONE_GIB_RATIOS = {
    "fp32": (1 / 1.3, "time <= 1.3x explicit"),
    "tf32": (1 / 2, "time <= 2x explicit"),
    "bf16": (1.0, ">= 1x"),
}
# (config, precision, task, most NL / stock time)
MODEL_GOALS = (
    ("mask_rcnn_nl_R50", "bf16", "train", 1.03),
    ("mask_rcnn_nl_R50", "fp32", "train", 1.07),
    ("mask_rcnn_nl5_R50", "bf16", "train", 1.2),
    ("mask_rcnn_nl5_R50", "fp32", "train", 2.9),
    ("mask_rcnn_nl_R50", "bf16", "inference", 1.05),
    ("mask_rcnn_nl_R50", "fp32", "inference", 1.05),
)
MODEL_SIZE, MODEL_BATCH = [800, 1333], 2


def goal_cells():
    """Every goal cell, without figures: dicts with what the cell measures and its target."""
    cells = []
    for stage in ("res4", "res3"):
        for dtype in DTYPES:
            for variant in VARIANTS:
                flash = stage == "res3" and dtype == "bf16" and variant in TWICE_AS_FAST
                least = 2.0 if flash else 0.95
                cells.append(_block_cell("default budget", variant, stage, dtype, None, least))
    for dtype, (least, wording) in ONE_GIB_RATIOS.items():
        for variant in VARIANTS:
            cell = _block_cell("1 GiB budget", variant, "res3", dtype, ONE_GIB_MB, least)
            cell["target"] = f"{wording}, peak <= 1 GiB"
            cells.append(cell)
    for config, precision, task, most in MODEL_GOALS:
        cells.append(
            {
                "goal": f"model {task} vs stock",
                "subject": config,
                "stage": "x".join(map(str, MODEL_SIZE)),
                "dtype": precision,
                "budget": "default",
                "task": task,
                "most_ratio": most,
                "target": f"<= {most:g}x",
            }
        )
    return cells


def _block_cell(goal, variant, stage, dtype, budget_mb, least):
    return {
        "goal": goal,
        "subject": variant,
        "stage": stage,
        "dtype": dtype,
        "budget": "default" if budget_mb is None else f"{budget_mb:g} MiB",
        "budget_mb": budget_mb,
        "least_ratio": least,
        "most_peak_mib": budget_mb,
        "target": f">= {least:g}x",
    }


def row_key(row):
    """Rows with one key measure the same thing; the later one is kept."""
    if row["table"] == "model":
        size = tuple(row["input_size"])
        return ("model", row["device"], row["config"], row["amp"], size, row["batch_size"])
    where = (row["device"], row["stage"], row["dtype"], row["variant"], row["budget_mb"])
    return (row["table"], *where, row.get("forced"))


def fill(cell, rows):
    """``cell`` with its figures from ``rows`` (CUDA rows only), ``met`` None if unmeasured."""
    cell = dict(cell, ratio=None, peak_mib=None, reference_peak_mib=None, path=None, met=None)
    if "task" in cell:
        for row in rows:
            if (
                row["table"] == "model"
                and row["device"] == "cuda"
                and (row["config"], row["amp"]) == (cell["subject"], cell["dtype"])
                and not row.get("tf32")  # the goals' fp32 is full precision
                and list(row["input_size"]) == MODEL_SIZE
                and row["batch_size"] == MODEL_BATCH
                and f"{cell['task']}_s_nl" in row
            ):
                task = cell["task"]
                cell["ratio"] = row[f"{task}_s_nl"] / row[f"{task}_s_stock"]
                cell["peak_mib"] = row.get(f"{task}_peak_mib_nl")
                cell["reference_peak_mib"] = row.get(f"{task}_peak_mib_stock")
                cell["met"] = cell["ratio"] <= cell["most_ratio"]
        return cell
    for row in rows:
        if (
            row["table"] == "block"
            and row["device"] == "cuda"
            and (row["variant"], row["stage"], row["dtype"])
            == (cell["subject"], cell["stage"], cell["dtype"])
            and row["budget_mb"] == cell["budget_mb"]
        ):
            cell["ratio"] = row["fwd_bwd_explicit_s"] / row["fwd_bwd_s"]
            cell["peak_mib"] = row["peak_mib_fwd_bwd"]
            cell["reference_peak_mib"] = row["peak_mib_explicit_fwd_bwd"]
            cell["path"] = row["path"]
            most = cell["most_peak_mib"]
            cell["met"] = cell["ratio"] >= cell["least_ratio"] and (
                most is None or cell["peak_mib"] <= most
            )
    return cell


def path_decisions(rows):
    """Per (device, stage, dtype, variant, budget) of the forced-path rows: every path's ratio
    and peak, the fastest path within the budget, and the policy's path beside it."""
    groups = {}
    for row in rows:
        if row["table"] == "paths":
            key = row_key(row)[1:-1]
            groups.setdefault(key, []).append(row)
    decisions = []
    for (device, stage, dtype, variant, _), group in groups.items():
        paths = {
            row["forced"]: {
                "path": row["path"],
                "ratio": row["fwd_bwd_explicit_s"] / row["fwd_bwd_s"],
                "peak_mib": row["peak_mib_fwd_bwd"],
            }
            for row in group
        }
        budget = group[0]["effective_budget_mb"]
        within = [p for p, f in paths.items() if f["peak_mib"] <= budget]
        fastest = max(within, key=lambda p: paths[p]["ratio"]) if within else None
        policy = group[0]["policy"]
        decisions.append(
            {
                "device": device,
                "stage": stage,
                "dtype": dtype,
                "variant": variant,
                "budget_mb": budget,
                "paths": paths,
                "fastest_within_budget": fastest,
                "policy": policy,
                "policy_is_fastest": None if fastest is None else policy.split(" (")[0] == fastest,
            }
        )
    return decisions


def _figure(value, form):
    return "unmeasured" if value is None else format(value, form)


def _met(met):
    return "-" if met is None else ("yes" if met else "**no**")


def markdown(cells, decisions, devices):
    measured = [c for c in cells if c["met"] is not None]
    met = sum(1 for c in measured if c["met"])
    where = ", ".join(devices) or "no CUDA device yet"
    lines = [
        "# GPU goal cells of issue #9",
        "",
        f"Measured on: {where}. {met} of {len(cells)} goal cells met, "
        f"{len(cells) - len(measured)} unmeasured. Ratio: for blocks the explicit block's time "
        "over the default path's (forward + backward, > 1 = faster); for models the NL model's "
        "time over the stock model's. Peak MiB: the block's extra memory (default path / "
        "explicit), or the model's peak allocated (NL / stock).",
        "",
        "| goal | variant / model | stage | dtype | budget | path | ratio | target | met "
        "| peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        peak = "-"
        if c["peak_mib"] is not None:
            peak = f"{c['peak_mib']:.0f} / {_figure(c['reference_peak_mib'], '.0f')}"
        ratio = "unmeasured" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        lines.append(
            f"| {c['goal']} | {c['subject']} | {c['stage']} | {c['dtype']} | {c['budget']} "
            f"| {c.get('path') or '-'} | {ratio} | {c['target']} | {_met(c['met'])} | {peak} |"
        )
    if decisions:
        lines += [
            "",
            "## Blocks forced onto each path (forward + backward)",
            "",
            "Ratio: the explicit block's time over the path's. Fastest: the fastest path whose "
            "peak stays within the budget; a `no` under policy's = fastest is a row of the "
            "policy's table to reconsider.",
            "",
            "| device | stage | dtype | variant | budget MiB | policy's path | fastest within "
            "budget | policy's = fastest | every path: ratio / peak MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for d in decisions:
            every = "; ".join(
                f"{f['path']} {f['ratio']:.2f}x / {f['peak_mib']:.0f}" for f in d["paths"].values()
            )
            lines.append(
                f"| {d['device']} | {d['stage']} | {d['dtype']} | {d['variant']} "
                f"| {d['budget_mb']:g} | {d['policy']} | {d['fastest_within_budget'] or '-'} "
                f"| {_met(d['policy_is_fastest'])} | {every} |"
            )
    return "\n".join(lines) + "\n"


def read_rows(paths):
    """The rows of each file: the tools' JSON lines, or a summary.json's "rows" (missing files:
    none, as when every step of a part failed)."""
    rows = []
    for path in paths:
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            text = f.read()
        if text.startswith("{\n"):  # a summary.json, written indented
            rows += json.loads(text)["rows"]
        else:
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def summarize(out_dir, row_files):
    """Write out_dir/summary.json and summary.md from the rows there and in ``row_files``."""
    previous = os.path.join(out_dir, "summary.json")
    merged = {row_key(row): row for row in read_rows([previous, *row_files])}
    rows = list(merged.values())
    cells = [fill(cell, rows) for cell in goal_cells()]
    decisions = path_decisions(rows)
    devices = sorted({r.get("device_name", "?") for r in rows if r["device"] == "cuda"})
    summary = {"devices": devices, "cells": cells, "paths": decisions, "rows": rows}
    with open(previous, "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(markdown(cells, decisions, devices))
    return summary


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("preflight", help="check that the parts can run here")
    check.add_argument("parts", nargs="+", choices=list(PART_NEEDS), metavar="PART")
    merge = commands.add_parser("summary", help="write OUT_DIR/summary.json and summary.md")
    merge.add_argument("out_dir", metavar="OUT_DIR")
    merge.add_argument("rows", nargs="*", metavar="ROWS", help="JSON-lines rows or summary.json")
    return parser


def main(argv=None):
    args = argument_parser().parse_args(argv)
    if args.command == "preflight":
        return run_preflight(args.parts)
    summary = summarize(args.out_dir, args.rows)
    measured = sum(1 for cell in summary["cells"] if cell["met"] is not None)
    print(f"summary: {measured} of {len(summary['cells'])} goal cells measured, in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
