"""Drawing attention maps over photos, in the style of Figure 3 of the non-local paper.

One picture per query: the query's weights over the key grid as a heat overlay (each key cell
painted with its weight, from the query's smallest to its largest), an arrow from the query to
each of its most-attended key cells, a dot at the end of each arrow and a ring-marked dot at the
query. Pictures keep the photo's size.
"""

from typing import List, Optional, Sequence

import cv2
import numpy as np

from .attention import AttentionMap

__all__ = ["KEY_COLOR", "QUERY_COLOR", "draw_attention", "tile_images"]

# RGB; pure colours so that tests can find the markers in the written pixels
KEY_COLOR = (0, 255, 0)
QUERY_COLOR = (255, 0, 0)


def _marker_size(image_shape: Sequence[int]) -> int:
    # about 2 pixels of line per 500 pixels of image side
    return max(1, round(min(image_shape[:2]) / 250))


def draw_attention(
    image: np.ndarray, amap: AttentionMap, *, alpha: float = 0.6, title: Optional[str] = None
) -> np.ndarray:
    """
    Args:
        image: [H0, W0, 3] uint8 RGB, the original photo ``amap`` was computed on.
        amap: the query's attention.
        alpha: opacity of the heat overlay at the most-attended key cell.
        title: text written in the top-left corner.

    Returns:
        [H0, W0, 3] uint8 RGB picture.
    """
    if image.shape[:2] != tuple(amap.keys.original_size):
        raise ValueError(
            f"image of size {image.shape[:2]} is not the {tuple(amap.keys.original_size)} image "
            "the attention was computed on"
        )
    rows, cols = amap.keys.cell_map()
    heat = amap.weights[rows[:, None], cols[None, :]]  # [H0, W0], one value per key cell
    # stretched from the query's smallest to its largest weight: trained-from-scratch blocks are
    # close to uniform, and the title should carry the absolute scale
    low, high = float(amap.weights.min()), float(amap.weights.max())
    heat = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    colors = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    opacity = (alpha * heat)[:, :, None]
    out = (image * (1 - opacity) + colors * opacity).round().astype(np.uint8)

    size = _marker_size(image.shape)
    query = tuple(int(round(v)) for v in amap.query_xy)
    ends = [tuple(int(round(v)) for v in xy) for xy in amap.top_xy]
    # weakest first, so the strongest arrows end up on top
    for end in reversed(ends):
        if end != query:
            cv2.arrowedLine(out, query, end, KEY_COLOR, size, cv2.LINE_AA, tipLength=0.08)
    for end in ends:
        cv2.circle(out, end, 2 * size + 1, KEY_COLOR, -1)
    cv2.circle(out, query, 4 * size + 2, (255, 255, 255), -1)
    cv2.circle(out, query, 3 * size + 1, QUERY_COLOR, -1)
    if title:
        scale = 0.4 * size
        (w, h), base = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, size)
        cv2.rectangle(out, (0, 0), (w + 4 * size, h + base + 4 * size), (0, 0, 0), -1)
        cv2.putText(
            out,
            title,
            (2 * size, h + 2 * size),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            size,
            cv2.LINE_AA,
        )
    return out


def tile_images(rows: List[List[np.ndarray]], width: int, gap: int = 4) -> np.ndarray:
    """
    Tile pictures into one overview: each row of ``rows`` side by side, rows stacked.

    Every picture is scaled to ``width`` pixels wide (keeping its aspect); short rows are padded
    with white.

    Returns:
        [H, W, 3] uint8.
    """
    if width < 1:
        raise ValueError(f"width={width!r} must be >= 1")
    scaled = [
        [
            cv2.resize(
                p,
                (width, max(1, round(p.shape[0] * width / p.shape[1]))),
                interpolation=cv2.INTER_AREA,
            )
            for p in row
        ]
        for row in rows
        if row
    ]
    if not scaled:
        raise ValueError("no pictures to tile")
    num_cols = max(len(row) for row in scaled)
    total_w = num_cols * width + (num_cols - 1) * gap
    strips = []
    for row in scaled:
        height = max(p.shape[0] for p in row)
        strip = np.full((height, total_w, 3), 255, dtype=np.uint8)
        for i, p in enumerate(row):
            x0 = i * (width + gap)
            strip[: p.shape[0], x0 : x0 + width] = p
        strips.append(strip)
    blank = np.full((gap, total_w, 3), 255, dtype=np.uint8)
    parts = [strips[0]]
    for strip in strips[1:]:
        parts += [blank, strip]
    return np.concatenate(parts, axis=0)
