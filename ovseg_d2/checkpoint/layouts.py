"""Recognise and convert released checkpoint layouts to ovseg_d2's module names.

``MODEL.WEIGHTS <released file>`` must load with no manual conversion. Each layout knows how to
recognise itself from the keys and how to rename them; the checkpointer logs which layout it
recognised and then loads strictly (missing or unexpected keys are an error listing them).

* ``catseg_release``: CAT-Seg's released ``.pth`` files. CLIP lives under
  ``sem_seg_head.predictor.clip_model.`` with attention weights already split into
  ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` (+ packed ``in_proj_bias``), which is
  exactly OpenCLIPBackbone's layout; the aggregator under ``sem_seg_head.predictor.transformer.``;
  the decoder-guidance projections ``upsample1``/``upsample2`` at top level. Files whose CLIP
  attention is packed (``in_proj_weight``) are split on the fly.
* ``ovseg``: this package's own checkpoints (no renaming).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

__all__ = ["CheckpointLayout", "CHECKPOINT_LAYOUTS", "detect_layout", "convert_catseg_release", "split_packed_in_proj"]

CATSEG_PREFIXES = (
    ("sem_seg_head.predictor.clip_model.", "backbone.clip."),
    ("sem_seg_head.predictor.transformer.", "sem_seg_head.transformer."),
    ("upsample1.", "sem_seg_head.upsample1."),
    ("upsample2.", "sem_seg_head.upsample2."),
)


def split_packed_in_proj(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``*.in_proj_weight`` [3D, D] -> ``*.q_proj_weight``, ``*.k_proj_weight``, ``*.v_proj_weight``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".in_proj_weight"):
            prefix = key[: -len("in_proj_weight")]
            q, k, v = value.chunk(3, dim=0)
            out[prefix + "q_proj_weight"], out[prefix + "k_proj_weight"], out[prefix + "v_proj_weight"] = q, k, v
        else:
            out[key] = value
    return out


def convert_catseg_release(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a CAT-Seg release state dict to CATSeg's names; unknown prefixes are kept as is
    (so that strict loading reports them)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for old, new in CATSEG_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return split_packed_in_proj(renamed)


@dataclass(frozen=True)
class CheckpointLayout:
    name: str
    description: str
    matches: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Mapping[str, torch.Tensor]], dict]


CHECKPOINT_LAYOUTS: tuple[CheckpointLayout, ...] = (
    CheckpointLayout(
        "catseg_release",
        "CAT-Seg released checkpoint (sem_seg_head.predictor.{clip_model,transformer}, upsample1/2)",
        lambda sd: any(k.startswith("sem_seg_head.predictor.") for k in sd),
        convert_catseg_release,
    ),
)


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> CheckpointLayout | None:
    """The first layout that recognises ``state_dict``, or None (ovseg_d2's own layout)."""
    for layout in CHECKPOINT_LAYOUTS:
        if layout.matches(state_dict):
            return layout
    return None
