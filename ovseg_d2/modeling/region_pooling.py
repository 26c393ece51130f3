"""Region features from dense maps and region crops from images, batched over all regions.

* :func:`roi_align_1x1`: RoIAlign with a 1 x 1 output, adaptive sampling ratio and
  ``aligned=True`` - the exact arithmetic of ``torchvision.ops.roi_align`` (bilinear samples on
  a ceil(h) x ceil(w) grid inside the box, averaged), written as two separable weight matrices so
  that it runs as one einsum on any device. (torchvision's own op needs its compiled extension;
  the pure-Python fallback this CPU build uses compiles with inductor and can exhaust memory.)
  For a box on token boundaries it is exactly the mean of the tokens inside.
* :func:`crop_resize_pad`: every box cut out of its image, resized (bilinear, antialiased like
  ``F.interpolate(..., antialias=True)`` / PIL) so that its longest side is ``size`` and
  zero-padded bottom/right to ``size`` x ``size``: CLIPSelf's teacher input. Also two separable
  weight matrices and two einsums for all boxes of all images at once.
* :func:`mask_pool`: mean of the dense features inside each segment mask, every original pixel
  counted in the token it falls into.

Boxes are absolute XYXY in the pixel coordinates of the image the map was computed from; a
pixel (i, j) covers [j, j+1) x [i, i+1).
"""
from __future__ import annotations

import torch

__all__ = ["roi_align_1x1", "crop_resize_pad", "mask_pool", "boxes_with_batch_index"]


def boxes_with_batch_index(boxes_per_image: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """list of (K_i, 4) boxes -> (sum K_i, 4) boxes and their (sum K_i,) image indices."""
    boxes = torch.cat(list(boxes_per_image), dim=0)
    index = torch.cat([torch.full((len(b),), i, dtype=torch.long, device=b.device) for i, b in enumerate(boxes_per_image)])
    return boxes, index


def _roi_align_axis_weights(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed 1-D bilinear weights (K, size) of RoIAlign's samples along one axis, and the
    number of samples per box (K,). ``start``/``length`` are in feature-map units, already
    shifted by -0.5 (aligned=True)."""
    grid = torch.ceil(length).clamp(min=0).long()  # adaptive sampling ratio, output size 1
    max_grid = int(grid.max().item()) if grid.numel() else 0
    k = start.shape[0]
    weights = start.new_zeros(k, size)
    if max_grid == 0:
        return weights, grid
    steps = torch.arange(max_grid, device=start.device, dtype=start.dtype)
    coords = start[:, None] + (steps[None] + 0.5) * length[:, None] / grid.clamp(min=1)[:, None]  # (K, G)
    valid = (steps[None] < grid[:, None]) & (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0.0)
    low = coords.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coords), coords - low.to(coords.dtype))
    w_low = (1.0 - frac) * valid
    w_high = frac * valid
    weights.scatter_add_(1, low, w_low)
    weights.scatter_add_(1, high.clamp(max=size - 1), w_high)
    return weights, grid


def roi_align_1x1(features: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor, spatial_scale: float) -> torch.Tensor:
    """RoIAlign, output 1 x 1, sampling ratio adaptive, aligned=True.

    Args:
        features: B x C x h x w map.
        boxes: K x 4 XYXY in image pixels; ``spatial_scale`` maps them to the map (1 / stride).
        batch_index: K image indices into ``features``.
    Returns:
        K x C pooled features (equal to ``torchvision.ops.roi_align(..., (1, 1), spatial_scale,
        -1, True)[:, :, 0, 0]``).
    """
    b, c, h, w = features.shape
    if boxes.numel() == 0:
        return features.new_zeros(0, c)
    boxes = boxes.to(features.dtype) * spatial_scale
    wy, gy = _roi_align_axis_weights(boxes[:, 1] - 0.5, boxes[:, 3] - boxes[:, 1], h)
    wx, gx = _roi_align_axis_weights(boxes[:, 0] - 0.5, boxes[:, 2] - boxes[:, 0], w)
    count = (gy * gx).clamp(min=1).to(features.dtype)
    wy_all = features.new_zeros(len(boxes), b, h)
    wy_all[torch.arange(len(boxes), device=features.device), batch_index] = wy
    rows = features.permute(0, 2, 1, 3).reshape(b * h, c, w)  # (B*h) x C x w
    pooled = torch.einsum("kn,ncw,kw->kc", wy_all.reshape(len(boxes), b * h), rows, wx)
    return pooled / count[:, None]


def _resize_axis_weights(start: torch.Tensor, stop: torch.Tensor, out_len: torch.Tensor, size: int, in_size: int) -> torch.Tensor:
    """(K, size, in_size) antialiased bilinear weights taking pixels [start, stop) of an axis of
    length ``in_size`` to ``out_len`` outputs (rows >= out_len are zero: the padding)."""
    dtype = start.dtype
    out_idx = torch.arange(size, device=start.device, dtype=dtype)
    pixel_centre = torch.arange(in_size, device=start.device, dtype=dtype) + 0.5
    scale = (stop - start) / out_len.to(dtype)  # input pixels per output pixel
    support = scale.clamp(min=1.0)
    centre = start[:, None] + (out_idx[None] + 0.5) * scale[:, None]  # (K, size)
    tent = (1.0 - ((pixel_centre[None, None] - centre[..., None]) / support[:, None, None]).abs()).clamp(min=0.0)
    inside = (pixel_centre[None, None] >= start[:, None, None]) & (pixel_centre[None, None] <= stop[:, None, None])
    weights = tent * inside
    total = weights.sum(-1, keepdim=True)
    # A box narrower than one pixel centre falls back to its nearest pixels.
    weights = torch.where(total > 0, weights, tent)
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)
    content = out_idx[None] < out_len[:, None].to(dtype)
    return weights * content[..., None]


def crop_resize_pad(images: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each box, resize its longest side to ``size`` (aspect kept, antialiased bilinear),
    zero-pad bottom/right to a square.

    Args:
        images: B x C x H x W float images (e.g. RGB 0-255; padding is 0 in these units).
        boxes: K x 4 XYXY pixel boxes (positive width and height). batch_index: K.
    Returns:
        K x C x size x size crops.
    """
    b, c, h, w = images.shape
    if boxes.numel() == 0:
        return images.new_zeros(0, c, size, size)
    boxes = boxes.to(images.dtype)
    box_w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-6)
    box_h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-6)
    longest = torch.maximum(box_w, box_h)
    out_w = torch.round(box_w * size / longest).clamp(1, size)
    out_h = torch.round(box_h * size / longest).clamp(1, size)
    wx = _resize_axis_weights(boxes[:, 0], boxes[:, 0] + box_w, out_w, size, w)  # K x S x W
    wy = _resize_axis_weights(boxes[:, 1], boxes[:, 1] + box_h, out_h, size, h)  # K x S x H
    wy_all = images.new_zeros(len(boxes), size, b, h)
    wy_all[torch.arange(len(boxes), device=images.device), :, batch_index] = wy
    rows = images.permute(0, 2, 1, 3).reshape(b * h, c, w)
    resized_rows = torch.einsum("ksn,ncw->kcsw", wy_all.reshape(len(boxes), size, b * h), rows)
    return torch.einsum("kcsw,ktw->kcst", resized_rows, wx)


def mask_pool(
    tokens: torch.Tensor, segment_map: torch.Tensor, num_segments: int, content_size: tuple[int, int], patch_size: int
) -> torch.Tensor:
    """Mean feature of each segment, every pixel of the original-resolution segment map counted
    in the token its centre falls into after resizing to ``content_size``.

    Args:
        tokens: C x h x w dense map of one image (its top-left ``content_size`` pixels are the image).
        segment_map: H0 x W0 long, segment index 0..num_segments-1, -1 where there is none.
        content_size: (h_r, w_r) size the image was resized to before padding.
        patch_size: pixels per token.
    Returns:
        num_segments x C (zeros for a segment with no pixel).
    """
    c, h, w = tokens.shape
    h0, w0 = segment_map.shape
    device = tokens.device
    ty = ((torch.arange(h0, device=device, dtype=torch.float64) + 0.5) * (content_size[0] / h0) / patch_size).floor().long().clamp(max=h - 1)
    tx = ((torch.arange(w0, device=device, dtype=torch.float64) + 0.5) * (content_size[1] / w0) / patch_size).floor().long().clamp(max=w - 1)
    token_index = ty[:, None] * w + tx[None, :]
    segment_map = segment_map.to(device)
    valid = segment_map >= 0
    flat = segment_map[valid] * (h * w) + token_index[valid]
    counts = torch.bincount(flat, minlength=num_segments * h * w).view(num_segments, h * w).to(tokens.dtype)
    sums = counts @ tokens.reshape(c, h * w).T
    return sums / counts.sum(1, keepdim=True).clamp(min=1)
