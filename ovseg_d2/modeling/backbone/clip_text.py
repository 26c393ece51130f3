"""CLIP's text tower alone (open_clip), frozen: Talk2DINO's text encoder.

The model named by ``MODEL.CLIP.MODEL_NAME`` is built and loaded from ``MODEL.CLIP.PRETRAINED``
as for the other methods (``build_open_clip_model``: QuickGELU for OpenAI weights, local files,
random init); its image tower is then dropped, so it costs no memory and never appears in
checkpoints. ``encode_text`` gives ``ln_final`` at the end token times ``text_projection``,
not normalised (512-d for ViT-B/16). It plugs into ``build_prompt_text_encoder`` like
``OpenCLIPBackbone``.
"""
from __future__ import annotations

import open_clip
import torch
import torch.nn as nn
from detectron2.config import configurable

from .clip_text_trim import encode_text_trimmed
from .open_clip_loading import build_open_clip_model

__all__ = ["CLIPTextTower"]


class CLIPTextTower(nn.Module):
    """Frozen open_clip text tower. ``encode_text(tokens [N, L]) -> [N, embed_dim]``."""

    @configurable
    def __init__(self, *, clip_model: nn.Module, embed_dim: int):
        super().__init__()
        if hasattr(clip_model, "visual"):
            clip_model.visual = None  # the image tower is not used
        self.clip = clip_model
        self.embed_dim = embed_dim
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()

    @classmethod
    def from_config(cls, cfg):
        clip = build_open_clip_model(cfg.MODEL.CLIP.MODEL_NAME, cfg.MODEL.CLIP.PRETRAINED, force_quick_gelu=cfg.MODEL.CLIP.FORCE_QUICK_GELU)
        return {"clip_model": clip, "embed_dim": open_clip.get_model_config(cfg.MODEL.CLIP.MODEL_NAME)["embed_dim"]}

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen
        return self

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N, L] -> raw text features [N, embed_dim] (not normalised)."""
        return self.clip.encode_text(tokens, normalize=False)

    def encode_prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        """``encode_text`` over each prompt's own tokens (``encode_text_trimmed``): the same
        features for a fraction of the work; used for class-name prompts (``build_prompt_text_encoder``)."""
        return encode_text_trimmed(self.clip, tokens)

    def text_parameters(self) -> list[nn.Parameter]:
        """Every parameter text features depend on (for the text-embedding cache fingerprints)."""
        return list(self.clip.parameters())
