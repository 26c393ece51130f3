"""Talk2DINO's background cleaning: mix a class-specific DINOv2 attention map into the score maps.

Per window (the reference runs one window per call), on the h x w sigmoid maps before
upsampling (``shared/anchors/talk2dino_inference_settings.md``):

1. head embeddings e_h = normalise(mean_p(logit_{h,p} * x_p)) with the raw CLS attention logits
   as weights and the unnormalised (final-LayerNorm) patch tokens x_p;
2. per class t, head weights w_{t,h} = softmax_h(ψ(t) . e_h);
3. class attention a_t = softmax_p(sum_h w_{t,h} logit_{h,p});
4. a is rescaled with its min and max over all classes and patches: (a - min) / max(max, max - min),
   then stretched linearly onto [min, max] of the window's sigmoid maps (all classes);
5. output (mask + λ a) / (1 + λ).
"""
from __future__ import annotations

import torch

__all__ = ["background_cleaning"]


def background_cleaning(
    masks: torch.Tensor,
    text: torch.Tensor,
    patch_tokens: torch.Tensor,
    attention_logits: torch.Tensor,
    *,
    weight: float,
) -> torch.Tensor:
    """Args:
        masks: [B, T, h, w] sigmoid(cosine) maps, one row of B per window.
        text: [T, D] unit class embeddings ψ(t).
        patch_tokens: [B, h*w, D] final-LayerNorm patch tokens (not L2-normalised).
        attention_logits: [B, heads, h*w] CLS -> patch logits.
        weight: λ (0.2 in the reference).
    Returns:
        [B, T, h, w] cleaned maps.
    """
    b, t, h, w = masks.shape
    tokens, logits = patch_tokens.float(), attention_logits.float()
    heads = torch.einsum("bhn,bnd->bhd", logits, tokens) / tokens.shape[1]
    heads = heads / heads.norm(dim=-1, keepdim=True)
    head_weights = torch.einsum("td,bhd->bth", text.float(), heads).softmax(dim=-1)
    attention = torch.einsum("bth,bhn->btn", head_weights, logits).softmax(dim=-1)  # B x T x N
    a_min = attention.amin(dim=(1, 2), keepdim=True)
    a_max = attention.amax(dim=(1, 2), keepdim=True)
    attention = (attention - a_min) / torch.maximum(a_max, a_max - a_min)
    flat = masks.float().flatten(2)
    m_min = flat.amin(dim=(1, 2), keepdim=True)
    m_max = flat.amax(dim=(1, 2), keepdim=True)
    attention = attention * (m_max - m_min) + m_min
    return ((flat + weight * attention) / (1 + weight)).view(b, t, h, w).to(masks.dtype)
