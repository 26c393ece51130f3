"""Image-text retrieval over a caption data set (Talk2DINO's validation), a ``DatasetEvaluator``.

Inputs are caption samples (one per caption, ``image_id`` naming the image); the model returns,
per input, ``{"head_embeddings": (heads, D), "caption_embedding": (D,)}``. Each image is kept once
(the first time its ``image_id`` is seen, on any process). Image i and caption j score

    s(i, j) = max over heads h of cos(head_embeddings_i[h], caption_embedding_j),

the rule of Talk2DINO's training loss. An image's ground-truth captions are all captions with its
``image_id``; a caption's ground-truth image is its own.

* image -> text: the rank of image i is the position of its best-scoring ground-truth caption
  among all captions sorted by score;
* text -> image: the rank of caption j is the position of its image among all images.

Ranks are 1-based and ties count against the model (a wrong item scoring exactly as much as the
right one is ranked before it), so a model giving every input the same embedding scores chance
level or worse, never 100%. Reported, as ``{"retrieval": {...}}``::

    i2t_R@1, i2t_R@5, i2t_R@10, t2i_R@1, ...   % of queries whose rank is <= K
    i2t_mean_rank, i2t_median_rank, t2i_...     over the queries (median: numpy's, of 1-based ranks)
    rsum                                        sum of the six R@K
    num_images, num_captions

Scores are computed in chunks of images (memory ~ chunk x captions), twice over (once for the
ground-truth scores, once for the ranks), so the comparison is between identically computed
numbers.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import detectron2.utils.comm as comm
from detectron2.evaluation import DatasetEvaluator

__all__ = ["RetrievalEvaluator", "retrieval_ranks", "recall_metrics", "TOP_K"]

logger = logging.getLogger(__name__)

TOP_K = (1, 5, 10)
#: images scored at once in :func:`retrieval_ranks` (memory: chunk x heads x captions floats)
DEFAULT_IMAGE_CHUNK = 256


def _chunk_scores(images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """(c, heads, D) x (M, D) -> (c, M): max over heads of the dot products."""
    return torch.einsum("chd,md->chm", images, captions).amax(dim=1)


def retrieval_ranks(
    image_embeddings: torch.Tensor,
    caption_embeddings: torch.Tensor,
    caption_image: torch.Tensor,
    *,
    chunk: int = DEFAULT_IMAGE_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks in both directions (definitions and tie rule in the module doc).

    Args:
        image_embeddings: (N, heads, D); normalised here over D.
        caption_embeddings: (M, D); normalised here.
        caption_image: (M,) int64, index in 0..N-1 of each caption's image; every image needs a caption.

    Returns:
        i2t: (N,) int64 rank of each image's best ground-truth caption among the M captions.
        t2i: (M,) int64 rank of each caption's image among the N images.
    """
    if image_embeddings.dim() != 3 or caption_embeddings.dim() != 2 or image_embeddings.shape[-1] != caption_embeddings.shape[-1]:
        raise ValueError(f"expected (N, heads, D) images and (M, D) captions, got {tuple(image_embeddings.shape)} and {tuple(caption_embeddings.shape)}")
    num_images, num_captions = image_embeddings.shape[0], caption_embeddings.shape[0]
    caption_image = caption_image.to(image_embeddings.device, torch.long)
    if caption_image.shape != (num_captions,) or (num_captions and (caption_image.min() < 0 or caption_image.max() >= num_images)):
        raise ValueError(f"caption_image must be ({num_captions},) indices into the {num_images} images")
    if torch.bincount(caption_image, minlength=num_images).min() == 0:
        raise ValueError("every image needs at least one caption")
    images = F.normalize(image_embeddings.float(), dim=-1)
    captions = F.normalize(caption_embeddings.float(), dim=-1)

    gt_scores = torch.empty(num_captions, device=images.device)
    for start in range(0, num_images, chunk):
        scores = _chunk_scores(images[start : start + chunk], captions)
        columns = torch.nonzero((caption_image >= start) & (caption_image < start + chunk)).squeeze(1)
        gt_scores[columns] = scores[caption_image[columns] - start, columns]

    i2t = torch.empty(num_images, dtype=torch.long, device=images.device)
    t2i_ahead = torch.zeros(num_captions, dtype=torch.long, device=images.device)
    for start in range(0, num_images, chunk):
        own = caption_image[None, :] == torch.arange(start, min(start + chunk, num_images), device=images.device)[:, None]
        scores = _chunk_scores(images[start : start + chunk], captions)
        best_own = scores.masked_fill(~own, float("-inf")).amax(dim=1)
        i2t[start : start + chunk] = 1 + ((scores >= best_own[:, None]) & ~own).sum(dim=1)
        t2i_ahead += ((scores >= gt_scores[None, :]) & ~own).sum(dim=0)
    return i2t.cpu(), (1 + t2i_ahead).cpu()


def recall_metrics(ranks: torch.Tensor, prefix: str, top_k: Sequence[int] = TOP_K) -> dict[str, float]:
    """``{prefix}_R@K`` (% of ranks <= K), ``{prefix}_mean_rank``, ``{prefix}_median_rank``."""
    r = ranks.numpy().astype(np.float64)
    out = {f"{prefix}_R@{k}": float(100.0 * (r <= k).mean()) for k in top_k}
    out[f"{prefix}_mean_rank"] = float(r.mean())
    out[f"{prefix}_median_rank"] = float(np.median(r))
    return out


class RetrievalEvaluator(DatasetEvaluator):
    """Collect image and caption embeddings of a caption set; report R@K both ways (module doc)."""

    def __init__(self, dataset_name: str = "", *, distributed: bool = True, top_k: Sequence[int] = TOP_K, chunk: int = DEFAULT_IMAGE_CHUNK):
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.top_k = tuple(top_k)
        self.chunk = int(chunk)
        self.reset()

    def reset(self) -> None:
        self._images: dict[Any, torch.Tensor] = {}  # image_id -> (heads, D) float32 CPU
        self._captions: list[tuple[Any, torch.Tensor]] = []  # (image_id, (D,) float32 CPU)

    def process(self, inputs, outputs) -> None:
        for x, out in zip(inputs, outputs):
            heads, caption = out["head_embeddings"], out["caption_embedding"]
            if heads.dim() != 2 or caption.dim() != 1 or heads.shape[-1] != caption.shape[-1]:
                raise ValueError(
                    f"image {x.get('image_id')!r}: expected head_embeddings (heads, D) and caption_embedding (D,), "
                    f"got {tuple(heads.shape)} and {tuple(caption.shape)}"
                )
            image_id = x["image_id"]
            if image_id not in self._images:
                self._images[image_id] = heads.detach().float().cpu()
            self._captions.append((image_id, caption.detach().float().cpu()))

    def _gathered(self) -> list:
        state = (self._images, self._captions)
        if not self.distributed or comm.get_world_size() == 1:
            return [state]
        comm.synchronize()
        return comm.gather(state, dst=0)

    def evaluate(self) -> Optional[OrderedDict]:
        parts = self._gathered()
        if not comm.is_main_process():
            return None
        images: dict[Any, torch.Tensor] = {}
        captions: list[tuple[Any, torch.Tensor]] = []
        for part_images, part_captions in parts:
            for image_id, embedding in part_images.items():
                images.setdefault(image_id, embedding)
            captions.extend(part_captions)
        if not captions:
            logger.warning("RetrievalEvaluator on %s: no caption was evaluated", self.dataset_name)
            return OrderedDict({"retrieval": {}})
        index = {image_id: i for i, image_id in enumerate(images)}
        device = "cuda" if torch.cuda.is_available() else "cpu"
        i2t, t2i = retrieval_ranks(
            torch.stack(list(images.values())).to(device),
            torch.stack([c for _, c in captions]).to(device),
            torch.tensor([index[image_id] for image_id, _ in captions]),
            chunk=self.chunk,
        )
        results = OrderedDict()
        results.update(recall_metrics(i2t, "i2t", self.top_k))
        results.update(recall_metrics(t2i, "t2i", self.top_k))
        results["rsum"] = float(sum(results[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in self.top_k))
        results["num_images"] = len(images)
        results["num_captions"] = len(captions)
        logger.info(
            "Retrieval on %s (%d images, %d captions):\n%s",
            self.dataset_name, len(images), len(captions),
            "\n".join(f"  {k}: {v:.2f}" for k, v in results.items() if not k.startswith("num_")),
        )
        return OrderedDict({"retrieval": results})
