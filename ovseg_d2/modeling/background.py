"""Background by score threshold (training-free protocols: V21, C60, COCO-Object).

On these benchmarks "background" is never text-encoded: the model scores the named classes,
and a constant score channel is put in front, so a pixel is background unless some class
scores above the threshold. The data sets' metadata says ``background_by_threshold=True``,
with "background" at index 0 of ``stuff_classes``.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["add_background_channel", "split_background_vocabulary", "BACKGROUND_INDEX"]

#: index of the background class on background-by-threshold data sets
BACKGROUND_INDEX = 0


def split_background_vocabulary(class_names: Sequence[str], background_by_threshold: bool) -> list[str]:
    """The names to text-encode: all of them, or all but the leading "background"."""
    names = list(class_names)
    return names[BACKGROUND_INDEX + 1 :] if background_by_threshold else names


def add_background_channel(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Prepend a constant ``threshold`` channel: (..., T, H, W) -> (..., T + 1, H, W).

    ``scores`` must be on the scale the threshold is meant for (probabilities or sigmoids).
    """
    background = torch.full_like(scores.narrow(-3, 0, 1), float(threshold))
    return torch.cat([background, scores], dim=-3)
