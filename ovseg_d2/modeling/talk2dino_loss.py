"""Talk2DINO's training objective: max-over-heads selection and symmetric InfoNCE.

For image i with per-head embeddings v_{i,h} (:func:`attention_weighted_head_embeddings`) and
its caption's projection ψ(t_i), the head whose v_{i,h} is most cosine-similar to ψ(t_i)
represents image i against every caption of the batch (:func:`select_heads_by_caption`). The
loss is the symmetric InfoNCE of the B x B cosine matrix at a fixed temperature
(``MODEL.TALK2DINO.TEMPERATURE``, 0.07), caption i being image i's positive and the other
captions of the batch its negatives (and vice versa).

Multi-GPU (``MODEL.TALK2DINO.GATHER_NEGATIVES``): every process gathers the selected image
embeddings and caption embeddings of all processes (:func:`gather_with_local_grad`), so the
negatives are those of the global batch. Every process then computes the same global loss; the
gradient flows through its own (local) rows only, and DDP's gradient averaging turns that into
1 / world_size of the global loss's gradient (the convention of open_clip's
``gather_with_grad=False``). Processes must have the same per-process batch size.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "attention_weighted_head_embeddings",
    "select_heads_by_caption",
    "gather_with_local_grad",
    "symmetric_info_nce",
    "talk2dino_contrastive_loss",
]


def attention_weighted_head_embeddings(patch_tokens: torch.Tensor, attention_logits: torch.Tensor) -> torch.Tensor:
    """Per head, the softmax(CLS attention)-weighted mean of the patch tokens.

    Args:
        patch_tokens: [B, N, D] normalised (final-LayerNorm) patch tokens.
        attention_logits: [B, heads, N] CLS -> patch logits.
    Returns:
        [B, heads, D], not L2-normalised.
    """
    return torch.einsum("bhn,bnd->bhd", attention_logits.softmax(dim=-1), patch_tokens)


def select_heads_by_caption(head_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """For each image, its head most cosine-similar to its own caption.

    Args:
        head_embeddings: [B, heads, D] (any norm). text_embeddings: [B, D] (any norm), row i the
            caption paired with image i.
    Returns:
        [B, D] unit vectors: ``normalize(v_{i, h_i})`` with ``h_i = argmax_h cos(v_{i,h}, t_i)``.
    """
    heads = F.normalize(head_embeddings, dim=-1)
    similarity = torch.einsum("bhd,bd->bh", heads, F.normalize(text_embeddings, dim=-1))
    best = similarity.argmax(dim=1)
    return heads[torch.arange(heads.shape[0], device=heads.device), best]


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] from every process in rank order: [world * B, ...].

    The local slice is ``x`` itself (gradient flows); the other processes' slices are constants.
    Without an initialised process group (or with one process) returns ``x``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def symmetric_info_nce(image: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy of ``image @ text.T / temperature``.

    ``image``, ``text``: [B, D] unit vectors, row i of each a positive pair.
    """
    logits = image @ text.T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def talk2dino_contrastive_loss(
    head_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    temperature: float,
    gather_negatives: bool = False,
) -> torch.Tensor:
    """Talk2DINO's loss for a batch of (image, caption) pairs.

    Args:
        head_embeddings: [B, heads, D] per-head image embeddings (any norm).
        text_embeddings: [B, D] ψ(caption features) (any norm), row i image i's caption.
        temperature: fixed softmax temperature on cosines.
        gather_negatives: use the embeddings of every process as negatives (see module doc).
    Returns:
        Scalar loss.
    """
    if head_embeddings.shape[0] != text_embeddings.shape[0]:
        raise ValueError(
            f"{head_embeddings.shape[0]} images but {text_embeddings.shape[0]} captions: the loss pairs image i with caption i"
        )
    image = select_heads_by_caption(head_embeddings, text_embeddings)
    text = F.normalize(text_embeddings, dim=-1)
    if gather_negatives:
        image, text = gather_with_local_grad(image), gather_with_local_grad(text)
    return symmetric_info_nce(image, text, temperature)
