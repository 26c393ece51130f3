"""Export an OpenCLIPBackbone's CLIP as a plain open_clip checkpoint, optionally weight-ensembled.

``OpenCLIPBackbone`` holds attention weights split into ``q/k/v_proj_weight``; open_clip (and
therefore ``MODEL.CLIP.PRETRAINED`` of every method) expects the packed ``in_proj_weight``. The
exported state dict is the model's own ``state_dict()`` re-packed, so that
``open_clip.create_model(name, pretrained=file)`` loads it strictly. CLIPSelf exports
``alpha * student + (1 - alpha) * teacher`` for the image tower (text tower unchanged).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from .clip_attention import pack_split_qkv_state_dict

__all__ = ["open_clip_state_dict", "ensemble_state_dicts", "save_open_clip_checkpoint"]

VISUAL_PREFIX = "visual."


def open_clip_state_dict(clip_model: nn.Module) -> dict[str, torch.Tensor]:
    """The open_clip model's weights in open_clip's own key layout (packed attention), detached
    CPU copies."""
    state = {k: v.detach().cpu().clone() for k, v in clip_model.state_dict().items()}
    return pack_split_qkv_state_dict(state)


def ensemble_state_dicts(
    student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``alpha * student + (1 - alpha) * teacher`` for every floating tensor; others from the student.

    Both must have the same keys and shapes (a mismatch is an error naming the keys).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"ensembling weight alpha must lie in [0, 1], got {alpha}")
    if set(student) != set(teacher):
        only_s, only_t = sorted(set(student) - set(teacher)), sorted(set(teacher) - set(student))
        raise KeyError(f"student and teacher weights differ in keys: only student {only_s[:5]}, only teacher {only_t[:5]}")
    out = {}
    for key, s in student.items():
        t = teacher[key]
        if s.shape != t.shape:
            raise ValueError(f"{key}: student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
        out[key] = (alpha * s.double() + (1.0 - alpha) * t.double()).to(s.dtype) if s.is_floating_point() else s.clone()
    return out


def save_open_clip_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    """Write a bare state dict (what open_clip's ``load_checkpoint`` reads) atomically."""
    from ...checkpoint import atomic_write

    atomic_write(path, lambda f: torch.save(dict(state_dict), f))
