#!/usr/bin/env python
"""
Time training iterations and inference of a model with context blocks against the stock model.

The stock model is the same config with detectron2's own backbone (and keypoint head) builder.
Both models start from the same weights (the blocks start as the identity), run on the same
synthetic batch (random images with random boxes, masks and keypoints), and are measured in
alternating order (A B, B A, ...) so that drifts of a shared machine hit both alike. Printed:
median milliseconds per training iteration (forward, backward, optimizer step) and per inference
batch, the ratio of the two models, and peak memory (GPU: peak allocated; CPU: growth of the
process's peak resident memory over one step, each model in a fresh process).

The timing never depends on training staying finite: the optimizer runs with learning rate 0
(same work per step, weights unchanged, so a model from scratch cannot diverge), and a step
whose loss is not finite skips the update (counted and printed). ``--amp bf16|fp16`` runs the
forward passes under ``torch.autocast`` (fp16 training with a gradient scaler), as detectron2's
``SOLVER.AMP`` does. On CUDA, fp32 convolutions and matmuls run in full precision unless
``--tf32`` (cuDNN would otherwise run the convolutions in TF32, its default).

Example:

    python tools/benchmark_model.py --config-file configs/mask_rcnn_nl_R50.yaml \\
        --input-size 512 512 --batch-size 2 --iters 10 --amp bf16 --opts MODEL.WEIGHTS ""

``--json FILE`` also appends the figures to FILE as one JSON object (a line), for
scripts/gpu_benchmarks.py's summary.
"""

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's nl_detectron
from nl_detectron.analysis import (
    add_opts_argument,
    load_stock_weights,
    load_tool_config,
    stock_config,
)
from nl_detectron.layers.attention_policy import cuda_fp32_precision

logger = logging.getLogger("nl_detectron.benchmark_model")

MODELS = ("nl", "stock")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def setup(args):
    cfg = load_tool_config(args.config_file, args.opts)
    # the heads always process the full cfg.TEST.DETECTIONS_PER_IMAGE, whatever the scores
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.freeze()
    return cfg, stock_config(cfg, source=args.config_file)


def synthetic_batch(cfg, batch_size, size, seed=0):
    """``batch_size`` training inputs of ``size`` (H, W): random images, 4 objects each."""
    rng = np.random.default_rng(seed)
    height, width = size
    batch = []
    for _ in range(batch_size):
        image = torch.from_numpy(rng.integers(0, 256, (3, height, width)).astype("float32"))
        x0 = rng.uniform(0, 0.6 * width, 4)
        y0 = rng.uniform(0, 0.6 * height, 4)
        x1 = x0 + rng.uniform(0.15, 0.4, 4) * width
        y1 = y0 + rng.uniform(0.15, 0.4, 4) * height
        boxes = np.stack([x0, y0, x1, y1], axis=1).astype("float32")
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.from_numpy(boxes))
        instances.gt_classes = torch.from_numpy(rng.integers(0, cfg.MODEL.ROI_HEADS.NUM_CLASSES, 4))
        masks = np.zeros((4, height, width), dtype=bool)
        for m, (a, b, c, d) in zip(masks, boxes.astype(int)):
            m[b:d, a:c] = True
        instances.gt_masks = BitMasks(torch.from_numpy(masks))
        if cfg.MODEL.KEYPOINT_ON:
            k = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
            u = rng.uniform(size=(4, k, 2))
            xs = boxes[:, None, 0] + u[..., 0] * (boxes[:, None, 2] - boxes[:, None, 0])
            ys = boxes[:, None, 1] + u[..., 1] * (boxes[:, None, 3] - boxes[:, None, 1])
            points = np.stack([xs, ys, np.full_like(xs, 2)], axis=-1).astype("float32")
            instances.gt_keypoints = Keypoints(torch.from_numpy(points))
        batch.append({"image": image, "height": height, "width": width, "instances": instances})
    return batch


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model with its optimizer; times single training and inference steps.

    The optimizer's learning rate is 0, so every step does the full work and leaves the weights
    as they are; ``amp`` (a dtype or None) runs the forward passes under autocast.
    """

    def __init__(self, model, cfg, batch, amp=None):
        self.model = model
        self.device = next(model.parameters()).device
        self.optimizer = build_optimizer(cfg, model)
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0
        self.amp = amp
        enabled = amp == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=enabled)
        self.skipped_steps = 0
        self.batch = batch
        self.images = [{k: v for k, v in x.items() if k != "instances"} for x in batch]

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def train_step(self):
        self.model.train()
        synchronize(self.device)
        start = time.perf_counter()
        with EventStorage(), self.autocast():
            losses = self.model(self.batch)
        loss = sum(losses.values())
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        if torch.isfinite(loss):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:  # the same work was done; only the update, which would spread NaNs, is skipped
            self.skipped_steps += 1
        synchronize(self.device)
        return time.perf_counter() - start

    def inference_step(self):
        self.model.eval()
        synchronize(self.device)
        start = time.perf_counter()
        with torch.no_grad(), self.autocast():
            self.model(self.images)
        synchronize(self.device)
        return time.perf_counter() - start


def build_runners(cfg, stock_cfg, args):
    torch.manual_seed(0)
    stock = build_model(stock_cfg)
    model = build_model(cfg)
    load_stock_weights(model, stock, source=args.config_file)
    batch = synthetic_batch(cfg, args.batch_size, args.input_size)
    amp = AMP_DTYPES.get(args.amp)
    return {"nl": Runner(model, cfg, batch, amp), "stock": Runner(stock, stock_cfg, batch, amp)}


def interleaved(runners, step, warmup, iters):
    """name -> list of seconds; rounds alternate the order of the models."""
    times = {name: [] for name in runners}
    for i in range(warmup + iters):
        order = MODELS if i % 2 == 0 else MODELS[::-1]
        for name in order:
            seconds = getattr(runners[name], step)()
            if i >= warmup:
                times[name].append(seconds)
    return times


def gpu_peaks(runner, device):
    """Peak allocated bytes of one inference step and one training step."""
    peaks = {}
    for step in ("inference_step", "train_step"):
        torch.cuda.reset_peak_memory_stats(device)
        getattr(runner, step)()
        peaks[step] = torch.cuda.max_memory_allocated(device)
    return peaks


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_growth(step):
    """Bytes by which the resident set size peaks above its level before ``step()`` (Linux)."""
    gc.collect()
    try:  # hand freed heap memory back to the OS, or the step reuses it without raising the RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    # writing 5 resets the peak (VmHWM) to the current RSS, so earlier peaks (model building,
    # a previous step) do not hide this step's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) * 1024


def cpu_peak_child(args):
    """In a fresh process with only the measured model: RSS growth of an inference, a train step."""
    cfg, stock_cfg = setup(args)
    model_cfg = cfg if args.memory_child == "nl" else stock_cfg
    batch = synthetic_batch(cfg, args.batch_size, args.input_size)
    runner = Runner(build_model(model_cfg), model_cfg, batch, AMP_DTYPES.get(args.amp))
    peaks = {step: rss_growth(getattr(runner, step)) for step in ("inference_step", "train_step")}
    print("MEMORY " + json.dumps(peaks))


def cpu_peaks(name, argv):
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child", name, *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("MEMORY ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"memory measurement of {name} failed (it needs Linux's /proc; --no-memory skips "
            f"it):\n{result.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len("MEMORY ") :])


def benchmark(args, argv):
    """Returns {name: {"train": [s], "inference": [s], "memory": {step: bytes}}}."""
    cfg, stock_cfg = setup(args)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    runners = build_runners(cfg, stock_cfg, args)
    device = runners["nl"].device
    results = {name: {} for name in MODELS}
    # inference first: afterwards training moves the weights of the two models apart
    for task, step in (("inference", "inference_step"), ("train", "train_step")):
        if task in args.tasks:
            for name, times in interleaved(runners, step, args.warmup, args.iters).items():
                results[name][task] = times
    if not args.no_memory:
        for name in MODELS:
            if device.type == "cuda":
                results[name]["memory"] = gpu_peaks(runners[name], device)
            else:
                results[name]["memory"] = cpu_peaks(name, argv)
    for name in MODELS:
        results[name]["skipped_steps"] = runners[name].skipped_steps
    report(results, args, device)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(json_row(results, args, device)) + "\n")
    return results


def json_row(results, args, device):
    """The figures of :func:`report` as one JSON-able dict (median seconds, peak MiB)."""
    row = {
        "table": "model",
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "config": os.path.splitext(os.path.basename(args.config_file))[0],
        "amp": args.amp or "fp32",
        "tf32": args.tf32,
        "input_size": list(args.input_size),
        "batch_size": args.batch_size,
        "iters": args.iters,
    }
    for name in MODELS:
        for task in ("train", "inference"):
            if task in results[name]:
                row[f"{task}_s_{name}"] = statistics.median(results[name][task])
        for step, peak in results[name].get("memory", {}).items():
            row[f"{step.replace('_step', '')}_peak_mib_{name}"] = peak / 2**20
        row[f"skipped_steps_{name}"] = results[name]["skipped_steps"]
    return row


def report(results, args, device):
    def ms(name, task):
        return statistics.median(results[name][task]) * 1e3

    def mib(name, step):
        return results[name]["memory"][step] / 2**20

    headers, rows = ["model"], [["with blocks"], ["stock"], ["ratio"]]
    for task in ("train", "inference"):
        if task in args.tasks:
            headers.append(f"{task} ms/iter (median)")
            nl, stock = ms("nl", task), ms("stock", task)
            rows[0].append(f"{nl:.1f}")
            rows[1].append(f"{stock:.1f}")
            rows[2].append(f"{nl / stock:.3f}x")
    if not args.no_memory:
        kind = "peak allocated" if device.type == "cuda" else "peak RSS growth"
        for step, label in (("train_step", "train"), ("inference_step", "inference")):
            headers.append(f"{label} {kind} MiB")
            nl, stock = mib("nl", step), mib("stock", step)
            rows[0].append(f"{nl:.0f}")
            rows[1].append(f"{stock:.0f}")
            rows[2].append(f"{nl / stock:.3f}x" if stock > 0 else "-")
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU, {torch.get_num_threads()} threads")
    )
    precision = f"{args.amp} autocast" if args.amp else "fp32"
    if device.type == "cuda":
        precision += ", TF32 allowed" if args.tf32 else ", TF32 off"
    skipped = {name: results[name]["skipped_steps"] for name in MODELS}
    logger.info(
        f"{args.config_file} vs. its stock model; batch {args.batch_size} x "
        f"{args.input_size[0]}x{args.input_size[1]}, {args.iters} iterations after "
        f"{args.warmup} warm-up, {precision}, {where}; updates skipped on a non-finite loss: "
        f"{skipped}:\n" + tabulate(rows, headers=headers, tablefmt="pipe")
    )


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--tasks", nargs="+", choices=["train", "inference"], default=["train", "inference"]
    )
    parser.add_argument("--input-size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per model first")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument(
        "--amp",
        choices=sorted(AMP_DTYPES),
        default=None,
        help="run the forward passes under torch.autocast with this dtype (default: fp32)",
    )
    parser.add_argument(
        "--tf32", action="store_true", help="CUDA: fp32 convolutions and matmuls in TF32"
    )
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="also append the figures to FILE (JSON)"
    )
    parser.add_argument("--memory-child", choices=MODELS, help=argparse.SUPPRESS)
    add_opts_argument(parser)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = argument_parser().parse_args(argv)
    for name in ("batch_size", "iters"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.warmup < 0 or min(args.input_size) < 32:
        raise ValueError(
            f"--warmup={args.warmup} must be >= 0 and --input-size {args.input_size} >= 32 pixels"
        )
    setup_logger(name="nl_detectron")
    if args.memory_child:
        torch.set_num_threads(args.threads or torch.get_num_threads())
        return cpu_peak_child(args)
    setup_logger()
    with cuda_fp32_precision(args.tf32):
        return benchmark(args, argv)


if __name__ == "__main__":
    main()
