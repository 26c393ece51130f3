"""Registered meta-architectures."""
from .maskclip_baseline import MaskCLIPBaseline, cosine_cost_volume

__all__ = ["MaskCLIPBaseline", "cosine_cost_volume"]
