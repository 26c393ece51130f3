"""Registered meta-architectures."""
from .catseg import CATSeg
from .clipself import CLIPSelf
from .maskclip_baseline import MaskCLIPBaseline, cosine_cost_volume

__all__ = ["CATSeg", "CLIPSelf", "MaskCLIPBaseline", "cosine_cost_volume"]
