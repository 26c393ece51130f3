"""Regions CLIPSelf distils on: a random M x N grid of an image, or boxes from a proposals file.

Grid (CLIPSelf's default): (M, N) is drawn uniformly from the pairs with M in 1..S and N in
ceil(M/2)..min(2M, S) (S = ``max_splits``, 6 in the reference: 24 pairs). M splits the height
(rows), N the width (columns). The image content is cut into M x N equal cells, the cells are
shuffled and at most ``max_regions`` are kept. Boxes are absolute XYXY floats in pixels.

Proposals: boxes are kept as given (clipped to the image); the teacher sees each box enlarged
by ``crop_scale`` (1.5 in the reference) about its centre, clipped to the image.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["grid_split_choices", "sample_grid_boxes", "grid_boxes", "enlarge_boxes", "clip_boxes"]


def grid_split_choices(max_splits: int) -> list[tuple[int, int]]:
    """Every (M, N) the grid sampler may draw: M in 1..max_splits, N in ceil(M/2)..min(2M, max_splits)."""
    if max_splits < 1:
        raise ValueError(f"MODEL.CLIPSELF.GRID_MAX_SPLITS must be >= 1, got {max_splits}")
    return [(m, n) for m in range(1, max_splits + 1) for n in range(math.ceil(m / 2), min(2 * m, max_splits) + 1)]


def grid_boxes(height: float, width: float, rows: int, cols: int) -> np.ndarray:
    """The rows x cols cells of a height x width image as (rows*cols, 4) XYXY, row-major."""
    ys = np.linspace(0.0, float(height), rows + 1)
    xs = np.linspace(0.0, float(width), cols + 1)
    y0, x0 = np.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    y1, x1 = np.meshgrid(ys[1:], xs[1:], indexing="ij")
    return np.stack([x0, y0, x1, y1], axis=-1).reshape(-1, 4)


def sample_grid_boxes(
    height: float, width: float, *, max_regions: int, max_splits: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int]]:
    """Draw (M, N), cut the image into M x N cells, shuffle them and keep at most ``max_regions``.

    Returns:
        boxes: (K, 4) float64 XYXY in pixels, K = min(M*N, max_regions).
        (M, N): the grid drawn.
    """
    if max_regions < 1:
        raise ValueError(f"MODEL.CLIPSELF.MAX_REGIONS must be >= 1, got {max_regions}")
    choices = grid_split_choices(max_splits)
    rows, cols = choices[int(rng.integers(len(choices)))]
    boxes = grid_boxes(height, width, rows, cols)
    order = rng.permutation(len(boxes))[:max_regions]
    return boxes[order], (rows, cols)


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """(K, 4) XYXY clipped to [0, width] x [0, height]."""
    boxes = np.asarray(boxes, dtype=np.float64).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0.0, float(width))
    boxes[:, 1::2] = boxes[:, 1::2].clip(0.0, float(height))
    return boxes


def enlarge_boxes(boxes: np.ndarray, scale: float, height: float, width: float) -> np.ndarray:
    """(K, 4) XYXY boxes scaled by ``scale`` about their centres, then clipped to the image."""
    boxes = np.asarray(boxes, dtype=np.float64)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
    return clip_boxes(np.concatenate([centre - half, centre + half], axis=1), height, width)
