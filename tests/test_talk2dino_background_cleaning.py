"""Background cleaning vs a slow reference written from the anchors' description (loops)."""
import ovseg_d2  # noqa: F401

import math

import torch

from ovseg_d2.modeling.background_cleaning import background_cleaning

LAMBDA = 0.2


def slow_background_cleaning(masks, text, tokens, logits, lam):
    """One window: masks [T][N] (flattened h*w), text [T][D], tokens [N][D], logits [H][N]."""
    n_classes, n_patches, n_heads, dim = len(masks), len(tokens), len(logits), len(tokens[0])
    # 1. head embedding: mean over patches of raw logit x unnormalised token, L2-normalised (no eps)
    heads = []
    for h in range(n_heads):
        e = [sum(logits[h][p] * tokens[p][d] for p in range(n_patches)) / n_patches for d in range(dim)]
        norm = math.sqrt(sum(v * v for v in e))
        heads.append([v / norm for v in e])
    # 2.-3. per class: softmax over heads of text . head, head-weighted logits, softmax over patches
    attention = []
    for t in range(n_classes):
        scores = [sum(text[t][d] * heads[h][d] for d in range(dim)) for h in range(n_heads)]
        z = sum(math.exp(s) for s in scores)
        weights = [math.exp(s) / z for s in scores]
        mixed = [sum(weights[h] * logits[h][p] for h in range(n_heads)) for p in range(n_patches)]
        zp = sum(math.exp(v) for v in mixed)
        attention.append([math.exp(v) / zp for v in mixed])
    # 4. global min/max rescaling, then onto the masks' global [min, max]
    a_min = min(min(row) for row in attention)
    a_max = max(max(row) for row in attention)
    divisor = max(a_max, a_max - a_min)
    m_min = min(min(row) for row in masks)
    m_max = max(max(row) for row in masks)
    out = []
    for t in range(n_classes):
        row = []
        for p in range(n_patches):
            a = (attention[t][p] - a_min) / divisor
            a = m_min + a * (m_max - m_min)
            row.append((masks[t][p] + lam * a) / (1 + lam))  # 5.
        out.append(row)
    return out


def test_matches_slow_reference_per_window():
    torch.manual_seed(0)
    windows, classes, heads, h, w, dim = 2, 3, 2, 3, 4, 5
    masks = torch.rand(windows, classes, h, w, dtype=torch.float64) * 0.4 + 0.3
    text = torch.nn.functional.normalize(torch.randn(classes, dim, dtype=torch.float64), dim=-1)
    tokens = torch.randn(windows, h * w, dim, dtype=torch.float64)
    logits = torch.randn(windows, heads, h * w, dtype=torch.float64) * 2
    out = background_cleaning(masks, text, tokens, logits, weight=LAMBDA)
    assert out.shape == masks.shape
    for i in range(windows):  # each window is cleaned on its own (its own min/max)
        expected = slow_background_cleaning(masks[i].flatten(1).tolist(), text.tolist(), tokens[i].tolist(), logits[i].tolist(), LAMBDA)
        torch.testing.assert_close(out[i].flatten(1).double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    # the window's other classes matter (global min/max): cleaning one class alone differs
    alone = background_cleaning(masks[:1, :1], text[:1], tokens[:1], logits[:1], weight=LAMBDA)
    assert not torch.allclose(alone[0, 0], out[0, 0])
