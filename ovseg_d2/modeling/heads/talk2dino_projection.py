"""Talk2DINO's ψ: the projection of CLIP text features into DINOv2's patch-token space.

ψ is the only trained part of Talk2DINO: Linear(512 -> D_v) -> tanh -> Linear(D_v -> D_v), with
biases (D_v = 768 for ViT-B, 1024 for ViT-L; about 0.98 M parameters for ViT-B). Its
parameter names are those of the released weights (``linear_layer.*``, ``hidden_layers.0.*``)
so that a released ``.pth`` loads as it is; older files name the second layer
``linear_layer2.*`` and are renamed on load (``rename_legacy_projection_keys``).

Other projects build it by name from ``TALK2DINO_PROJECTION_REGISTRY``
(``MODEL.TALK2DINO.PROJECTION_NAME``) with :func:`build_talk2dino_projection`.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
from detectron2.config import configurable
from detectron2.utils.registry import Registry

__all__ = [
    "TALK2DINO_PROJECTION_REGISTRY",
    "Talk2DINOProjection",
    "build_talk2dino_projection",
    "rename_legacy_projection_keys",
    "PROJECTION_KEYS",
    "LEGACY_KEY_RENAMES",
]

TALK2DINO_PROJECTION_REGISTRY = Registry("TALK2DINO_PROJECTION")
TALK2DINO_PROJECTION_REGISTRY.__doc__ = """Text -> DINOv2-space projections (Talk2DINO's ψ), built with
``build_talk2dino_projection(cfg, text_dim, vision_dim)``; each class takes ``text_dim``/``vision_dim``."""

#: parameter names of ψ in the released files (current naming)
PROJECTION_KEYS = ("linear_layer.weight", "linear_layer.bias", "hidden_layers.0.weight", "hidden_layers.0.bias")
#: (old prefix, new prefix) pairs of earlier releases
LEGACY_KEY_RENAMES = (("linear_layer2.", "hidden_layers.0."),)


def rename_legacy_projection_keys(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """``<prefix>linear_layer2.*`` -> ``<prefix>hidden_layers.0.*``; every other key unchanged."""
    renamed = {}
    for key, value in state_dict.items():
        for old, new in LEGACY_KEY_RENAMES:
            if key.startswith(prefix + old):
                key = prefix + new + key[len(prefix + old) :]
                break
        renamed[key] = value
    return renamed


@TALK2DINO_PROJECTION_REGISTRY.register()
class Talk2DINOProjection(nn.Module):
    """ψ: [..., text_dim] raw CLIP text features -> [..., vision_dim] (not normalised).

    ``load_state_dict`` accepts the legacy ``linear_layer2.*`` names too.
    """

    @configurable
    def __init__(self, *, text_dim: int, vision_dim: int):
        super().__init__()
        self.linear_layer = nn.Linear(text_dim, vision_dim)
        self.act = nn.Tanh()
        self.hidden_layers = nn.ModuleList([nn.Linear(vision_dim, vision_dim)])
        self.register_load_state_dict_pre_hook(self._rename_legacy_keys)

    @classmethod
    def from_config(cls, cfg, text_dim: int, vision_dim: int):
        return {"text_dim": text_dim, "vision_dim": vision_dim}

    @staticmethod
    def _rename_legacy_keys(module, state_dict, prefix, *args) -> None:
        renamed = rename_legacy_projection_keys(state_dict, prefix)
        state_dict.clear()
        state_dict.update(renamed)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.act(self.linear_layer(text))
        for layer in self.hidden_layers:
            x = layer(x)
        return x


def build_talk2dino_projection(cfg, text_dim: int, vision_dim: int) -> nn.Module:
    """The ψ named by ``MODEL.TALK2DINO.PROJECTION_NAME`` for these dimensions."""
    name = cfg.MODEL.TALK2DINO.PROJECTION_NAME
    if name not in TALK2DINO_PROJECTION_REGISTRY:
        raise KeyError(
            f"MODEL.TALK2DINO.PROJECTION_NAME={name!r} is not registered; known: "
            f"{sorted(k for k, _ in TALK2DINO_PROJECTION_REGISTRY)}"
        )
    return TALK2DINO_PROJECTION_REGISTRY.get(name)(cfg, text_dim, vision_dim)
