"""Registered meta-architectures."""
from .catseg import CATSeg
from .maskclip_baseline import MaskCLIPBaseline, cosine_cost_volume

__all__ = ["CATSeg", "MaskCLIPBaseline", "cosine_cost_volume"]
