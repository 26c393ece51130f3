"""Backbones: open_clip ViT dense features (CLIP) and DINOv2 (timm)."""
from .clip_attention import pack_split_qkv_state_dict, split_all_attention_, split_packed_qkv_
from .clip_vit import DENSE_LAST_BLOCK_MODES, OpenCLIPBackbone, resize_clip_position_embedding
from .dinov2 import build_dinov2
from .dinov2_attention import DINOv2AttentionBackbone, cls_patch_attention_logits
from .open_clip_loading import build_open_clip_model

__all__ = [
    "OpenCLIPBackbone",
    "DENSE_LAST_BLOCK_MODES",
    "resize_clip_position_embedding",
    "build_open_clip_model",
    "build_dinov2",
    "DINOv2AttentionBackbone",
    "cls_patch_attention_logits",
    "split_packed_qkv_",
    "split_all_attention_",
    "pack_split_qkv_state_dict",
]
