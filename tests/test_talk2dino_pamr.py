"""PAMR vs a slow per-pixel loop reference on a tiny image."""
import ovseg_d2  # noqa: F401

import math

import torch

from ovseg_d2.modeling.pamr import pamr

OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def slow_pamr(masks, image, iterations, dilations):
    """masks [T][H][W], image [3][H][W] nested lists; replicate borders by clamping indices."""
    channels, height, width = len(image), len(image[0]), len(image[0][0])

    def at(grid, y, x):
        return grid[min(max(y, 0), height - 1)][min(max(x, 0), width - 1)]

    weights = {}
    for y in range(height):
        for x in range(width):
            per_channel = []
            for c in range(channels):
                centre = image[c][y][x]
                samples, neighbours = [], []
                for d in dilations:
                    samples.append(centre)
                    for dy, dx in OFFSETS:
                        v = at(image[c], y + dy * d, x + dx * d)
                        samples.append(v)
                        neighbours.append(v)
                mean = sum(samples) / len(samples)
                sigma = math.sqrt(sum((s - mean) ** 2 for s in samples) / (len(samples) - 1))
                per_channel.append([-abs(centre - v) / (1e-8 + 0.1 * sigma) for v in neighbours])
            affinity = [sum(per_channel[c][k] for c in range(channels)) / channels for k in range(len(per_channel[0]))]
            m = max(affinity)
            z = sum(math.exp(a - m) for a in affinity)
            weights[y, x] = [math.exp(a - m) / z for a in affinity]
    for _ in range(iterations):
        new = []
        for mask in masks:
            rows = []
            for y in range(height):
                row = []
                for x in range(width):
                    neighbours = [at(mask, y + dy * d, x + dx * d) for d in dilations for dy, dx in OFFSETS]
                    row.append(sum(w * v for w, v in zip(weights[y, x], neighbours)))
                rows.append(row)
            new.append(rows)
        masks = new
    return masks


def test_matches_slow_reference():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (1, 3, 7, 9)).double()
    image[:, :, :3] = 40.0  # a flat region (sigma 0 nearby): the eps keeps it finite
    masks = torch.rand(1, 2, 7, 9, dtype=torch.float64)
    dilations = [1, 2, 4]
    out = pamr(masks, image, iterations=3, dilations=dilations)
    expected = torch.tensor(slow_pamr(masks[0].tolist(), image[0].tolist(), 3, dilations), dtype=torch.float64)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0].double(), expected, rtol=1e-5, atol=1e-6)


def test_constant_masks_stay_constant_and_batches_are_independent():
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 6, 5)).float()
    masks = torch.rand(2, 3, 6, 5)
    both = pamr(masks, images, iterations=2, dilations=[1, 2])
    single = pamr(masks[1:], images[1:], iterations=2, dilations=[1, 2])
    torch.testing.assert_close(both[1:], single)
    flat = pamr(torch.full((1, 1, 6, 5), 0.4), images[:1], iterations=10, dilations=[1, 2, 4, 8, 12, 24])
    torch.testing.assert_close(flat, torch.full_like(flat, 0.4))
