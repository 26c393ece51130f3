"""CLIP text features computed on the prompt tokens only.

open_clip pads every prompt to 77 tokens and runs the text transformer over all of them. CLIP's
text transformer is causal and its feature is read at the end token (``text_pool_type
"argmax"``: the end token has the largest id), so the feature depends only on the tokens up to
the end token: the columns after the longest prompt's end token can be dropped. Prompts of
class names are 5 to 20 tokens long, so the text encoder (the cost of a cold vocabulary: 847
classes x 7 templates for Talk2DINO) does a fraction of the work, with the same result
(``tests/test_clip_text_trim.py`` checks features and gradients against ``encode_text``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["encode_text_trimmed"]


def _is_causal(mask: torch.Tensor) -> bool:
    if mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.isneginf(mask[upper]).all()) and bool((mask[~upper] == 0).all())


def encode_text_trimmed(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(tokens, normalize=False)`` of an open_clip ``CLIP``, over the first
    ``max(end token position) + 1`` tokens. Any other text tower (not causal, another pooling,
    a custom text model) goes through ``encode_text`` unchanged."""
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
    ends = tokens.argmax(dim=-1)
    length = int(ends.max()) + 1
    if length >= tokens.shape[1]:
        return clip.encode_text(tokens, normalize=False)
    tokens = tokens[:, :length]
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
