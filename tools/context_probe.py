#!/usr/bin/env python
"""
A minutes-long probe of an ``nl_context`` rung: a small CNN from scratch classifies each target's
category at the stride-16 cell of its box centre, with or without a context block, so that a
question about the benchmark can be answered before hours of detection training
(docs/context_benchmark.md).

The CNN: four 3x3 convolutions of stride 2 and one of stride 1 (32, 64, 96, 128, 128 channels,
each followed by a norm and ReLU; receptive field 63 px), then the ``--model``'s block at the
stride-16 map, another 3x3 convolution (``--post``; receptive field 95 px) and a 1x1 classifier
of four classes (the two target categories, the two cue categories). The loss is the target
category at the target's cell, plus, with ``--cue-loss``, the partner's cue at the partner's cell
(the detector's partner annotations). ``--norm`` is "gn" (GroupNorm: statistics over the whole
image, a global path of its own) or "ln" (LayerNorm over the channels at each position: none).
Training images are drawn on the fly; the val accuracy is measured on 512 fixed bind or pair
images and printed every ``--eval-period`` steps with the block's health. AdamW, batch 32.

Examples:

    # does GroupNorm alone let a local CNN read the distant cue? (docs: yes; LayerNorm: no)
    python tools/context_probe.py --rung pair --model local --norm gn
    python tools/context_probe.py --rung pair --model local --norm ln
    python tools/context_probe.py --rung bind --model nl --norm ln --cue-loss
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nl_detectron.data import context  # noqa: E402
from nl_detectron.layers import ContextBlock, DisentangledNonLocalBlock, NonLocalBlock  # noqa: E402

STRIDE = 16
MODELS = ("local", "mean", "gc", "nl", "nl_gaussian", "dnl")
VAL_SEED = 12345


def cell_index(point, size: int) -> int:
    """The flat index of the stride-16 cell holding ``point`` (x, y) in a ``size`` px image."""
    cols = size // STRIDE
    x, y = (min(int(v // STRIDE), cols - 1) for v in point)
    return y * cols + x


def batch(spec: context.ContextSpec, indices, rng: np.random.Generator):
    """Images [n, 3, S, S] (scaled to about [-2, 2]), and for one random pair of each image the
    target's cell, its category (0, 1), the partner's cell and its cue (0, 1)."""
    images, target_cells, labels, partner_cells, cues = [], [], [], [], []
    for index in indices:
        image, pairs = context.draw_image(spec, index)
        pair = pairs[int(rng.integers(len(pairs)))]
        images.append(image)
        target_cells.append(cell_index(_centre(pair["target"]), spec.image_size))
        partner_cells.append(cell_index(_centre(pair["partner"]), spec.image_size))
        labels.append(context.CUES.index(pair["cue"]))
        cues.append(context.CUES.index(pair["cue"]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 64.0 - 2.0
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return x, as_long(target_cells), as_long(labels), as_long(partner_cells), as_long(cues)


def _centre(polygon: np.ndarray) -> np.ndarray:
    return (polygon.min(0) + polygon.max(0)) / 2


class PositionLayerNorm(nn.Module):
    """LayerNorm over the channels at each position of [B, C, H, W]: nothing across positions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def conv_norm_relu(cin: int, cout: int, stride: int, norm: str) -> nn.Module:
    layer = nn.GroupNorm(16, cout) if norm == "gn" else PositionLayerNorm(cout)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), layer, nn.ReLU())


def context_block(model: str, channels: int) -> nn.Module:
    if model == "local":
        return nn.Identity()
    if model in ("mean", "gc"):
        pooling = "avg" if model == "mean" else "attention"
        return ContextBlock(channels, ratio=0.25, pooling=pooling)
    if model == "dnl":
        return DisentangledNonLocalBlock(channels, norm="GN")
    instantiation = "gaussian" if model == "nl_gaussian" else "embedded_gaussian"
    return NonLocalBlock(channels, instantiation=instantiation, norm="GN")


class ProbeNet(nn.Module):
    """Stride-16 CNN, block, optional conv, 1x1 classifier of 4 classes at chosen cells."""

    def __init__(self, model: str, norm: str, post: bool):
        super().__init__()
        widths = (3, 32, 64, 96, 128)
        layers = [conv_norm_relu(a, b, 2, norm) for a, b in zip(widths, widths[1:])]
        self.body = nn.Sequential(*layers, conv_norm_relu(128, 128, 1, norm))
        self.block = context_block(model, 128)
        self.post = conv_norm_relu(128, 128, 1, norm) if post else nn.Identity()
        self.head = nn.Conv2d(128, 4, 1)

    def forward(self, x, target_cells, partner_cells):
        """Target logits [n, 2] at ``target_cells``, cue logits [n, 2] at ``partner_cells``."""
        logits = self.head(self.post(self.block(self.body(x)))).flatten(2)  # [n, 4, cells]
        rows = torch.arange(x.shape[0])
        return logits[rows, :2, target_cells], logits[rows, 2:, partner_cells]


def block_health(net: ProbeNet, x: torch.Tensor) -> str:
    block = net.block
    if not hasattr(block, "record_health"):
        return ""
    block.record_health = True
    try:
        with torch.no_grad():
            net.train()
            block(net.body(x))
    finally:
        block.record_health = False
    health = block.last_health
    text = f" gate {health.gate:.3f} share {100 * health.share:.1f}%"
    if health.entropy is not None:
        text += f" entropy {health.entropy:.3f} diversity {health.diversity:.3f}"
    return text


def run(args) -> float:
    """Trains the probe and returns the final val accuracy of the target category."""
    if args.steps < 1 or args.batch < 1 or args.eval_period < 1:
        raise ValueError(
            f"--steps {args.steps}, --batch {args.batch} and --eval-period {args.eval_period} "
            "must each be >= 1"
        )
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train = context.ContextSpec(args.rung, 10**7, seed=args.seed)
    val = context.ContextSpec(args.rung, args.val_images, seed=VAL_SEED)
    rng = np.random.default_rng(args.seed)
    val_x, val_cells, val_labels, val_pcells, _ = batch(val, range(val.num_images), rng)
    net = ProbeNet(args.model, args.norm, args.post)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    start, accuracy = time.time(), math.nan
    for step in range(1, args.steps + 1):
        indices = range((step - 1) * args.batch, step * args.batch)
        x, cells, labels, pcells, cues = batch(train, indices, rng)
        target_logits, cue_logits = net(x, cells, pcells)
        loss = F.cross_entropy(target_logits, labels)
        if args.cue_loss:
            loss = loss + F.cross_entropy(cue_logits, cues)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_period == 0 or step == args.steps:
            net.eval()
            with torch.no_grad():
                predicted = net(val_x, val_cells, val_pcells)[0].argmax(1)
            accuracy = float((predicted == val_labels).float().mean())
            net.train()
            print(
                f"{args.model} {args.norm} {args.rung} step {step}: loss {loss.item():.3f} "
                f"val target accuracy {100 * accuracy:.1f}%"
                f"{block_health(net, val_x[:8])} ({time.time() - start:.0f} s)",
                flush=True,
            )
    return accuracy


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rung", choices=sorted(context.RUNGS), default="pair")
    parser.add_argument("--model", choices=MODELS, default="local")
    parser.add_argument("--norm", choices=("gn", "ln"), default="ln")
    parser.add_argument(
        "--post",
        type=int,
        choices=(0, 1),
        default=1,
        help="a 3x3 conv after the block (1, receptive field 95 px) or not (0, 63 px)",
    )
    parser.add_argument("--cue-loss", action="store_true", help="also classify the partner's cue")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-period", type=int, default=250)
    parser.add_argument("--val-images", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main(argv=None):
    return run(argument_parser().parse_args(argv))


if __name__ == "__main__":
    main()  # pragma: no cover
