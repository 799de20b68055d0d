"""Attention of context blocks on real images: where in the image one query position looks.

A block inside the backbone sees a feature map [1, C, h, w] of the padded network input. This
module captures that input with a forward hook, maps image pixels to feature cells and back, and
asks the block for ``attention_weights(x, queries)`` ([1, Q, M] over its key grid), so only Q rows
of the N x M affinity are ever computed.

Coordinates: an original image (H0, W0) is resized to (H1, W1) by the test-time transform and
padded to (Hp, Wp); a feature map (h, w) samples the padded input with a stride of Hp / h pixels;
a key grid (kh, kw) pools the feature map by round(h / kh) (2 with ``sub_sample``).
"""

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from nl_detectron.layers import (
    ContextBlock,
    DisentangledNonLocalBlock,
    NonLocalBlock,
    SpectralNonLocalBlock,
)

__all__ = [
    "CONTEXT_BLOCK_TYPES",
    "AttentionMap",
    "Grid",
    "ImageGeometry",
    "attention_maps",
    "capture_inputs",
    "find_nonlocal_blocks",
    "record_block_inputs",
    "strongest_queries",
]

logger = logging.getLogger(__name__)

CONTEXT_BLOCK_TYPES = (
    NonLocalBlock,
    DisentangledNonLocalBlock,
    SpectralNonLocalBlock,
    ContextBlock,
)


def find_nonlocal_blocks(model: nn.Module) -> Dict[str, nn.Module]:
    """All context blocks (NL, DNL, SNL, GC) of ``model``: module name -> block, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, CONTEXT_BLOCK_TYPES)}


@contextmanager
def capture_inputs(modules: Dict[str, nn.Module]) -> Iterator[Dict[str, torch.Tensor]]:
    """
    Record the first positional input of each module while the context is open.

    Yields:
        dict: name -> the detached input tensor of that module's latest call.
    """
    captured: Dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, inputs, output):
            captured[name] = inputs[0].detach()

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@dataclass(frozen=True)
class ImageGeometry:
    """Sizes (height, width) of one image along the test-time preprocessing."""

    original_size: Tuple[int, int]
    resized_size: Tuple[int, int]
    padded_size: Tuple[int, int]


@dataclass(frozen=True)
class Grid:
    """
    A grid of cells over the original image, e.g. a feature map or a block's key grid.

    Attributes:
        shape: (rows, cols) of the grid.
        cell_size: (height, width) of one cell in pixels of the resized image.
        scale: (resized / original) along (y, x).
        original_size: (H0, W0).
    """

    shape: Tuple[int, int]
    cell_size: Tuple[float, float]
    scale: Tuple[float, float]
    original_size: Tuple[int, int]

    def index_of(self, xy: Sequence[float]) -> int:
        """Flat (row-major) index of the cell holding original-image point (x, y)."""
        x, y = float(xy[0]), float(xy[1])
        height, width = self.original_size
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(
                f"query point (x={x:g}, y={y:g}) lies outside the {width}x{height} image; "
                f"allowed: 0 <= x < {width}, 0 <= y < {height}"
            )
        row = min(int(y * self.scale[0] // self.cell_size[0]), self.shape[0] - 1)
        col = min(int(x * self.scale[1] // self.cell_size[1]), self.shape[1] - 1)
        return row * self.shape[1] + col

    def centers(self, indices: np.ndarray) -> np.ndarray:
        """[K] flat cell indices -> [K, 2] cell centres (x, y) in original-image pixels."""
        rows, cols = np.divmod(np.asarray(indices, dtype=np.int64), self.shape[1])
        x = (cols + 0.5) * self.cell_size[1] / self.scale[1]
        y = (rows + 0.5) * self.cell_size[0] / self.scale[0]
        return np.stack([x, y], axis=-1)

    def cell_map(self) -> Tuple[np.ndarray, np.ndarray]:
        """Grid rows [H0] of the original pixel rows and grid columns [W0] of the pixel columns."""
        height, width = self.original_size
        rows = ((np.arange(height) + 0.5) * self.scale[0] // self.cell_size[0]).astype(np.int64)
        cols = ((np.arange(width) + 0.5) * self.scale[1] // self.cell_size[1]).astype(np.int64)
        return np.minimum(rows, self.shape[0] - 1), np.minimum(cols, self.shape[1] - 1)


def _grid(geometry: ImageGeometry, feature_shape: Sequence[int], pool: Sequence[int]) -> Grid:
    (h0, w0), (h1, w1), (hp, wp) = (
        geometry.original_size,
        geometry.resized_size,
        geometry.padded_size,
    )
    h, w = feature_shape
    return Grid(
        shape=(math.ceil(h / pool[0]), math.ceil(w / pool[1])),
        cell_size=(hp / h * pool[0], wp / w * pool[1]),
        scale=(h1 / h0, w1 / w0),
        original_size=(h0, w0),
    )


def feature_grid(geometry: ImageGeometry, feature_shape: Sequence[int]) -> Grid:
    """The query grid of a block whose input map has spatial ``feature_shape`` (h, w)."""
    return _grid(geometry, feature_shape, (1, 1))


def key_grid(
    geometry: ImageGeometry, feature_shape: Sequence[int], key_shape: Sequence[int]
) -> Grid:
    """The key grid (kh, kw) = ``block.key_shape((h, w))``, pooled by round(h / kh) from (h, w)."""
    pool = [max(1, round(f / k)) for f, k in zip(feature_shape, key_shape)]
    grid = _grid(geometry, feature_shape, pool)
    if grid.shape != tuple(key_shape):
        raise ValueError(
            f"key grid {tuple(key_shape)} is not a pooling of the feature map "
            f"{tuple(feature_shape)}"
        )
    return grid


def record_block_inputs(
    model: nn.Module, image: np.ndarray, transform, blocks: Dict[str, nn.Module]
) -> Tuple[Dict[str, torch.Tensor], ImageGeometry]:
    """
    Run the backbone of a detectron2 meta-architecture on one image and capture block inputs.

    Args:
        model: e.g. ``GeneralizedRCNN`` with ``preprocess_image`` and ``backbone``; in eval mode.
        image: [H0, W0, 3] uint8 in the model's input format (cfg.INPUT.FORMAT).
        transform: the test-time augmentation, e.g. ``ResizeShortestEdge``.
        blocks: name -> block, all inside ``model.backbone``.

    Returns:
        (name -> block input [1, C, h, w], geometry of the image).
    """
    resized = transform.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
    with torch.no_grad(), capture_inputs(blocks) as captured:
        images = model.preprocess_image([{"image": tensor}])
        model.backbone(images.tensor)
    missing = sorted(set(blocks) - set(captured))
    if missing:
        raise ValueError(f"blocks {missing} did not run in the backbone's forward pass")
    geometry = ImageGeometry(
        original_size=tuple(image.shape[:2]),
        resized_size=tuple(resized.shape[:2]),
        padded_size=tuple(images.tensor.shape[-2:]),
    )
    return dict(captured), geometry


@dataclass
class AttentionMap:
    """
    What one query position attends to, in original-image coordinates.

    Attributes:
        block: module name of the block.
        query_xy: (x, y) centre of the query's feature cell.
        weights: [kh, kw] the query's weights over the key grid.
        keys: the key grid (maps weights to image pixels).
        top_xy: [k, 2] centres (x, y) of the k most-attended key cells, strongest first.
        top_weights: [k] their weights.
    """

    block: str
    query_xy: Tuple[float, float]
    weights: np.ndarray
    keys: Grid
    top_xy: np.ndarray
    top_weights: np.ndarray


def attention_maps(
    block: nn.Module,
    name: str,
    x: torch.Tensor,
    geometry: ImageGeometry,
    queries_xy: Sequence[Sequence[float]],
    top_k: int = 20,
) -> List[AttentionMap]:
    """
    The attention of ``block`` for query points given in original-image pixels.

    Args:
        block: a context block with ``attention_weights`` and ``key_shape``.
        name: its module name (stored in the result).
        x: its input [1, C, h, w] for the image described by ``geometry``.
        queries_xy: Q points (x, y); each selects the feature cell it falls in.
        top_k: how many of the most-attended key cells to return per query (the non-local
            paper's Figure 3 draws 20 arrows).

    Returns:
        list[AttentionMap]: one per query.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be >= 1")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image's block input [1, C, h, w], got {tuple(x.shape)}")
    feature_shape = tuple(x.shape[2:])
    queries = feature_grid(geometry, feature_shape)
    keys = key_grid(geometry, feature_shape, block.key_shape(feature_shape))
    indices = torch.tensor([queries.index_of(q) for q in queries_xy], dtype=torch.long)
    with torch.no_grad():
        weights = block.attention_weights(x, indices.to(x.device))[0].float().cpu()  # [Q, M]
    k = min(top_k, weights.shape[1])
    top_weights, top_index = weights.topk(k, dim=1)
    query_centers = queries.centers(indices.numpy())
    return [
        AttentionMap(
            block=name,
            query_xy=(float(query_centers[q, 0]), float(query_centers[q, 1])),
            weights=weights[q].reshape(keys.shape).numpy(),
            keys=keys,
            top_xy=keys.centers(top_index[q].numpy()),
            top_weights=top_weights[q].numpy(),
        )
        for q in range(len(indices))
    ]


def strongest_queries(
    block: nn.Module, x: torch.Tensor, geometry: ImageGeometry, num: int, min_distance: int = 0
) -> List[Tuple[float, float]]:
    """
    The query positions the block changes most: largest ``||block(x)_i - x_i||`` over channels.

    Picked greedily, each at least ``min_distance`` feature cells (Chebyshev) from those already
    picked, among the cells that cover the image (not its padding).

    Args:
        block, x: the block and its input [1, C, h, w].
        num: how many queries.
        min_distance: spacing in feature cells; 0 picks max(h, w) // 8.

    Returns:
        list of (x, y) cell centres in original-image pixels.
    """
    if num < 1:
        raise ValueError(f"num={num!r} queries must be >= 1")
    grid = feature_grid(geometry, tuple(x.shape[2:]))
    with torch.no_grad():
        score = (block(x) - x).float().norm(dim=1)[0].cpu().numpy()  # [h, w]
    rows = math.ceil(geometry.resized_size[0] / grid.cell_size[0])
    cols = math.ceil(geometry.resized_size[1] / grid.cell_size[1])
    score = score[:rows, :cols]
    if not score.max() > 0:
        # an untrained (zero-initialised) block is the identity: every cell scores 0
        logger.warning("Block output equals its input everywhere; picking queries near the centre.")
        yy, xx = np.mgrid[:rows, :cols]
        score = -np.hypot(yy - (rows - 1) / 2, xx - (cols - 1) / 2)
    spacing = min_distance or max(grid.shape) // 8
    picked: List[Tuple[int, int]] = []
    for flat in np.argsort(-score, axis=None, kind="stable"):
        r, c = divmod(int(flat), cols)
        if all(max(abs(r - pr), abs(c - pc)) >= spacing for pr, pc in picked):
            picked.append((r, c))
        if len(picked) == num:
            break
    centers = grid.centers(np.array([r * grid.shape[1] + c for r, c in picked]))
    # the last row/column of cells may stick out of the image; keep the point inside its cell
    height, width = geometry.original_size
    return [(float(min(px, width - 1)), float(min(py, height - 1))) for px, py in centers]
