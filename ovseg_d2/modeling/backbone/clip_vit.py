"""Dense features from an open_clip ViT: the CLIP part shared by the baseline, CAT-Seg and CLIPSelf.

A CLIP ViT is trained to align only its CLS token with text. Open-vocabulary segmenters read
per-token ("dense") features instead by running the last residual block without attention,
through its value path. The three methods differ only in that last block
(``MODEL.CLIP.DENSE_LAST_BLOCK``), with ``x`` the block input and
``u = ls_1(out_proj(v_proj(ln_1(x))))``:

* ``value`` (MaskCLIP): ``y = u``; no residual, no MLP.
* ``value_residual_cls`` (CAT-Seg, REQUIRED for its released weights): ``y = x[CLS] + u``,
  then ``y = y + ls_2(mlp(ln_2(y)))``.
* ``value_residual`` (CLIPSelf): ``y = x + u``, then the MLP residual.

``ln_post`` and the visual projection then apply to every token and the CLS row is dropped.
Position embeddings are resized to the input's token grid on every forward (bicubic,
``align_corners=False``, no antialias: what CAT-Seg's weights were trained with).

EVA02 (open_clip's ``EVA02-*`` models: a ``TimmModel`` wrapping timm's ``Eva``) takes the same
path through timm's own modules: ``patch_embed.proj``, CLS token, absolute position table
(resized as above), rotary embeddings built for the input's token grid, blocks ``0..N-2`` as
timm runs them, and the last block's value path ``u = gamma_1 * proj(norm(v_proj(norm1(x))))``
(``norm`` is EVA02-CLIP's inner attention LayerNorm; rotary embeddings act on queries and keys
only, so the value path needs none), then the MLP residual with ``norm2``/``gamma_2``, the
trunk's final ``norm`` and the projection head on every token.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .clip_attention import TRAINABLE_CHOICES, select_tower_parameters, split_all_attention_
from .clip_text_trim import encode_text_trimmed
from .open_clip_loading import build_open_clip_model

__all__ = ["OpenCLIPBackbone", "resize_clip_position_embedding", "DENSE_LAST_BLOCK_MODES"]

logger = logging.getLogger(__name__)

DENSE_LAST_BLOCK_MODES = ("value", "value_residual_cls", "value_residual")


def resize_clip_position_embedding(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a CLIP position table [1 + h0*w0, D] to [1 + h*w, D] for a ``grid`` = (h, w).

    The CLS row is kept; the square h0 x w0 table is resampled bicubically
    (``align_corners=False``, ``antialias=False``). Returned unchanged if already that size.
    """
    num_patches = pos_embed.shape[0] - 1
    side = int(round(math.sqrt(num_patches)))
    if side * side != num_patches:
        raise ValueError(f"position table of {num_patches} patch rows is not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    cls_row, table = pos_embed[:1], pos_embed[1:]
    table = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table.float(), size=grid, mode="bicubic", align_corners=False, antialias=False)
    table = table.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([cls_row, table], dim=0)


@BACKBONE_REGISTRY.register()
class OpenCLIPBackbone(Backbone):
    """An open_clip CLIP model (both towers) exposing dense image features and text encoding.

    ``forward(images)`` takes CLIP-normalised images B x 3 x H x W (H, W multiples of the patch
    size) and returns ``{"dense": B x C x h x w}`` (projected, not normalised; C = CLIP
    embedding size) plus ``{"layer<i>": B x width x h x w}`` for each tapped block ``i``
    (residual-stream output, no norm, CLS dropped).
    """

    @configurable
    def __init__(
        self,
        *,
        clip_model: nn.Module,
        dense_last_block: str,
        intermediate_layers: Sequence[int] = (),
        vision_trainable: str = "none",
        text_trainable: str = "none",
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ):
        super().__init__()
        if dense_last_block not in DENSE_LAST_BLOCK_MODES:
            raise ValueError(f"MODEL.CLIP.DENSE_LAST_BLOCK={dense_last_block!r} is not one of {DENSE_LAST_BLOCK_MODES}")
        self.clip = clip_model
        self.tower = "eva" if _is_timm_eva(getattr(clip_model, "visual", None)) else "vit"
        self._check_supported(clip_model)
        visual = clip_model.visual
        self.num_blocks = len(self.vision_blocks())
        bad = [i for i in intermediate_layers if not 0 <= i < self.num_blocks - 1]
        if bad:
            raise ValueError(
                f"MODEL.CLIP.INTERMEDIATE_LAYERS {bad} out of range: taps must index blocks 0..{self.num_blocks - 2} "
                "(the last block runs in dense mode)"
            )
        self.dense_last_block = dense_last_block
        self.intermediate_layers = tuple(sorted(intermediate_layers))
        self.patch_size = tuple(visual.trunk.patch_embed.patch_size if self.tower == "eva" else visual.patch_size)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        split_all_attention_(clip_model)
        self._set_trainable(vision_trainable, text_trainable)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        clip = build_open_clip_model(
            cfg.MODEL.CLIP.MODEL_NAME, cfg.MODEL.CLIP.PRETRAINED, force_quick_gelu=cfg.MODEL.CLIP.FORCE_QUICK_GELU
        )
        return {
            "clip_model": clip,
            "dense_last_block": cfg.MODEL.CLIP.DENSE_LAST_BLOCK,
            "intermediate_layers": list(cfg.MODEL.CLIP.INTERMEDIATE_LAYERS),
            "vision_trainable": cfg.MODEL.CLIP.VISION_TRAINABLE,
            "text_trainable": cfg.MODEL.CLIP.TEXT_TRAINABLE,
            "pixel_mean": cfg.MODEL.CLIP.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.CLIP.PIXEL_STD,
        }

    # ------------------------------------------------------------------ set-up
    def _check_supported(self, clip_model: nn.Module) -> None:
        visual = getattr(clip_model, "visual", None)
        if self.tower == "eva":
            _check_supported_eva(visual)
            return
        needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
        missing = [name for name in needed if not hasattr(visual, name)]
        if missing or getattr(visual, "attn_pool", None) is not None:
            raise NotImplementedError(
                f"OpenCLIPBackbone needs an open_clip VisionTransformer with a CLS token and no attentional "
                f"pooling (OpenAI/LAION ViT architectures); {type(visual).__name__} lacks {missing or ['-']} "
                "or uses attentional pooling."
            )

    def vision_blocks(self) -> nn.ModuleList:
        """Residual blocks of the image tower (open_clip ViT or timm EVA trunk)."""
        visual = self.clip.visual
        return visual.trunk.blocks if self.tower == "eva" else visual.transformer.resblocks

    def text_blocks(self) -> nn.ModuleList:
        """Residual blocks of the text tower (open_clip CLIP or CustomTextCLIP)."""
        text = getattr(self.clip, "text", None)
        return (text.transformer if text is not None else self.clip.transformer).resblocks

    def _unused_in_dense_path(self) -> set[int]:
        """ids of last-block parameters that the dense path never touches (kept frozen)."""
        last = self.vision_blocks()[-1]
        if self.tower == "eva":
            attn = last.attn
            unused = [p for m in (attn.q_proj, attn.k_proj, attn.q_norm, attn.k_norm) if m is not None for p in m.parameters()]
            unused += [attn.q_bias] if getattr(attn, "qkv", None) is not None and attn.q_bias is not None else []
            if self.dense_last_block == "value":
                unused += list(last.norm2.parameters()) + list(last.mlp.parameters())
                unused += [last.gamma_2] if last.gamma_2 is not None else []
            return {id(p) for p in unused}
        unused = [last.attn.q_proj_weight, last.attn.k_proj_weight]
        if self.dense_last_block == "value":
            unused += list(last.ln_2.parameters()) + list(last.mlp.parameters()) + list(last.ls_2.parameters())
        return {id(p) for p in unused}

    def _set_trainable(self, vision_mode: str, text_mode: str) -> None:
        for name, mode in (("VISION_TRAINABLE", vision_mode), ("TEXT_TRAINABLE", text_mode)):
            if mode not in TRAINABLE_CHOICES:
                raise ValueError(f"MODEL.CLIP.{name}={mode!r} is not one of {TRAINABLE_CHOICES}")
        for p in self.clip.parameters():
            p.requires_grad_(False)
        unused = self._unused_in_dense_path()
        blocks = self.vision_blocks()
        selected = _select_eva_parameters(blocks, vision_mode) if self.tower == "eva" else select_tower_parameters(blocks, vision_mode)
        for p in selected:
            if id(p) not in unused:
                p.requires_grad_(True)
        for p in select_tower_parameters(self.text_blocks(), text_mode):
            p.requires_grad_(True)
        n = sum(p.numel() for p in self.clip.parameters() if p.requires_grad)
        logger.info("CLIP trainable parameters: %.2f M (vision=%s, text=%s)", n / 1e6, vision_mode, text_mode)

    # ------------------------------------------------------------------ image side
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB 0-255 images B x 3 x H x W -> CLIP-normalised float."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def output_shape(self) -> dict[str, ShapeSpec]:
        visual = self.clip.visual
        if self.tower == "eva":
            width, channels = visual.trunk.embed_dim, _eva_output_channels(visual)
        else:
            width, channels = visual.conv1.out_channels, visual.proj.shape[1]
        shapes = {"dense": ShapeSpec(channels=channels, stride=self.patch_size[0])}
        for i in self.intermediate_layers:
            shapes[f"layer{i}"] = ShapeSpec(channels=width, stride=self.patch_size[0])
        return shapes

    def _tokens_to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """B x (1 + h*w) x C (CLS first) -> B x C x h x w, CLS dropped."""
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, grid[0], grid[1])

    def _dense_last_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The last residual block without attention; x: B x N x width (batch first)."""
        attn = block.attn
        dim = attn.embed_dim
        bias = attn.in_proj_bias
        value = F.linear(block.ln_1(x), attn.v_proj_weight, bias[2 * dim :] if bias is not None else None)
        update = block.ls_1(attn.out_proj(value))
        if self.dense_last_block == "value":
            return update
        residual = x[:, :1] if self.dense_last_block == "value_residual_cls" else x
        y = residual + update
        return y + block.ls_2(block.mlp(block.ln_2(y)))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        visual = self.clip.visual
        ph, pw = self.patch_size
        if images.shape[-2] % ph or images.shape[-1] % pw:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {self.patch_size}")
        grid = (images.shape[-2] // ph, images.shape[-1] // pw)
        if self.tower == "eva":
            return self._forward_eva(images, grid)
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # B x width x h x w
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + resize_clip_position_embedding(visual.positional_embedding, grid).to(x.dtype)
        x = visual.ln_pre(x)
        batch_first = getattr(visual.transformer, "batch_first", True)
        blocks = visual.transformer.resblocks
        outputs: dict[str, torch.Tensor] = {}
        for i, block in enumerate(blocks[:-1]):
            x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
            if i in self.intermediate_layers:
                outputs[f"layer{i}"] = self._tokens_to_map(x, grid)
        x = self._dense_last_block(blocks[-1], x)
        x = visual.ln_post(x) @ visual.proj
        outputs["dense"] = self._tokens_to_map(x, grid)
        return outputs

    def _dense_last_block_eva(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """timm ``EvaBlock`` without attention (a token attending to itself alone gets its value)."""
        attn = block.attn
        h = block.norm1(x)
        if getattr(attn, "qkv", None) is not None:  # fused q/k/v weights: the value rows
            dim = attn.qkv.weight.shape[0] // 3
            value = F.linear(h, attn.qkv.weight[2 * dim :], attn.v_bias)
        else:
            value = attn.v_proj(h)
        update = attn.proj_drop(attn.proj(attn.norm(value)))
        if block.gamma_1 is not None:
            update = block.gamma_1 * update
        if self.dense_last_block == "value":
            return update
        residual = x[:, :1] if self.dense_last_block == "value_residual_cls" else x
        y = residual + block.drop_path1(update)
        mlp = block.mlp(block.norm2(y))
        if block.gamma_2 is not None:
            mlp = block.gamma_2 * mlp
        return y + block.drop_path2(mlp)

    def _forward_eva(self, images: torch.Tensor, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        visual = self.clip.visual
        trunk = visual.trunk
        x = trunk.patch_embed.proj(images.to(trunk.patch_embed.proj.weight.dtype))  # B x width x h x w
        x = trunk.patch_embed.norm(x.flatten(2).transpose(1, 2))
        cls = trunk.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + resize_clip_position_embedding(trunk.pos_embed[0], grid).to(x.dtype)
        x = trunk.norm_pre(trunk.pos_drop(x))
        rope = _eva_rope_for_grid(trunk.rope, grid)
        outputs: dict[str, torch.Tensor] = {}
        for i, block in enumerate(trunk.blocks[:-1]):
            x = block(x, rope=rope)
            if i in self.intermediate_layers:
                outputs[f"layer{i}"] = self._tokens_to_map(x, grid)
        x = self._dense_last_block_eva(trunk.blocks[-1], x)
        x = trunk.head(trunk.head_drop(trunk.fc_norm(trunk.norm(x))))
        x = visual.head(x)
        outputs["dense"] = self._tokens_to_map(x, grid)
        return outputs

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Global CLIP image embedding B x C of CLIP-normalised images (not normalised)."""
        return self.clip.encode_image(images, normalize=False)

    # ------------------------------------------------------------------ text side
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings N x C (EOT token, ln_final, text_projection; not normalised)."""
        return self.clip.encode_text(tokens, normalize=False)

    def encode_prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        """``encode_text`` over each prompt's own tokens (``encode_text_trimmed``): the same
        features for a fraction of the work; used for class-name prompts (``build_prompt_text_encoder``)."""
        return encode_text_trimmed(self.clip, tokens)

    def text_parameters(self) -> list[nn.Parameter]:
        """Every parameter that text embeddings depend on (for cache fingerprints)."""
        visual_ids = {id(p) for p in self.clip.visual.parameters()}
        return [p for p in self.clip.parameters() if id(p) not in visual_ids]


# ---------------------------------------------------------------------- EVA02 (timm Eva trunk)
def _is_timm_eva(visual) -> bool:
    trunk = getattr(visual, "trunk", None)
    if trunk is None:
        return False
    try:
        from timm.models.eva import Eva
    except ImportError:  # pragma: no cover - open_clip's EVA models need timm anyway
        return False
    return isinstance(trunk, Eva)


def _check_supported_eva(visual: nn.Module) -> None:
    """The EVA variants the dense path is written for: EVA02-CLIP (CLS token, token pooling,
    absolute + axial rotary position embeddings, EvaBlock/EvaAttention, per-token head)."""
    from timm.models.eva import EvaAttention, EvaBlock

    trunk = visual.trunk
    problems = []
    if trunk.cls_token is None or getattr(trunk, "reg_token", None) is not None or trunk.num_prefix_tokens != 1:
        problems.append("exactly one prefix token (the CLS token) is needed")
    if trunk.pos_embed is None or getattr(trunk, "no_embed_class", False):
        problems.append("an absolute position table with a CLS row is needed")
    if getattr(trunk, "rope_mixed", False) or (trunk.rope is not None and not hasattr(trunk.rope, "get_embed")):
        problems.append("only axial ('cat') rotary embeddings are supported")
    if getattr(trunk, "patch_drop", None) is not None:
        problems.append("patch dropout is not supported")
    if getattr(trunk, "global_pool", "token") != "token":
        problems.append(f"global_pool {trunk.global_pool!r}: CLS-token pooling is needed")
    for i, block in enumerate(trunk.blocks):
        if type(block) is not EvaBlock or type(block.attn) is not EvaAttention or getattr(block.attn, "gate", None) is not None:
            problems.append(f"block {i} is {type(block).__name__}/{type(block.attn).__name__}: pre-norm EvaBlock with ungated EvaAttention needed")
            break
    if any(isinstance(m, nn.MultiheadAttention) or "Pool" in type(m).__name__ for m in visual.head.modules()):
        problems.append("the projection head pools (attention pooling): no per-token projection exists")
    if problems:
        raise NotImplementedError(f"OpenCLIPBackbone cannot take dense features from this EVA image tower: {'; '.join(problems)}")


def _eva_rope_for_grid(rope: nn.Module, grid: tuple[int, int]):
    """timm's rotary embedding for a ``grid`` token map (None when the model has none).

    A rope built with a fixed ``feat_shape`` (open_clip's EVA02: the model's own image size)
    caches one grid; it is rebuilt for ``grid`` with timm's ``update_feat_shape`` and restored
    afterwards, so the global ``encode_image`` path still sees its own grid.
    """
    if rope is None:
        return None
    shape = [int(grid[0]), int(grid[1])]
    original = getattr(rope, "feat_shape", None)
    if original is None:  # bands mode: any grid on request
        return rope.get_embed(shape=shape)
    original = [int(v) for v in original]
    if original == shape:
        return rope.get_embed()
    rope.update_feat_shape(shape)
    try:
        embed = rope.get_embed()
    finally:
        rope.update_feat_shape(original)
    if embed.shape[0] != shape[0] * shape[1]:
        raise RuntimeError(f"timm rope gave {embed.shape[0]} positions for a {shape} grid")
    return embed


def _eva_output_channels(visual: nn.Module) -> int:
    """Size of the projected embedding of an open_clip TimmModel (head Linear, else trunk width)."""
    out = visual.trunk.num_features if not isinstance(visual.trunk.head, nn.Linear) else visual.trunk.head.out_features
    for m in visual.head.modules():
        if isinstance(m, nn.Linear):
            out = m.out_features
    return out


def _select_eva_parameters(blocks, mode: str) -> list[nn.Parameter]:
    """``select_tower_parameters`` for timm EvaBlocks: ``qv`` = query/value projection weights."""
    if mode != "qv":
        return select_tower_parameters(blocks, mode)
    selected = []
    for block in blocks:
        if block.attn.q_proj is None:
            raise NotImplementedError("query/value-only training of an EVA tower with fused qkv weights is not supported; use 'blocks' or 'none'")
        selected += [block.attn.q_proj.weight, block.attn.v_proj.weight]
    return selected
