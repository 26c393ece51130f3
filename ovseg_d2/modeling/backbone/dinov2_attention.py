"""Frozen DINOv2 (timm, with registers) exposing what Talk2DINO reads from it.

Two outputs per image (``shared/spec/talk2dino.md``, "Dense features and attention"):

* ``patch_tokens`` [B, N, D]: the last layer's tokens after the final LayerNorm, CLS and the
  register tokens removed, row-major over the h x w patch grid (N = h * w);
* ``cls_attention_logits`` [B, heads, N]: the last block's pre-softmax CLS -> patch attention,
  ``(q_cls * head_dim^-0.5) . k_p`` per head, over patch keys only (CLS and registers excluded).

The logits come from a forward hook on ``blocks[-1].attn.qkv`` (the Linear's output, bias
included), so the block itself keeps running timm's fused attention and nothing the fused kernel
computes (the full N x N attention) is materialised: only the CLS query row against the patch
keys, B x heads x N.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from detectron2.config import configurable
from timm.models.vision_transformer import VisionTransformer

from .dinov2 import build_dinov2

__all__ = ["DINOv2AttentionBackbone", "cls_patch_attention_logits"]


def cls_patch_attention_logits(qkv: torch.Tensor, *, num_heads: int, num_prefix_tokens: int) -> torch.Tensor:
    """CLS -> patch attention logits from a ViT block's fused qkv projection.

    Args:
        qkv: [B, T, 3 * D] output of ``attn.qkv`` (tokens: CLS, registers, then patches), laid out
            as timm splits it: (3, heads, head_dim) per token.
        num_heads: attention heads; head_dim = D / heads.
        num_prefix_tokens: CLS + register tokens before the patches (5 for the ``reg4`` models).
    Returns:
        [B, heads, T - num_prefix_tokens]: ``(q_cls * head_dim**-0.5) . k_patch``, no softmax.
    """
    b, t, three_d = qkv.shape
    head_dim = three_d // (3 * num_heads)
    qkv = qkv.view(b, t, 3, num_heads, head_dim)
    q_cls = qkv[:, 0, 0] * head_dim**-0.5  # B x heads x head_dim
    k_patch = qkv[:, num_prefix_tokens:, 1]  # B x N x heads x head_dim
    return torch.einsum("bhd,bnhd->bhn", q_cls, k_patch)


class DINOv2AttentionBackbone(nn.Module):
    """A frozen timm DINOv2 ViT returning normalised patch tokens and CLS attention logits.

    ``forward(images)`` takes normalised RGB images [B, 3, H, W] (H, W multiples of the patch
    size; :meth:`normalize` maps 0-255 RGB to that) and returns
    ``{"patch_tokens": [B, h*w, D], "cls_attention_logits": [B, heads, h*w], "grid": (h, w)}``.
    All parameters are frozen and the ViT stays in eval mode whatever ``train()`` is called with.
    """

    @configurable
    def __init__(self, *, vit: VisionTransformer, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        super().__init__()
        attn = vit.blocks[-1].attn
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            raise NotImplementedError(
                "DINOv2AttentionBackbone reads attention logits straight from the qkv projection; this "
                f"model's last block normalises q/k ({type(attn.q_norm).__name__}), which DINOv2 does not."
            )
        self.vit = vit
        self.num_heads = attn.num_heads
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.embed_dim = vit.embed_dim
        self.patch_size = tuple(vit.patch_embed.patch_size)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        for p in self.vit.parameters():
            p.requires_grad_(False)
        self.vit.eval()
        self._captured: list[torch.Tensor] = []
        attn.qkv.register_forward_hook(self._capture_logits)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DINOV2
        overrides = {"embed_dim": d.EMBED_DIM, "depth": d.DEPTH, "num_heads": d.NUM_HEADS}
        vit = build_dinov2(
            d.MODEL_NAME,
            d.PRETRAINED,
            img_size=d.IMAGE_SIZE,
            model_kwargs={k: v for k, v in overrides.items() if v > 0},
        )
        return {"vit": vit, "pixel_mean": d.PIXEL_MEAN, "pixel_std": d.PIXEL_STD}

    def train(self, mode: bool = True):
        super().train(mode)
        self.vit.eval()  # frozen: never dropout / drop-path
        return self

    def _capture_logits(self, module, inputs, output) -> None:
        self._captured.append(
            cls_patch_attention_logits(output, num_heads=self.num_heads, num_prefix_tokens=self.num_prefix_tokens)
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB 0-255 images [B, 3, H, W] -> ImageNet-normalised float."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> dict:
        ph, pw = self.patch_size
        if images.shape[-2] % ph or images.shape[-1] % pw:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {self.patch_size}")
        grid = (images.shape[-2] // ph, images.shape[-1] // pw)
        self._captured.clear()
        try:
            tokens = self.vit.forward_features(images)  # B x (prefix + h*w) x D, final norm applied
            (logits,) = self._captured
        finally:
            self._captured.clear()
        return {
            "patch_tokens": tokens[:, self.num_prefix_tokens :],
            "cls_attention_logits": logits,
            "grid": grid,
        }
