"""Sliding-window inference shared by every method: window boxes, batched crops, stitching.

CAT-Seg cuts four 384 windows with stride 256 from a 640x640 image (plus a global view);
Talk2DINO cuts 448 windows with stride 224 from an image whose short side is 448. Both are
"windows on a regular grid, the last one flush with the border, overlaps averaged", which is
what these functions compute. Windows are cut and run as one batch, never in a Python loop
over the model.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["window_starts", "window_boxes", "crop_windows", "stitch_windows", "sliding_window_predict"]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: 0, stride, 2*stride, ... and a last window flush with the end.

    A side no longer than the window gets the single offset 0 (the window is then clipped).
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def window_boxes(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of every window, row by row (CAT-Seg's nn.Unfold order)."""
    boxes = []
    for top in window_starts(height, window, stride):
        for left in window_starts(width, window, stride):
            boxes.append((top, left, min(top + window, height), min(left + window, width)))
    return boxes


def crop_windows(images: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """B x C x H x W -> (B * K) x C x h x w windows (image-major), all windows the same size."""
    sizes = {(b - t, r - l) for t, l, b, r in boxes}
    if len(sizes) != 1:
        raise ValueError(f"windows must share one size to be batched, got {sorted(sizes)}")
    crops = [images[:, :, t:b, l:r] for t, l, b, r in boxes]
    return torch.stack(crops, dim=1).flatten(0, 1)


def stitch_windows(window_scores: torch.Tensor, boxes: list[tuple[int, int, int, int]], height: int, width: int) -> torch.Tensor:
    """Average overlapping windows back into full maps.

    Args:
        window_scores: (B * K) x T x h x w, image-major as produced by :func:`crop_windows`.
    Returns:
        B x T x height x width: per pixel the mean over the windows covering it.
    """
    k = len(boxes)
    scores = window_scores.unflatten(0, (-1, k))  # B x K x T x h x w
    out = scores.new_zeros(scores.shape[0], scores.shape[2], height, width)
    count = scores.new_zeros(1, 1, height, width)
    for i, (t, l, b, r) in enumerate(boxes):
        out[:, :, t:b, l:r] += scores[:, i]
        count[:, :, t:b, l:r] += 1
    return out / count


def sliding_window_predict(
    images: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    *,
    window: int,
    stride: int,
) -> torch.Tensor:
    """Run ``predict`` on all windows as one batch and stitch the results.

    ``predict`` maps N x C x window x window to N x T x window x window scores (already at
    window resolution). Returns B x T x H x W.
    """
    height, width = images.shape[-2:]
    boxes = window_boxes(height, width, window, stride)
    scores = predict(crop_windows(images, boxes))
    return stitch_windows(scores, boxes, height, width)
