"""Segmentation heads (importing registers them in detectron2's SEM_SEG_HEADS_REGISTRY)."""
from .catseg_aggregator import CATSegAggregator, DoubleConv, UpBlock
from .catseg_head import CATSegHead, build_catseg_aggregator, released_key_to_head_key
from .catseg_layers import (
    AggregatorLayer,
    ClassAggregation,
    ClassLinearAttention,
    GuidedSwinBlock,
    GuidedWindowAttention,
    SpatialAggregation,
    shifted_window_mask,
)

__all__ = [
    "CATSegHead",
    "CATSegAggregator",
    "build_catseg_aggregator",
    "released_key_to_head_key",
    "AggregatorLayer",
    "SpatialAggregation",
    "GuidedSwinBlock",
    "GuidedWindowAttention",
    "ClassAggregation",
    "ClassLinearAttention",
    "DoubleConv",
    "UpBlock",
    "shifted_window_mask",
]
