"""Registered meta-architectures."""
from .catseg import CATSeg
from .clipself import CLIPSelf
from .maskclip_baseline import MaskCLIPBaseline, cosine_cost_volume
from .talk2dino import Talk2DINO

__all__ = ["CATSeg", "CLIPSelf", "MaskCLIPBaseline", "Talk2DINO", "cosine_cost_volume"]
