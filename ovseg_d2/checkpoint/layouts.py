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
* ``talk2dino_release``: Talk2DINO's released ψ files: a plain state dict holding only the
  projection (``linear_layer.*``, ``hidden_layers.0.*``, or the legacy ``linear_layer2.*``),
  which becomes the Talk2DINO meta-architecture's ``projection.*``. The layout covers only that
  module: the frozen DINOv2 and CLIP text tower keep the weights their own config keys loaded
  (``MODEL.DINOV2.PRETRAINED``, ``MODEL.CLIP.PRETRAINED``), and strictness applies to ψ's keys.
* ``ovseg``: this package's own checkpoints (no renaming).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..modeling.heads.talk2dino_projection import LEGACY_KEY_RENAMES, PROJECTION_KEYS, rename_legacy_projection_keys

__all__ = [
    "CheckpointLayout",
    "CHECKPOINT_LAYOUTS",
    "detect_layout",
    "convert_catseg_release",
    "convert_talk2dino_release",
    "split_packed_in_proj",
    "TALK2DINO_PROJECTION_PREFIX",
]

#: where Talk2DINO's meta-architecture keeps ψ
TALK2DINO_PROJECTION_PREFIX = "projection."
_TALK2DINO_RELEASE_KEYS = frozenset(PROJECTION_KEYS) | {
    old + key[len(new) :] for old, new in LEGACY_KEY_RENAMES for key in PROJECTION_KEYS if key.startswith(new)
}

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


def is_talk2dino_release(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """A non-empty state dict whose keys are all ψ keys (current or legacy names)."""
    return bool(state_dict) and set(state_dict) <= _TALK2DINO_RELEASE_KEYS


def convert_talk2dino_release(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released ψ keys (legacy ``linear_layer2.*`` renamed) under ``projection.``."""
    return {TALK2DINO_PROJECTION_PREFIX + k: v for k, v in rename_legacy_projection_keys(state_dict).items()}


@dataclass(frozen=True)
class CheckpointLayout:
    """A released layout: how to recognise it and rename it to the model's names.

    ``covers``: model-key prefixes the file provides (empty: the whole model). Strict loading
    checks only those keys; the model's other tensors keep their current values.
    """

    name: str
    description: str
    matches: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Mapping[str, torch.Tensor]], dict]
    covers: tuple[str, ...] = ()


CHECKPOINT_LAYOUTS: tuple[CheckpointLayout, ...] = (
    CheckpointLayout(
        "catseg_release",
        "CAT-Seg released checkpoint (sem_seg_head.predictor.{clip_model,transformer}, upsample1/2)",
        lambda sd: any(k.startswith("sem_seg_head.predictor.") for k in sd),
        convert_catseg_release,
    ),
    CheckpointLayout(
        "talk2dino_release",
        "Talk2DINO released projection psi (linear_layer.*, hidden_layers.0.* or legacy linear_layer2.*) -> projection.*",
        is_talk2dino_release,
        convert_talk2dino_release,
        covers=(TALK2DINO_PROJECTION_PREFIX,),
    ),
)


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> CheckpointLayout | None:
    """The first layout that recognises ``state_dict``, or None (ovseg_d2's own layout)."""
    for layout in CHECKPOINT_LAYOUTS:
        if layout.matches(state_dict):
            return layout
    return None
