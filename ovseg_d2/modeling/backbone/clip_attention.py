"""Split-weight attention and parameter selection for open_clip towers.

open_clip packs each attention layer's query/key/value weights into one ``in_proj_weight``
[3D, D]. Training only the query and value projections (CAT-Seg's and our baseline's recipe)
needs them as separate parameters; the split layout is also exactly the one in CAT-Seg's
released checkpoints (``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` plus the packed
``in_proj_bias``). ``torch.nn.MultiheadAttention`` supports that layout natively.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn as nn

__all__ = [
    "split_packed_qkv_",
    "split_all_attention_",
    "pack_split_qkv_state_dict",
    "TRAINABLE_CHOICES",
    "select_tower_parameters",
]

TRAINABLE_CHOICES = ("none", "qv", "blocks")


def split_packed_qkv_(attn: nn.MultiheadAttention) -> None:
    """Turn a packed ``in_proj_weight`` into ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``.

    In place; values are unchanged, so outputs are identical. No-op if already split.
    """
    if not attn._qkv_same_embed_dim:
        return
    dim = attn.embed_dim
    packed = attn.in_proj_weight.detach()
    attn.q_proj_weight = nn.Parameter(packed[:dim].clone(), requires_grad=attn.in_proj_weight.requires_grad)
    attn.k_proj_weight = nn.Parameter(packed[dim : 2 * dim].clone(), requires_grad=attn.in_proj_weight.requires_grad)
    attn.v_proj_weight = nn.Parameter(packed[2 * dim :].clone(), requires_grad=attn.in_proj_weight.requires_grad)
    attn.register_parameter("in_proj_weight", None)
    attn._qkv_same_embed_dim = False


def split_all_attention_(module: nn.Module) -> int:
    """Split every ``nn.MultiheadAttention`` under ``module``; returns how many were split."""
    count = 0
    for sub in module.modules():
        if isinstance(sub, nn.MultiheadAttention) and sub._qkv_same_embed_dim:
            split_packed_qkv_(sub)
            count += 1
    return count


def pack_split_qkv_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of the split for checkpoints: ``*.q/k/v_proj_weight`` -> ``*.in_proj_weight``.

    Used when exporting to plain open_clip. Returns a new dict; other keys are kept as is.
    """
    out: dict[str, torch.Tensor] = {}
    prefixes = sorted({k[: -len("q_proj_weight")] for k in state_dict if k.endswith(".q_proj_weight")})
    for key, value in state_dict.items():
        if not any(key.startswith(p) and key[len(p) :] in ("q_proj_weight", "k_proj_weight", "v_proj_weight") for p in prefixes):
            out[key] = value
    for prefix in prefixes:
        parts = [state_dict[prefix + f"{name}_proj_weight"] for name in ("q", "k", "v")]
        out[prefix + "in_proj_weight"] = torch.cat(parts, dim=0)
    return out


def _attention_layers(blocks: Iterable[nn.Module]) -> Iterator[nn.MultiheadAttention]:
    for block in blocks:
        for sub in block.modules():
            if isinstance(sub, nn.MultiheadAttention):
                yield sub


def select_tower_parameters(blocks: Iterable[nn.Module], mode: str) -> list[nn.Parameter]:
    """Parameters of a tower's transformer blocks that ``mode`` trains.

    Args:
        blocks: the tower's residual blocks.
        mode: "none" (nothing), "qv" (query and value projection weights of every attention
            layer, not their biases) or "blocks" (every parameter of every block).
    """
    if mode not in TRAINABLE_CHOICES:
        raise ValueError(f"trainable mode {mode!r} is not one of {TRAINABLE_CHOICES}")
    blocks = list(blocks)
    if mode == "none":
        return []
    if mode == "blocks":
        return [p for block in blocks for p in block.parameters()]
    selected = []
    for attn in _attention_layers(blocks):
        if attn._qkv_same_embed_dim:
            raise RuntimeError("query/value-only training needs split attention weights: call split_all_attention_ first")
        selected += [attn.q_proj_weight, attn.v_proj_weight]
    return selected
