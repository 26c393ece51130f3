"""``CATSegHead``: CAT-Seg's head as a detectron2 semantic-segmentation head.

It holds the two decoder-guidance upsamplers that the released checkpoints keep at top level
(``upsample1``: ConvTranspose2d k2 s2 -> 256 channels at 2h x 2w, from the shallower tapped CLIP
block; ``upsample2``: k4 s4 -> 128 channels at 4h x 4w, from the deeper one) and the aggregator
(``transformer``, a :class:`CATSegAggregator`). CLIP itself and the text encoder live in the
meta-architecture.

Released checkpoint key -> key in this head's state dict (:func:`released_key_to_head_key`):

* ``sem_seg_head.predictor.transformer.<rest>`` -> ``transformer.<rest>``
* ``upsample1.<rest>`` / ``upsample2.<rest>`` -> unchanged
* ``sem_seg_head.predictor.clip_model.*`` -> not in the head (None)

With the head at ``sem_seg_head`` of a meta-architecture, prefix the result with
``sem_seg_head.`` (e.g. ``upsample1.weight`` -> ``sem_seg_head.upsample1.weight``).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
import torch.nn as nn
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from .catseg_aggregator import CATSegAggregator

__all__ = ["CATSegHead", "build_catseg_aggregator", "released_key_to_head_key"]

_RELEASED_AGGREGATOR_PREFIX = "sem_seg_head.predictor.transformer."
_RELEASED_UPSAMPLERS = ("upsample1.", "upsample2.")


def released_key_to_head_key(key: str) -> Optional[str]:
    """Key of a released CAT-Seg checkpoint -> key relative to :class:`CATSegHead` (None: not
    part of the head, e.g. CLIP under ``sem_seg_head.predictor.clip_model.``)."""
    if key.startswith(_RELEASED_AGGREGATOR_PREFIX):
        return "transformer." + key[len(_RELEASED_AGGREGATOR_PREFIX) :]
    if key.startswith(_RELEASED_UPSAMPLERS):
        return key
    return None


def build_catseg_aggregator(cfg, *, appearance_guidance_dim: int, text_guidance_dim: int) -> CATSegAggregator:
    """A :class:`CATSegAggregator` from ``cfg.MODEL.CATSEG`` and the CLIP feature sizes."""
    c = cfg.MODEL.CATSEG
    return CATSegAggregator(
        appearance_guidance_dim=appearance_guidance_dim,
        text_guidance_dim=text_guidance_dim,
        hidden_dim=c.HIDDEN_DIM,
        num_layers=c.NUM_LAYERS,
        num_heads=c.NUM_HEADS,
        window_size=c.WINDOW_SIZE,
        mlp_ratio=c.MLP_RATIO,
        feature_resolution=tuple(c.FEATURE_RESOLUTION),
        appearance_guidance_proj_dim=c.APPEARANCE_GUIDANCE_PROJ_DIM,
        text_guidance_proj_dim=c.TEXT_GUIDANCE_PROJ_DIM,
        decoder_guidance_dims=tuple(c.DECODER_GUIDANCE_DIMS),
        decoder_guidance_proj_dims=tuple(c.DECODER_GUIDANCE_PROJ_DIMS),
        decoder_dims=tuple(c.DECODER_DIMS),
        prompt_channels=c.PROMPT_CHANNELS,
        pooling_size=tuple(c.POOLING_SIZES),
        test_pooling_size=tuple(c.TEST_POOLING_SIZES),
        class_token_budget=c.CLASS_TOKEN_BUDGET,
        pruned_logit=c.PRUNED_LOGIT,
        cpu_chunk_maps=c.CPU_CHUNK_MAPS,
        cpu_chunk_rows=c.CPU_CHUNK_ROWS,
    )


@SEM_SEG_HEADS_REGISTRY.register()
class CATSegHead(nn.Module):
    """Decoder-guidance upsamplers + CAT-Seg aggregator.

    ``forward(features, text_features)`` takes the CLIP backbone's feature dict (``in_features``
    = [dense, shallow tap, deep tap], e.g. ``["dense", "layer3", "layer7"]`` for ViT-B/16) and
    class embeddings (T x P x C or B x T x P x C) and returns B x T x 4h x 4w logits.
    """

    @configurable
    def __init__(
        self,
        *,
        transformer: CATSegAggregator,
        intermediate_dim: int,
        in_features: Sequence[str] = ("dense", "layer3", "layer7"),
    ):
        """
        Args:
            transformer: the aggregator.
            intermediate_dim: channels of the tapped CLIP blocks (width: 768 ViT-B, 1024 ViT-L).
            in_features: feature-dict keys of the dense features, the shallower tap (to
                ``upsample1``, x2) and the deeper tap (to ``upsample2``, x4).
        """
        super().__init__()
        if len(in_features) != 3:
            raise ValueError(f"in_features must name [dense, shallow tap, deep tap], got {list(in_features)}")
        self.in_features = list(in_features)
        d1, d2 = (transformer.decoder_guidance_projection[i][0].in_channels for i in range(2))
        self.upsample1 = nn.ConvTranspose2d(intermediate_dim, d1, kernel_size=2, stride=2)
        self.upsample2 = nn.ConvTranspose2d(intermediate_dim, d2, kernel_size=4, stride=4)
        self.transformer = transformer

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[Mapping[str, ShapeSpec]]):
        taps = sorted(cfg.MODEL.CLIP.INTERMEDIATE_LAYERS)
        if len(taps) != 2:
            raise ValueError(f"CAT-Seg needs two MODEL.CLIP.INTERMEDIATE_LAYERS (decoder guidance), got {taps}")
        in_features = ["dense", f"layer{taps[0]}", f"layer{taps[1]}"]
        c = cfg.MODEL.CATSEG

        def size(configured: int, key: str, what: str) -> int:
            if configured > 0:
                return configured
            if not input_shape or key not in input_shape or input_shape[key].channels is None:
                raise ValueError(f"MODEL.CATSEG.{what} is 0 and the backbone's output shape has no {key!r}")
            return input_shape[key].channels

        embed_dim_text = size(c.TEXT_GUIDANCE_DIM, "dense", "TEXT_GUIDANCE_DIM")
        embed_dim_image = size(c.APPEARANCE_GUIDANCE_DIM, "dense", "APPEARANCE_GUIDANCE_DIM")
        width = size(c.INTERMEDIATE_DIM, in_features[1], "INTERMEDIATE_DIM")
        return {
            "transformer": build_catseg_aggregator(
                cfg, appearance_guidance_dim=embed_dim_image, text_guidance_dim=embed_dim_text
            ),
            "intermediate_dim": width,
            "in_features": in_features,
        }

    def decoder_guidance(self, shallow: torch.Tensor, deep: torch.Tensor) -> list[torch.Tensor]:
        """B x width x h x w taps -> [B x 256 x 2h x 2w, B x 128 x 4h x 4w]."""
        return [self.upsample1(shallow), self.upsample2(deep)]

    def forward(self, features: Mapping[str, torch.Tensor], text_features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: ``in_features[0]`` -> B x C x h x w dense CLIP features (not normalised);
                ``in_features[1:]`` -> B x width x h x w residual-stream outputs of the shallower
                and the deeper tapped block.
            text_features: T x P x C or B x T x P x C class embeddings (any norm).
        Returns:
            B x T x 4h x 4w logits.
        """
        dense, shallow, deep = (features[k] for k in self.in_features)
        return self.transformer(dense, text_features, self.decoder_guidance(shallow, deep))
