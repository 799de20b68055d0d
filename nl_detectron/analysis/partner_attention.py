"""Does a target's query attend to its partner? The attention statistic of the long-range benchmark.

On ``nl_context`` (see :mod:`nl_detectron.data.context`) a target's category is the cue of its
same-hued partner, far away. For a query at the centre of a target's box, a block's weights
w [M] over its key grid (they sum to 1) give

    partner share  = sum of w_j over the key cells P that hold a pixel of the partner
    uniform share  = |P| / M   (what attention spread evenly would put there)

and the same pair of numbers for the *distractor*, the other pair's partner (same kind of shape,
other hue; NaN in images of one pair). A block that reads the partner puts far more than the
uniform share on it and more on the partner than on the distractor; averaged over every target of
a dataset (distractor shares over the targets that have one).
"""

import math
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List

import numpy as np
import torch
from torch import nn

from detectron2.data import detection_utils
from detectron2.structures.masks import polygons_to_bitmask

from .attention import Grid, attention_maps, record_block_inputs

__all__ = ["PartnerAttention", "cells_covered", "partner_attention", "target_attention_shares"]


@dataclass
class PartnerAttention:
    """Means over ``num_queries`` target queries of one block.

    Attributes:
        partner_share: attention mass on the partner's key cells.
        partner_uniform: the uniform share of those cells, |P| / M.
        distractor_share, distractor_uniform: the same for the other pair's partner.
        self_share, self_uniform: the same for the cells of the query's own target.
        partner_outside, partner_outside_uniform: the partner's share of the mass that leaves
            the target, partner_share / (1 - self_share), and its uniform value |P| / (M - |T|):
            a query that mostly attends to its own object can still put all the rest on its
            partner.
        distractor_outside, distractor_outside_uniform: the same for the distractor.
    """

    block: str
    num_queries: int
    partner_share: float
    partner_uniform: float
    distractor_share: float
    distractor_uniform: float
    self_share: float = math.nan
    self_uniform: float = math.nan
    partner_outside: float = math.nan
    partner_outside_uniform: float = math.nan
    distractor_outside: float = math.nan
    distractor_outside_uniform: float = math.nan

    @property
    def partner_lift(self) -> float:
        """partner_share / partner_uniform: 1 for uniform attention."""
        return self.partner_share / self.partner_uniform

    @property
    def distractor_lift(self) -> float:
        return self.distractor_share / self.distractor_uniform

    def as_dict(self) -> dict:
        return dict(
            asdict(self), partner_lift=self.partner_lift, distractor_lift=self.distractor_lift
        )


def cells_covered(grid: Grid, mask: np.ndarray) -> np.ndarray:
    """bool [rows * cols] (row-major, as attention weights): the cells of ``grid`` that hold at
    least one pixel of ``mask`` ([H0, W0] over the original image)."""
    if mask.shape != tuple(grid.original_size):
        raise ValueError(
            f"mask of size {mask.shape} is not over the {tuple(grid.original_size)} image"
        )
    rows, cols = grid.cell_map()
    ys, xs = np.nonzero(mask)
    covered = np.zeros(grid.shape[0] * grid.shape[1], dtype=bool)
    covered[rows[ys] * grid.shape[1] + cols[xs]] = True
    return covered


def _target_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    polygons = [np.asarray(p, dtype=np.float64) for p in annotation["segmentation"]]
    return polygons_to_bitmask(polygons, height, width)


def _partner_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    polygons = [np.asarray(p, dtype=np.float64) for p in annotation["partner"]["segmentation"]]
    return polygons_to_bitmask(polygons, height, width)


def target_attention_shares(
    model: nn.Module, block_name: str, record: dict, transform, input_format: str
) -> List[Dict[str, float]]:
    """The shares of :class:`PartnerAttention` (``partner_share``, ``partner_uniform``,
    ``distractor_*``, ``self_*``, ``*_outside``) of every target of one dataset ``record``
    (detectron2's dataset dict with ``partner`` in each target annotation), for the block
    ``block_name`` of ``model`` (eval mode)."""
    # Targets name their partner; other annotations (nl_context's cue objects) are not queried.
    annotations = [a for a in record["annotations"] if "partner" in a]
    if not annotations:
        raise ValueError(
            f"{record['file_name']}: no annotation names a 'partner'; the statistic needs a "
            "dataset such as nl_context_bind_val whose targets name their partner"
        )
    block = dict(model.named_modules())[block_name]
    image = detection_utils.read_image(record["file_name"], format=input_format)
    inputs, geometry = record_block_inputs(model, image, transform, {block_name: block})
    centres = [
        (a["bbox"][0] + a["bbox"][2] / 2, a["bbox"][1] + a["bbox"][3] / 2) for a in annotations
    ]
    maps = attention_maps(block, block_name, inputs[block_name], geometry, centres, top_k=1)
    height, width = geometry.original_size
    partners = [cells_covered(maps[0].keys, _partner_mask(a, height, width)) for a in annotations]
    selves = [cells_covered(maps[0].keys, _target_mask(a, height, width)) for a in annotations]
    shares = []
    for i, amap in enumerate(maps):
        weights = amap.weights.reshape(-1)
        own, outside = selves[i], ~selves[i]
        # every other pair's partner is a distractor; their cells are pooled (none: NaN)
        others = [p for j, p in enumerate(partners) if j != i]
        distractor = np.logical_or.reduce(others) if others else None
        stats = {"self_share": float(weights[own].sum()), "self_uniform": float(own.mean())}
        left = max(1.0 - stats["self_share"], 1e-12)
        for kind, cells in (("partner", partners[i]), ("distractor", distractor)):
            if cells is None:
                stats.update(
                    {f"{kind}_{k}": math.nan for k in ("share", "uniform", "outside")},
                    **{f"{kind}_outside_uniform": math.nan},
                )
                continue
            stats[f"{kind}_share"] = float(weights[cells].sum())
            stats[f"{kind}_uniform"] = float(cells.mean())
            stats[f"{kind}_outside"] = float(weights[cells & outside].sum()) / left
            stats[f"{kind}_outside_uniform"] = float((cells & outside).sum() / outside.sum())
        shares.append(stats)
    return shares


def _mean(values: List[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def partner_attention(
    model: nn.Module,
    block_name: str,
    records: Iterable[dict],
    transform,
    input_format: str,
) -> PartnerAttention:
    """:func:`target_attention_shares` averaged over every target of ``records``."""
    shares = []
    with torch.no_grad():
        for record in records:
            shares += target_attention_shares(model, block_name, record, transform, input_format)
    if not shares:
        raise ValueError("no targets in the given records")
    means = {key: _mean([s[key] for s in shares]) for key in shares[0]}
    return PartnerAttention(block=block_name, num_queries=len(shares), **means)
