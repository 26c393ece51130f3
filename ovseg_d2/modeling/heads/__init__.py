"""Segmentation heads (importing registers them in detectron2's SEM_SEG_HEADS_REGISTRY) and
Talk2DINO's text projection (TALK2DINO_PROJECTION_REGISTRY)."""
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
from .talk2dino_projection import TALK2DINO_PROJECTION_REGISTRY, Talk2DINOProjection, build_talk2dino_projection

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
    "TALK2DINO_PROJECTION_REGISTRY",
    "Talk2DINOProjection",
    "build_talk2dino_projection",
]
