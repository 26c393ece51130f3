"""Segmentation overlays with a legend, drawn with detectron2's ``Visualizer``.

Used by ``tools/demo.py``. The overlay is drawn at a bounded size (long side between
``min_size`` and ``max_size``, nearest-neighbour labels), so that a 100-megapixel photo costs no
more to draw than a 1600-pixel one and a 128-pixel test image is still readable; the legend
(colour swatch, name, pixel share) lists the classes present, most frequent first.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer
from PIL import Image

__all__ = ["class_colors", "draw_segmentation_overlay", "pixel_fractions"]

BACKGROUND_RGB = (0.5, 0.5, 0.5)  # legend swatch of the threshold background (left unpainted)
LEGEND_TEXT_RGB = (1.0, 1.0, 1.0)  # legend names and shares, on Visualizer's dark text box
_LEGEND_PAD_FRACTION = 0.5  # padding around legend entries, in line heights
_POINTS_TO_PIXELS = 100 / 72  # matplotlib text size (points) at Visualizer's 100 dpi


def class_colors(num_classes: int) -> list[np.ndarray]:
    """One RGB colour in [0, 1] per class: detectron2's palette, repeated for long vocabularies."""
    palette = colormap(rgb=True, maximum=1)
    return [palette[i % len(palette)] for i in range(num_classes)]


def pixel_fractions(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of the pixels of each class (sums to 1): ``num_classes`` floats."""
    counts = np.bincount(labels.reshape(-1), minlength=num_classes)[:num_classes]
    return counts / max(1, labels.size)


def _working_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    long_side = max(height, width)
    if long_side > max_size:
        factor = max_size / long_side
    elif long_side < min_size:
        factor = float(math.ceil(min_size / long_side))  # integer upscaling keeps pixels square
    else:
        factor = 1.0
    return max(1, round(height * factor)), max(1, round(width * factor))


def draw_segmentation_overlay(
    image_rgb: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    *,
    background_index: Optional[int] = None,
    alpha: float = 0.5,
    min_size: int = 512,
    max_size: int = 1600,
    max_legend_entries: int = 30,
) -> np.ndarray:
    """H x W x 3 uint8 RGB image and H x W labels -> overlay with a legend panel on the right.

    Each class present is painted with its colour (``background_index``, the threshold
    background, is left unpainted); the legend lists up to ``max_legend_entries`` classes.
    """
    if image_rgb.shape[:2] != labels.shape:
        raise ValueError(f"image {image_rgb.shape[:2]} and labels {labels.shape} differ in size")
    height, width = _working_size(*labels.shape, min_size, max_size)
    if (height, width) != labels.shape:
        image_rgb = np.asarray(Image.fromarray(image_rgb).resize((width, height), Image.BILINEAR if height < labels.shape[0] else Image.NEAREST))
        small = labels if labels.dtype in (np.uint8, np.uint16) else labels.astype(np.int32)  # no copy for 1-2 byte labels
        labels = np.asarray(Image.fromarray(small).resize((width, height), Image.NEAREST))
    colors = class_colors(len(names))
    fractions = pixel_fractions(labels, len(names))
    present = [int(k) for k in np.argsort(-fractions, kind="stable") if fractions[k] > 0]

    painter = Visualizer(image_rgb)
    for k in present:
        if k != background_index:
            painter.draw_binary_mask(labels == k, color=colors[k], edge_color=(1.0, 1.0, 1.0), alpha=alpha, area_threshold=0)
    overlay = painter.get_output().get_image()

    shown = present[:max_legend_entries]
    font_points = max(9.0, height / 36)
    line = font_points * _POINTS_TO_PIXELS * 1.8
    pad = line * _LEGEND_PAD_FRACTION
    entries = [f"{names[k]}  {100 * fractions[k]:.1f}%" for k in shown]
    if len(present) > len(shown):
        entries.append(f"+ {len(present) - len(shown)} more classes")
    longest = max((len(e) for e in entries), default=0)
    panel_width = int(pad * 3 + line + longest * font_points * _POINTS_TO_PIXELS * 0.62)
    canvas_height = max(height, int(pad * 2 + line * len(entries)))
    canvas = np.full((canvas_height, width + panel_width, 3), 255, dtype=np.uint8)
    canvas[:height, :width] = overlay
    legend = Visualizer(canvas)
    x0 = width + pad
    swatch = line * 0.7
    for i, k in enumerate(shown):
        y = pad + i * line
        color = BACKGROUND_RGB if k == background_index else colors[k]
        square = np.array([[x0, y], [x0 + swatch, y], [x0 + swatch, y + swatch], [x0, y + swatch]])
        legend.draw_polygon(square, color=color, edge_color=(0.0, 0.0, 0.0), alpha=1.0)
        # white text: Visualizer.draw_text brightens colours for its dark text box, which turns a
        # grey class colour red; the swatch carries the class colour
        legend.draw_text(entries[i], (x0 + swatch + pad, y), font_size=font_points, color=LEGEND_TEXT_RGB, horizontal_alignment="left")
    if len(entries) > len(shown):
        legend.draw_text(entries[-1], (x0, pad + len(shown) * line), font_size=font_points, color=(0.9, 0.9, 0.9), horizontal_alignment="left")
    return legend.get_output().get_image()
