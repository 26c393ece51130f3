"""CAT-Seg's aggregation layers: spatial (guided Swin block pair) and class (linear attention).

Both work on a cost embedding laid out channels-last as ``B x T x H x W x C`` (B images, T
classes, an H x W token grid, C = hidden dim). Module and parameter names follow the released
CAT-Seg checkpoints below ``sem_seg_head.predictor.transformer.layers.<i>.``, so that their
state dicts load strictly.

Where the reference concatenates a guidance tensor to the features before a linear map (Swin
query/key, class-attention query/key, first decoder convolution), this code splits the weight and
applies the guidance part once per image instead of once per image and class. The results are
the same up to floating-point summation order.

Chunked inference on CPU: out of training, on CPU tensors, the spatial aggregation runs on
``cpu_chunk_maps`` class maps of one image at a time and the class aggregation (without pooling)
on ``cpu_chunk_rows`` token-grid rows of one image at a time. Each chunk is independent of the
others (Swin windows stay within a map, class attention within a position), so the output is the
same; but the working set stays in cache and no multi-hundred-MiB temporaries are allocated,
whose page faults dominated CPU inference at 150 classes (see README, CAT-Seg speed). 0 disables.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.swin_transformer import window_partition

__all__ = [
    "image_chunks",
    "map_in_chunks",
    "chunked_on_cpu",
    "SHIFTED_WINDOW_MASK_VALUE",
    "LINEAR_ATTENTION_EPS",
    "shifted_window_mask",
    "GuidedWindowAttention",
    "GuidedSwinBlock",
    "SpatialAggregation",
    "ClassLinearAttention",
    "ClassAggregation",
    "AggregatorLayer",
]

# The reference masks cross-region pairs of a shifted window with -100 (not -inf): the released
# weights were trained with it (REQUIRED for parity).
SHIFTED_WINDOW_MASK_VALUE = -100.0
# Added to the linear-attention normaliser (reference value).
LINEAR_ATTENTION_EPS = 1e-6


def shifted_window_mask(
    resolution: Sequence[int], window_size: int, shift_size: int, mask_value: float = SHIFTED_WINDOW_MASK_VALUE
) -> torch.Tensor:
    """Additive attention mask of a cyclically shifted window partition (Swin's SW-MSA).

    The H x W grid, rolled by ``-shift_size`` on both axes, is split into 3 x 3 regions along the
    cuts at ``-window_size`` and ``-shift_size``; two tokens in one window may attend to each
    other only if they come from the same region.

    Returns:
        num_windows x window_size**2 x window_size**2: 0 where allowed, ``mask_value`` elsewhere.
    """
    H, W = int(resolution[0]), int(resolution[1])
    region = torch.zeros(1, H, W, 1)
    cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[:, rows, cols, :] = label
            label += 1
    windows = window_partition(region, (window_size, window_size)).reshape(-1, window_size * window_size)
    different = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros(different.shape).masked_fill(different, mask_value)


def image_chunks(batch: int, length: int, chunk: int) -> Iterator[tuple[slice, slice]]:
    """(image slice, slice along ``length``) pairs that cover ``batch x length`` one image and
    ``chunk`` entries at a time (``chunk <= 0``: a whole image at a time)."""
    step = chunk if chunk > 0 else max(length, 1)
    for b in range(batch):
        for start in range(0, length, step):
            yield slice(b, b + 1), slice(start, start + step)


def map_in_chunks(
    fn: Callable[[slice, slice], torch.Tensor], batch: int, length: int, chunk: int, dim: int = 1
) -> torch.Tensor:
    """Concatenation of ``fn(image, part)`` over ``image_chunks(batch, length, chunk)``.

    Each result is one image (dim 0) and ``part`` along ``dim``; the output has ``batch`` and
    ``length`` there. It takes the dtype of the results, so under autocast the chunked path
    returns what the batched path would (bf16), rather than casting into a float32 buffer.
    """
    out = None
    for image, part in image_chunks(batch, length, chunk):
        result = fn(image, part)
        if out is None:
            shape = list(result.shape)
            shape[0], shape[dim] = batch, length
            out = result.new_empty(shape)
        index = [slice(None)] * result.dim()
        index[0], index[dim] = image, part
        out[tuple(index)] = result
    return out


def chunked_on_cpu(module: nn.Module, x: torch.Tensor, chunk: int) -> bool:
    """Whether ``module`` should process ``x`` chunk by chunk: a positive chunk size, out of
    training, on CPU. On CUDA the caching allocator already reuses memory and large kernels pay
    off, so the batched path is kept there."""
    return chunk > 0 and not module.training and x.device.type == "cpu"


def _split_linear(
    linear: nn.Linear, x: torch.Tensor, guidance: Optional[torch.Tensor]
) -> torch.Tensor:
    """``linear(cat([x, guidance], -1))`` with ``guidance`` broadcast against ``x``'s leading dims.

    The two parts of the weight are applied separately, so a guidance shared by many rows of
    ``x`` (all classes of an image) is projected once. Without guidance: ``linear(x)``.
    """
    if guidance is None:
        return linear(x)
    dim = x.shape[-1]
    return F.linear(x, linear.weight[:, :dim]) + F.linear(guidance, linear.weight[:, dim:], linear.bias)


class GuidedWindowAttention(nn.Module):
    """Window multi-head self-attention whose query and key also see a guidance vector.

    ``q``/``k``: Linear(dim + guidance_dim -> dim) on concat(x, guidance); ``v``: Linear(dim -> dim)
    on x; ``proj``: Linear(dim -> dim). No relative position bias.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, guidance: Optional[torch.Tensor], mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        Args:
            x: M x nW x N x C windowed tokens (M maps, nW windows of N tokens).
            guidance: m x nW x N x Cg with M = m * r (each guidance row shared by r consecutive
                maps, e.g. all classes of one image), or None.
            mask: nW x N x N additive mask, or None.
        Returns:
            M x nW x N x C.
        """
        M, nW, N, C = x.shape
        heads, D = self.num_heads, C // self.num_heads
        if guidance is not None:
            m = guidance.shape[0]
            x_ = x.view(m, M // m, nW, N, C)
            guidance = guidance.unsqueeze(1)
        else:
            x_ = x
        # M x nW x heads x N x D views of M x nW x N x C tensors.
        q = _split_linear(self.q, x_, guidance).reshape(M, nW, N, heads, D).transpose(2, 3)
        k = _split_linear(self.k, x_, guidance).reshape(M, nW, N, heads, D).transpose(2, 3)
        v = self.v(x).reshape(M, nW, N, heads, D).transpose(2, 3)
        if mask is None:
            out = F.scaled_dot_product_attention(
                q.reshape(M * nW, heads, N, D), k.reshape(M * nW, heads, N, D), v.reshape(M * nW, heads, N, D)
            ).reshape(M, nW, heads, N, D)
        else:
            # One call per window, its 1 x 1 x N x N mask broadcast over maps and heads: 4-D
            # inputs reach PyTorch's fused attention kernel, while a mask broadcast over a 5-D
            # batch falls back to the unfused path (3-5x slower on CPU).
            mask = mask.to(q.dtype)
            out = torch.stack(
                [
                    F.scaled_dot_product_attention(q[:, w], k[:, w], v[:, w], attn_mask=mask[w][None, None])
                    for w in range(nW)
                ],
                dim=1,
            )
        return self.proj(out.transpose(2, 3).reshape(M, nW, N, C))


class GuidedSwinBlock(nn.Module):
    """One Swin block (pre-norm window attention + MLP) with appearance guidance in q/k.

    ``attn_mask`` is registered as a (persistent) buffer when the block shifts, as in the
    released checkpoints (``block_2.attn_mask``); it is used when the input grid is the build
    ``resolution`` and recomputed for any other grid (a multiple of the window size).
    """

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        resolution: Sequence[int],
        *,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.resolution = (int(resolution[0]), int(resolution[1]))
        if min(self.resolution) <= window_size:
            # As in Swin: a window covering the whole grid is not partitioned nor shifted.
            window_size, shift_size = min(self.resolution), 0
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift {shift_size} must be in [0, window {window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GuidedWindowAttention(dim, guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self._order_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        if shift_size > 0:
            self.register_buffer("attn_mask", shifted_window_mask(self.resolution, window_size, shift_size))
        else:
            self.register_buffer("attn_mask", None)

    def _mask(self, H: int, W: int, device: torch.device) -> Optional[torch.Tensor]:
        if self.shift_size == 0:
            return None
        if (H, W) == self.resolution:
            return self.attn_mask
        return shifted_window_mask((H, W), self.window_size, self.shift_size).to(device)

    def _window_order(self, H: int, W: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Token permutation of "roll by -shift, then partition into windows" on a row-major
        H x W grid, and its inverse (one gather each way instead of roll + partition copies)."""
        key = (H, W, str(device))
        if key not in self._order_cache:
            grid = torch.arange(H * W).reshape(1, H, W, 1)
            if self.shift_size:
                grid = torch.roll(grid, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            order = window_partition(grid, (self.window_size, self.window_size)).reshape(-1)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(H * W)
            self._order_cache[key] = (order.to(device), inverse.to(device))
        return self._order_cache[key]

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            x: B x T x H x W x C.
            guidance: B x H x W x Cg (already layer-normed), shared by the T classes; or None.
        Returns:
            B x T x H x W x C.
        """
        B, T, H, W, C = x.shape
        ws = self.window_size
        if H % ws or W % ws:
            raise ValueError(f"token grid {H}x{W} is not a multiple of the window size {ws}")
        n_windows, N = (H // ws) * (W // ws), ws * ws
        order, inverse = self._window_order(H, W, x.device)
        windows = self.norm1(x).reshape(B * T, H * W, C).index_select(1, order).reshape(B * T, n_windows, N, C)
        if guidance is not None:
            guidance = guidance.reshape(B, H * W, -1).index_select(1, order).reshape(B, n_windows, N, -1)
        windows = self.attn(windows, guidance, self._mask(H, W, x.device))
        x = x + windows.reshape(B * T, H * W, C).index_select(1, inverse).reshape(B, T, H, W, C)
        return x + self.mlp(self.norm2(x))


class SpatialAggregation(nn.Module):
    """Two guided Swin blocks (shift 0, then window // 2) applied to every class map.

    Checkpoint names: ``block_1``, ``block_2``, ``guidance_norm``. ``cpu_chunk_maps``: maps of
    one image processed at a time in CPU inference (0: all at once); see the module docstring.
    """

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        resolution: Sequence[int],
        *,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        cpu_chunk_maps: int = 0,
    ):
        super().__init__()
        self.cpu_chunk_maps = int(cpu_chunk_maps)
        common = dict(num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio)
        self.block_1 = GuidedSwinBlock(dim, guidance_dim, resolution, shift_size=0, **common)
        self.block_2 = GuidedSwinBlock(dim, guidance_dim, resolution, shift_size=window_size // 2, **common)
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """x: B x T x H x W x C; guidance: B x H x W x Cg (projected appearance guidance) or None."""
        if guidance is not None and self.guidance_norm is not None:
            guidance = self.guidance_norm(guidance)
        if not chunked_on_cpu(self, x, self.cpu_chunk_maps):
            return self.block_2(self.block_1(x, guidance), guidance)

        def blocks(image: slice, classes: slice) -> torch.Tensor:
            g = guidance[image] if guidance is not None else None
            return self.block_2(self.block_1(x[image, classes], g), g)

        return map_in_chunks(blocks, x.shape[0], x.shape[1], self.cpu_chunk_maps)


def _elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1


class ClassLinearAttention(nn.Module):
    """Multi-head linear attention ("Transformers are RNNs", elu + 1 feature map) across classes.

    q/k: Linear(dim + guidance_dim -> dim) on concat(x, text guidance); v: Linear(dim -> dim) on x.
    No output projection (as in the reference). For a query i over the S keys j (real classes and
    padding slots), per head: ``out_i = sum_j a_ij v_j / (sum_j a_ij + eps)`` with
    ``a_ij = phi(q_i) . phi(k_j)``, computed in O(S) through the sums ``sum_j phi(k_j) v_j^T``
    and ``sum_j phi(k_j)``.

    Padding: ``num_padding`` extra key/value slots that all hold the same vector (the learned
    padding token and guidance) take part in both sums. Their share is computed once and
    multiplied by ``num_padding``, which equals materialising the copies up to summation order.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, eps: float = LINEAR_ATTENTION_EPS):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.eps = eps
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        guidance: Optional[torch.Tensor],
        *,
        num_padding: int = 0,
        padding_x: Optional[torch.Tensor] = None,
        padding_guidance: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            x: B x M x T x C (M positions per image, T classes; normalised tokens).
            guidance: B x T x Cg text guidance shared by the M positions, or None.
            num_padding: number of padding slots appended to the T classes.
            padding_x: C, the (normalised) padding token; padding_guidance: Cg (or None).
        Returns:
            B x M x T x C, outputs of the T real classes only.
        """
        B, M, T, C = x.shape
        heads, D = self.num_heads, C // self.num_heads
        g = guidance.unsqueeze(1) if guidance is not None else None
        Q = _elu_feature_map(_split_linear(self.q, x, g)).reshape(B, M, T, heads, D)
        K = _elu_feature_map(_split_linear(self.k, x, g)).reshape(B, M, T, heads, D)
        length = T + num_padding
        # The reference divides values by the sequence length and multiplies the result back
        # (fp16 overflow guard); kept for identical rounding.
        V = (self.v(x) / length).reshape(B, M, T, heads, D)
        KV = torch.einsum("bmthd,bmthe->bmhde", K, V)
        K_sum = K.sum(dim=2)  # B x M x heads x D
        if num_padding > 0:
            if padding_x is None:
                raise ValueError("num_padding > 0 needs padding_x")
            pg = padding_guidance if guidance is not None else None
            K_pad = _elu_feature_map(_split_linear(self.k, padding_x, pg)).reshape(heads, D)
            V_pad = (self.v(padding_x) / length).reshape(heads, D)
            KV = KV + num_padding * (K_pad.unsqueeze(-1) * V_pad.unsqueeze(-2))
            K_sum = K_sum + num_padding * K_pad
        Z = 1.0 / (torch.einsum("bmthd,bmhd->bmth", Q, K_sum) + self.eps)
        out = torch.einsum("bmthd,bmhde->bmthe", Q, KV) * Z.unsqueeze(-1) * length
        return out.reshape(B, M, T, C)


class ClassAggregation(nn.Module):
    """Transformer layer across classes at every position (CAT-Seg's class aggregation).

    Optional average pooling of the grid first (``pooling_size`` in training,
    ``test_pooling_size`` in eval), then pre-norm linear attention with text guidance and an MLP
    (Linear-ReLU-Linear, names ``MLP.0``/``MLP.2``), then bilinear upsampling back
    (``align_corners=True``). The reference's residual structure is kept (REQUIRED):
    ``y = p + attn(norm1(p)); y = y + MLP(norm2(y)); out = x + up(y)`` with ``p = pool(x)``;
    at 1x1 pooling ``out = x + (x + attn + MLP)``.

    Class budget ``pad_len``: with T < pad_len the class sequence is padded to pad_len with the
    learned ``padding_tokens`` / ``padding_guidance`` (they enter the attention sums; their
    outputs are dropped). T >= pad_len: no padding (pruning to pad_len classes happens in the
    aggregator). ``pad_len = 0`` disables padding and creates no padding parameters.

    ``cpu_chunk_rows``: without pooling, CPU inference runs on this many grid rows of one image at
    a time (0: all at once); see the module docstring.
    """

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        *,
        num_heads: int,
        pooling_size: Sequence[int] = (1, 1),
        test_pooling_size: Sequence[int] = (1, 1),
        pad_len: int = 256,
        mlp_ratio: float = 4.0,
        cpu_chunk_rows: int = 0,
    ):
        super().__init__()
        self.cpu_chunk_rows = int(cpu_chunk_rows)
        self.pooling_size = (int(pooling_size[0]), int(pooling_size[1]))
        self.test_pooling_size = (int(test_pooling_size[0]), int(test_pooling_size[1]))
        self.attention = ClassLinearAttention(dim, guidance_dim, num_heads)
        hidden = int(dim * mlp_ratio)
        self.MLP = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.pad_len = pad_len
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, dim)) if pad_len > 0 else None
        self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim)) if pad_len > 0 and guidance_dim > 0 else None

    def current_pooling_size(self) -> tuple[int, int]:
        return self.pooling_size if self.training else self.test_pooling_size

    def forward(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            x: B x T x H x W x C.
            guidance: B x T x Cg projected text guidance, or None.
        Returns:
            B x T x H x W x C.
        """
        if self.current_pooling_size() == (1, 1) and chunked_on_cpu(self, x, self.cpu_chunk_rows):
            return map_in_chunks(
                lambda image, rows: self._aggregate(x[image, :, rows], guidance[image] if guidance is not None else None),
                x.shape[0], x.shape[2], self.cpu_chunk_rows, dim=2,
            )
        return self._aggregate(x, guidance)

    def _aggregate(self, x: torch.Tensor, guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """``forward`` on the whole of ``x`` (B x T x H x W x C, guidance B x T x Cg)."""
        B, T, H, W, C = x.shape
        pool = self.current_pooling_size()
        pooled = pool != (1, 1)
        if pooled:
            p = x.permute(0, 1, 4, 2, 3).reshape(B * T, C, H, W)
            p = F.avg_pool2d(p, kernel_size=pool)
            h, w = p.shape[-2:]
            p = p.reshape(B, T, C, h, w).permute(0, 3, 4, 1, 2)  # B x h x w x T x C
        else:
            h, w = H, W
            p = x.permute(0, 2, 3, 1, 4)
        p = p.reshape(B, h * w, T, C)
        num_padding = max(self.pad_len - T, 0) if self.padding_tokens is not None else 0
        padding_x = padding_g = None
        if num_padding:
            padding_x = self.norm1(self.padding_tokens.reshape(C))
            if self.padding_guidance is not None:
                padding_g = self.padding_guidance.reshape(-1)
        y = p + self.attention(
            self.norm1(p), guidance, num_padding=num_padding, padding_x=padding_x, padding_guidance=padding_g
        )
        y = y + self.MLP(self.norm2(y))
        if pooled:
            y = y.reshape(B, h, w, T, C).permute(0, 3, 4, 1, 2).reshape(B * T, C, h, w)
            y = F.interpolate(y, size=(H, W), mode="bilinear", align_corners=True)
            y = y.reshape(B, T, C, H, W).permute(0, 1, 3, 4, 2)
        else:
            y = y.reshape(B, H, W, T, C).permute(0, 3, 1, 2, 4)
        return x + y


class AggregatorLayer(nn.Module):
    """Spatial aggregation (``swin_block``) then class aggregation (``attention``)."""

    def __init__(
        self,
        *,
        hidden_dim: int,
        appearance_guidance_dim: int,
        text_guidance_dim: int,
        num_heads: int,
        resolution: Sequence[int],
        window_size: int,
        pooling_size: Sequence[int],
        test_pooling_size: Sequence[int],
        pad_len: int,
        mlp_ratio: float = 4.0,
        cpu_chunk_maps: int = 0,
        cpu_chunk_rows: int = 0,
    ):
        super().__init__()
        self.swin_block = SpatialAggregation(
            hidden_dim,
            appearance_guidance_dim,
            resolution,
            num_heads=num_heads,
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            cpu_chunk_maps=cpu_chunk_maps,
        )
        self.attention = ClassAggregation(
            hidden_dim,
            text_guidance_dim,
            num_heads=num_heads,
            pooling_size=pooling_size,
            test_pooling_size=test_pooling_size,
            pad_len=pad_len,
            mlp_ratio=mlp_ratio,
            cpu_chunk_rows=cpu_chunk_rows,
        )

    def forward(
        self, x: torch.Tensor, appearance_guidance: Optional[torch.Tensor], text_guidance: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """x: B x T x H x W x C; appearance_guidance: B x H x W x Ca; text_guidance: B x T x Ct."""
        x = self.swin_block(x, appearance_guidance)
        return self.attention(x, text_guidance)
