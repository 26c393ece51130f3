"""CAT-Seg's cost aggregator: cost volume -> spatial/class aggregation -> upsampling decoder.

``CATSegAggregator`` is what the released checkpoints hold under
``sem_seg_head.predictor.transformer.``; its module and parameter names match them, so that
subset loads with ``load_state_dict(strict=True)`` (see ``catseg_head.py`` for the key mapping).

Data flow for B images, T classes, P prompts, an h x w token grid (24 x 24 in the released
models) and hidden dim 128:

1. Cost: cosine of the L2-normalised dense features with the (per-prompt normalised) class
   embeddings, B x T x P x h x w. With T > ``class_token_budget`` (256) each image keeps its
   budget of classes with the highest maximum cost (over prompts and positions); the others
   get ``pruned_logit`` (-100) at the end. Different images may keep different classes.
2. ``conv1`` (P -> 128, 7x7) per class; appearance guidance ``guidance_projection`` (Conv3x3 +
   ReLU) of the raw dense features; text guidance ``text_guidance_projection`` (Linear + ReLU)
   of the class embeddings averaged over prompts and renormalised.
3. ``layers``: spatial Swin pair then class linear attention (see ``catseg_layers.py``).
4. Decoder: ``decoder1``/``decoder2`` (ConvTranspose x2, concat projected decoder guidance,
   DoubleConv with GroupNorm), ``head`` Conv3x3 -> 1: B x T x 4h x 4w logits.

CPU inference runs steps 3 and 4 chunk by chunk (``cpu_chunk_maps`` class maps, or
``cpu_chunk_rows`` grid rows for the class attention, of one image at a time); the result is the
same, see ``catseg_layers.py``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .catseg_layers import AggregatorLayer, chunked_on_cpu, map_in_chunks

__all__ = ["CATSegAggregator", "DoubleConv", "UpBlock", "DECODER_CHANNELS_PER_GROUP"]

# GroupNorm in the decoder uses channels // 16 groups (reference; not visible in the checkpoint
# shapes, which only show per-channel affine parameters and no running statistics).
DECODER_CHANNELS_PER_GROUP = 16


class DoubleConv(nn.Module):
    """(Conv3x3 without bias -> GroupNorm -> ReLU) x 2; names ``double_conv.{0,1,3,4}``."""

    def __init__(self, in_channels: int, out_channels: int, channels_per_group: int = DECODER_CHANNELS_PER_GROUP):
        super().__init__()
        groups = max(out_channels // channels_per_group, 1)
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: (B*T) x Cx x H x W (image-major: the T maps of image 0 first).
            guidance: B x Cg x H x W, or None. The first convolution sees concat(x, guidance)
                along channels, the guidance repeated for each of an image's T maps; it is
                convolved once per image instead (same result up to summation order).
        """
        if guidance is None:
            return self.double_conv(x)
        conv = self.double_conv[0]
        cx = x.shape[1]
        y = F.conv2d(x, conv.weight[:, :cx], padding=conv.padding)
        g = F.conv2d(guidance, conv.weight[:, cx:], padding=conv.padding)
        y = (y.unflatten(0, (guidance.shape[0], -1)) + g.unsqueeze(1)).flatten(0, 1)
        return self.double_conv[1:](y)


class UpBlock(nn.Module):
    """ConvTranspose2d(in -> in - guidance, k2 s2), concat guidance, DoubleConv(in -> out)."""

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B*T) x Cin x H x W; guidance: B x Cg x 2H x 2W or None -> (B*T) x Cout x 2H x 2W."""
        return self.conv(self.up(x), guidance)


class CATSegAggregator(nn.Module):
    """CAT-Seg cost aggregation (everything under ``sem_seg_head.predictor.transformer.``).

    ``forward(image_features, text_features, decoder_guidance)`` -> B x T x 4h x 4w logits; see
    its docstring for shapes. The class-attention pooling follows ``self.training``:
    ``pooling_size`` in training (2x2 in the released recipe), ``test_pooling_size`` at
    evaluation (1x1 for the published numbers).
    """

    def __init__(
        self,
        *,
        appearance_guidance_dim: int = 512,
        text_guidance_dim: int = 512,
        hidden_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        feature_resolution: Sequence[int] = (24, 24),
        appearance_guidance_proj_dim: int = 128,
        text_guidance_proj_dim: int = 128,
        decoder_guidance_dims: Sequence[int] = (256, 128),
        decoder_guidance_proj_dims: Sequence[int] = (32, 16),
        decoder_dims: Sequence[int] = (64, 32),
        prompt_channels: int = 1,
        pooling_size: Sequence[int] = (2, 2),
        test_pooling_size: Sequence[int] = (1, 1),
        class_token_budget: int = 256,
        pruned_logit: float = -100.0,
        cpu_chunk_maps: int = 8,
        cpu_chunk_rows: int = 2,
    ):
        """
        Args:
            appearance_guidance_dim: channels of the dense CLIP features (512 ViT-B, 768 ViT-L);
                0 disables appearance guidance.
            text_guidance_dim: size of the class embeddings (512 ViT-B, 768 ViT-L); 0 disables
                text guidance.
            hidden_dim, num_layers, num_heads, window_size, mlp_ratio: aggregator sizes.
            feature_resolution: token grid the shifted-window masks are built for.
            *_proj_dim(s): projected guidance sizes.
            decoder_guidance_dims: channels of the two decoder guidance maps (after the head's
                ``upsample1``/``upsample2``); decoder_dims: outputs of the two decoder stages.
            prompt_channels: P, prompts per class in the cost volume (input channels of conv1).
            pooling_size / test_pooling_size: class-attention pooling in training / eval.
            class_token_budget: classes seen by the class attention (pad below, prune above);
                0 disables both (and creates no padding parameters).
            pruned_logit: logit given to classes pruned by the budget.
            cpu_chunk_maps: class maps of one image run through the spatial aggregation and the
                decoder at a time in CPU inference (0: all at once).
            cpu_chunk_rows: token-grid rows of one image run through the class aggregation at a
                time in CPU inference without pooling (0: all at once).
        """
        super().__init__()
        if len(decoder_guidance_dims) != 2 or len(decoder_guidance_proj_dims) != 2 or len(decoder_dims) != 2:
            raise ValueError("the CAT-Seg decoder has exactly two upsampling stages")
        for c_in, c_guid in zip((hidden_dim, decoder_dims[0]), decoder_guidance_proj_dims):
            if c_in <= c_guid:
                raise ValueError(f"a decoder stage with {c_in} input channels cannot hold {c_guid} guidance channels")
        self.class_token_budget = int(class_token_budget)
        self.pruned_logit = float(pruned_logit)
        self.prompt_channels = int(prompt_channels)
        self.cpu_chunk_maps = int(cpu_chunk_maps)

        app_dim = appearance_guidance_proj_dim if appearance_guidance_dim > 0 else 0
        text_dim = text_guidance_proj_dim if text_guidance_dim > 0 else 0
        self.layers = nn.ModuleList(
            AggregatorLayer(
                hidden_dim=hidden_dim,
                appearance_guidance_dim=app_dim,
                text_guidance_dim=text_dim,
                num_heads=num_heads,
                resolution=feature_resolution,
                window_size=window_size,
                pooling_size=pooling_size,
                test_pooling_size=test_pooling_size,
                pad_len=self.class_token_budget,
                mlp_ratio=mlp_ratio,
                cpu_chunk_maps=cpu_chunk_maps,
                cpu_chunk_rows=cpu_chunk_rows,
            )
            for _ in range(num_layers)
        )
        self.conv1 = nn.Conv2d(prompt_channels, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.guidance_projection = (
            nn.Sequential(nn.Conv2d(appearance_guidance_dim, app_dim, kernel_size=3, stride=1, padding=1), nn.ReLU())
            if app_dim
            else None
        )
        self.text_guidance_projection = (
            nn.Sequential(nn.Linear(text_guidance_dim, text_dim), nn.ReLU()) if text_dim else None
        )
        self.decoder_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, dp, kernel_size=3, stride=1, padding=1), nn.ReLU())
            for d, dp in zip(decoder_guidance_dims, decoder_guidance_proj_dims)
        )
        self.decoder1 = UpBlock(hidden_dim, decoder_dims[0], decoder_guidance_proj_dims[0])
        self.decoder2 = UpBlock(decoder_dims[0], decoder_dims[1], decoder_guidance_proj_dims[1])
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, stride=1, padding=1)

    # ------------------------------------------------------------------ pieces
    def _text_per_image(self, text_features: torch.Tensor, batch_size: int) -> torch.Tensor:
        """T x P x C or B x T x P x C (B may be 1) -> B x T x P x C, unit norm per prompt."""
        if text_features.dim() == 3:
            text_features = text_features.unsqueeze(0)
        if text_features.dim() != 4:
            raise ValueError(f"text_features must be T x P x C or B x T x P x C, got {tuple(text_features.shape)}")
        if text_features.shape[0] not in (1, batch_size):
            raise ValueError(f"text_features batch {text_features.shape[0]} != image batch {batch_size}")
        if text_features.shape[2] != self.prompt_channels:
            raise ValueError(f"{text_features.shape[2]} prompts per class, the aggregator expects {self.prompt_channels}")
        return F.normalize(text_features, dim=-1).expand(batch_size, -1, -1, -1)

    @staticmethod
    def cost_volume(image_features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Cosines B x C x h x w (any norm) vs B x T x P x C (unit) -> B x T x P x h x w."""
        return torch.einsum("bchw,btpc->btphw", F.normalize(image_features, dim=1), text)

    def select_classes(self, cost: torch.Tensor) -> torch.Tensor:
        """Per image, indices (ascending) of the ``class_token_budget`` classes with the highest
        maximum cost over prompts and positions: B x budget."""
        score = cost.flatten(2).amax(dim=-1)  # B x T
        kept = score.topk(self.class_token_budget, dim=1, sorted=False).indices
        return kept.sort(dim=1).values

    def decode(self, x: torch.Tensor, decoder_guidance: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        """B x T x h x w x C aggregated cost -> B x T x 4h x 4w logits (chunked on CPU)."""
        if not chunked_on_cpu(self, x, self.cpu_chunk_maps):
            return self._decode(x, decoder_guidance)

        def decode_part(image: slice, classes: slice) -> torch.Tensor:
            guidance = [g[image] if g is not None else None for g in decoder_guidance]
            return self._decode(x[image, classes], guidance)

        return map_in_chunks(decode_part, x.shape[0], x.shape[1], self.cpu_chunk_maps)

    def _decode(self, x: torch.Tensor, decoder_guidance: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        B, T, h, w, C = x.shape
        x = x.permute(0, 1, 4, 2, 3).reshape(B * T, C, h, w)
        x = self.decoder1(x, decoder_guidance[0])
        x = self.decoder2(x, decoder_guidance[1])
        x = self.head(x)
        return x.reshape(B, T, x.shape[-2], x.shape[-1])

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        decoder_guidance: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """
        Args:
            image_features: B x C x h x w dense CLIP features, NOT normalised: projected as
                appearance guidance as they are, L2-normalised here for the cost volume.
            text_features: class embeddings per prompt, T x P x C (shared by the batch) or
                B x T x P x C (B may be 1), any norm: each prompt's embedding is L2-normalised
                here (the reference receives unit vectors), then the text guidance averages the
                P prompts and renormalises.
            decoder_guidance: [B x D1 x 2h x 2w, B x D2 x 4h x 4w] (D = decoder_guidance_dims,
                256 and 128), the CLIP intermediate features after the head's ``upsample1`` /
                ``upsample2``; projected here by ``decoder_guidance_projection``.
        Returns:
            B x T x 4h x 4w logits; with T > class_token_budget, classes an image did not keep
            hold ``pruned_logit`` exactly.
        """
        B = image_features.shape[0]
        text = self._text_per_image(text_features, B)
        cost = self.cost_volume(image_features, text)
        num_classes = cost.shape[1]
        kept = None
        if self.class_token_budget > 0 and num_classes > self.class_token_budget:
            kept = self.select_classes(cost)
            cost = torch.gather(cost, 1, kept[:, :, None, None, None].expand(-1, -1, *cost.shape[2:]))
            text = torch.gather(text, 1, kept[:, :, None, None].expand(-1, -1, *text.shape[2:]))
        T, h, w = cost.shape[1], cost.shape[-2], cost.shape[-1]

        x = self.conv1(cost.flatten(0, 1))  # (B*T) x hidden x h x w
        x = x.reshape(B, T, -1, h, w).permute(0, 1, 3, 4, 2)  # B x T x h x w x hidden

        appearance = None
        if self.guidance_projection is not None:
            appearance = self.guidance_projection(image_features).permute(0, 2, 3, 1)  # B x h x w x Ca
        text_guidance = None
        if self.text_guidance_projection is not None:
            text_guidance = self.text_guidance_projection(F.normalize(text.mean(dim=2), dim=-1))  # B x T x Ct
        if len(decoder_guidance) != 2:
            raise ValueError(f"expected 2 decoder guidance maps, got {len(decoder_guidance)}")
        projected = [proj(g) for proj, g in zip(self.decoder_guidance_projection, decoder_guidance)]

        for layer in self.layers:
            x = layer(x, appearance, text_guidance)
        logits = self.decode(x, projected)

        if kept is not None:
            full = logits.new_full((B, num_classes, *logits.shape[-2:]), self.pruned_logit)
            logits = full.scatter(1, kept[:, :, None, None].expand_as(logits), logits)
        return logits
