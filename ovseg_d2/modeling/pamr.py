"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as Talk2DINO applies it.

Score maps are propagated along the image's local colour affinities: each pixel is replaced by
an affinity-weighted sum of its neighbours, ``iterations`` times. Neighbours: the 8 pixels of a
3 x 3 stencil at each dilation (8 x len(dilations) in all; the centre is not one of them), with
replicate padding at the border. Affinity of pixel c to neighbour n, per colour channel::

    -|I_c - I_n| / (EPS + SIGMA_SCALE * sigma_c)

where ``sigma_c`` is the unbiased standard deviation over all stencil samples of c (9 per
dilation: the centre counted once per dilation). It is averaged over the colour channels, then
softmaxed over the neighbours. The guide image is the raw RGB window (0-255, not normalised).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["pamr", "pamr_affinity", "STENCIL_OFFSETS"]

#: the 8 neighbours of a 3 x 3 stencil, (dy, dx) in units of the dilation
STENCIL_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
SIGMA_SCALE = 0.1  # PAMR's affinity bandwidth: 0.1 times the local standard deviation
EPS = 1e-8  # keeps the affinity finite in flat regions


def _shifted(x: torch.Tensor, dilation: int, offsets=STENCIL_OFFSETS) -> list[torch.Tensor]:
    """x [B, C, H, W] -> the maps of x at each offset * dilation, replicate-padded, [B, C, H, W] each."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return [padded[..., dilation + dy * dilation : dilation + dy * dilation + h, dilation + dx * dilation : dilation + dx * dilation + w] for dy, dx in offsets]


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Neighbour weights [B, K, H, W] (K = 8 * len(dilations), summing to 1 over K) of a guide
    image [B, 3, H, W]."""
    image = image.float()
    neighbours = torch.stack([n for d in dilations for n in _shifted(image, d)], dim=2)  # B x 3 x K x H x W
    centre = image.unsqueeze(2)
    samples = torch.cat([neighbours, centre.expand(-1, -1, len(dilations), -1, -1)], dim=2)
    sigma = samples.std(dim=2, keepdim=True)  # unbiased
    affinity = -(neighbours - centre).abs() / (EPS + SIGMA_SCALE * sigma)
    return affinity.mean(dim=1).softmax(dim=1)


def pamr(masks: torch.Tensor, image: torch.Tensor, *, iterations: int, dilations: Sequence[int], affinity: torch.Tensor | None = None) -> torch.Tensor:
    """Refine score maps [B, T, H, W] with the guide ``image`` [B, 3, H, W] (same H, W).

    ``affinity``: a precomputed :func:`pamr_affinity` of ``image`` (when refining several class
    chunks of the same images). Returns [B, T, H, W] in ``masks``' dtype.
    """
    if masks.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"PAMR needs masks and guide image of one size, got {tuple(masks.shape[-2:])} and {tuple(image.shape[-2:])}")
    if affinity is None:
        affinity = pamr_affinity(image, dilations)
    dtype = masks.dtype
    x = masks.float()
    weights = affinity.unsqueeze(2)  # B x K x 1 x H x W
    for _ in range(iterations):
        k = 0
        refined = torch.zeros_like(x)
        for d in dilations:
            for neighbour in _shifted(x, d):
                refined += weights[:, k] * neighbour
                k += 1
        x = refined
    return x.to(dtype)
