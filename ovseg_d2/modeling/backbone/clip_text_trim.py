"""CLIP text features computed on the prompt tokens only.

open_clip pads every prompt to 77 tokens and runs the text transformer over all of them. CLIP's
text transformer is causal and its feature is read at the end token (``text_pool_type
"argmax"``: the end token has the largest id), so the feature depends only on the tokens up to
the end token: the columns after it can be dropped. Prompts of class names are 5 to 20 tokens
long, so the text encoder (the cost of a cold vocabulary: 847 classes x 7 templates for
Talk2DINO) does a fraction of the work, with the same result (``tests/test_clip_text_trim.py``
checks features and gradients against ``encode_text``).

Each prompt is cut to its own length rounded up to ``TRIM_BUCKET`` tokens (prompts of one bucket
run together), never to a length set by the other prompts of the batch, so a class name's
embedding does not depend on the vocabulary it came with (float rounding of batched products
aside, ~1e-7). The backbones use it for class-name prompts (``encode_prompts``); captions
(Talk2DINO's training and feature cache, which compare features across batchings to 1e-7) keep
open_clip's ``encode_text``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["encode_text_trimmed", "TRIM_BUCKET"]

#: prompts are cut to a multiple of this many tokens (16: one bucket for class-name prompts)
TRIM_BUCKET = 16


def _is_causal(mask: torch.Tensor) -> bool:
    if mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[upper]).all()) and bool((mask[~upper] == 0).all())


def encode_text_trimmed(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(tokens, normalize=False)`` of an open_clip ``CLIP``, each prompt over
    its first ``end token position + 1`` tokens rounded up to ``TRIM_BUCKET``. Any other text
    tower (not causal, another pooling, a custom text model) goes through ``encode_text``."""
    mask = getattr(clip, "attn_mask", None)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if (
        getattr(clip, "text_pool_type", None) != "argmax"
        or mask is None
        or not all(hasattr(clip, name) for name in needed)
        or tokens.dim() != 2
        or not _is_causal(mask)
    ):
        return clip.encode_text(tokens, normalize=False)
    context = tokens.shape[1]
    ends = tokens.argmax(dim=-1)
    lengths = ((ends + TRIM_BUCKET) // TRIM_BUCKET * TRIM_BUCKET).clamp(max=context)  # >= end + 1
    if bool((lengths == context).all()):
        return clip.encode_text(tokens, normalize=False)
    parts, order = [], []
    for length in sorted(set(lengths.tolist())):
        rows = torch.nonzero(lengths == length).flatten()
        parts.append(_encode_prefix(clip, mask, tokens[rows, :length], ends[rows]))
        order.append(rows)
    features = torch.cat(parts)
    inverse = torch.empty_like(ends)
    inverse[torch.cat(order)] = torch.arange(len(ends), device=ends.device)
    return features[inverse]


def _encode_prefix(clip: nn.Module, mask: torch.Tensor, tokens: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` on the first ``tokens.shape[1]`` positions."""
    length = tokens.shape[1]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast_dtype)
    x = x + clip.positional_embedding[:length].to(cast_dtype)
    x = clip.transformer(x, attn_mask=mask[:length, :length])
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), ends]
    projection = clip.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection
