"""CAT-Seg (Cho et al., CVPR 2024) as a detectron2 meta-architecture.

CLIP (OpenCLIPBackbone, last block in CAT-Seg's dense mode, two intermediate taps) gives dense
features; the shared text encoder gives class embeddings (one template, first synonym); the
``CATSegHead`` aggregates their cosine cost volume into B x T x 4h x 4w logits.

Evaluation (``MODEL.CATSEG.SLIDING_WINDOW``, the published path; see
``shared/anchors/catseg_eval_settings.md``): the mapper's image (short side 640) is resized to
640 x 640; four 384 windows (stride 256) plus the whole image resized to 384 run as ONE batch
(for every image of the batch at once); each view's logits are upsampled to 384 and passed
through a sigmoid; windows are averaged where they overlap; the result is averaged with the
global view and resized to the original size. The post-processing runs over chunks of classes
(``MODEL.CATSEG.SCORE_CHUNK_CLASSES``) so that 847 classes fit in memory.

Training: crops (384) -> CLIP size; binary cross-entropy over all T classes against one-hot
targets at the crop size; ignore pixels are masked (``MODEL.CATSEG.MASK_IGNORE_IN_LOSS``; False
reproduces the reference, which counts them as negatives of every class).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_sem_seg_head

from ..background import add_background_channel, split_background_vocabulary
from ..backbone.clip_vit import OpenCLIPBackbone
from ..sliding_window import crop_windows, stitch_windows, window_boxes
from ..text import PromptTextEncoder, build_prompt_text_encoder
from ..vocabulary import TestVocabularyMixin, class_names_of, default_vocabulary_sources
from .image_batching import batch_images, batch_labels

__all__ = ["CATSeg", "binary_cross_entropy_loss"]


def binary_cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_value: int, *, mask_ignore: bool) -> torch.Tensor:
    """Mean BCE over classes and pixels against one-hot targets.

    Args:
        logits: B x T x H x W. labels: B x H x W (class ids, ``ignore_value`` for ignore).
        mask_ignore: exclude ignore pixels (True) or treat them as negatives of every class
            (False, the reference's behaviour).
    """
    valid = labels != ignore_value
    targets = F.one_hot(torch.where(valid, labels, 0), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    targets = targets * valid.unsqueeze(1)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if not mask_ignore:
        return loss.mean()
    return (loss * valid.unsqueeze(1)).sum() / (valid.sum().clamp(min=1) * logits.shape[1])


@META_ARCH_REGISTRY.register()
class CATSeg(TestVocabularyMixin, nn.Module):
    """CAT-Seg. Inputs and outputs follow detectron2's semantic segmentation convention:
    ``{"sem_seg": T x height x width}`` per image, probabilities (sigmoid scores)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: OpenCLIPBackbone,
        sem_seg_head: nn.Module,
        text_encoder: PromptTextEncoder,
        train_class_names: Sequence[str],
        test_class_names: Sequence[str],
        clip_input_size: int,
        sliding_window: bool,
        sliding_resize: int,
        window_size: int,
        window_stride: int,
        size_divisibility: int,
        score_chunk_classes: int,
        mask_ignore_in_loss: bool,
        ignore_value: int,
        input_format: str,
        background_threshold: float = 0.5,
    ):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={input_format!r}: CLIP models need RGB or BGR input")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.text_encoder = text_encoder
        self.train_class_names = list(train_class_names)
        self.test_class_names = list(test_class_names)
        self.test_background_by_threshold = False
        self.clip_input_size = clip_input_size
        self.sliding_window = sliding_window
        self.sliding_resize = sliding_resize
        self.window_size = window_size
        self.window_stride = window_stride
        self.size_divisibility = size_divisibility
        self.score_chunk_classes = score_chunk_classes
        self.mask_ignore_in_loss = mask_ignore_in_loss
        self.ignore_value = ignore_value
        self.input_format = input_format
        self.background_threshold = background_threshold

    @classmethod
    def from_config(cls, cfg):
        backbone = OpenCLIPBackbone(cfg)
        head = build_sem_seg_head(cfg, backbone.output_shape())
        text_encoder = build_prompt_text_encoder(cfg, backbone)
        train_set, test_set = default_vocabulary_sources(cfg)
        c = cfg.MODEL.CATSEG
        return {
            "backbone": backbone,
            "sem_seg_head": head,
            "text_encoder": text_encoder,
            "train_class_names": class_names_of(train_set) if train_set else [],
            "test_class_names": class_names_of(test_set) if test_set else [],
            "clip_input_size": c.CLIP_INPUT_SIZE,
            "sliding_window": c.SLIDING_WINDOW,
            "sliding_resize": c.SLIDING_RESIZE,
            "window_size": c.WINDOW,
            "window_stride": c.WINDOW_STRIDE,
            "size_divisibility": c.SIZE_DIVISIBILITY,
            "score_chunk_classes": c.SCORE_CHUNK_CLASSES,
            "mask_ignore_in_loss": c.MASK_IGNORE_IN_LOSS,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "input_format": cfg.INPUT.FORMAT,
            "background_threshold": cfg.MODEL.BACKGROUND_THRESHOLD,
        }

    @property
    def device(self) -> torch.device:
        return self.backbone.pixel_mean.device

    # ------------------------------------------------------------------ core
    def class_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """T x P x C unit class embeddings (one row per prompt template)."""
        return F.normalize(self.text_encoder(class_names, device=self.device), dim=-1)

    def predict_logits(self, views: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised views N x 3 x S x S (S = CLIP input size) -> N x T x 4h x 4w logits."""
        return self.sem_seg_head(self.backbone(views), text)

    def _to_clip_size(self, images: torch.Tensor) -> torch.Tensor:
        size = (self.clip_input_size, self.clip_input_size)
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.losses(batched_inputs)
        results: list[Optional[dict]] = [None] * len(batched_inputs)
        for (vocabulary, background_by_threshold), indices in self.group_by_vocabulary(batched_inputs).items():
            text = self.class_embeddings(split_background_vocabulary(vocabulary, background_by_threshold))
            inputs = [batched_inputs[i] for i in indices]
            scores = self.sliding_inference(inputs, text) if self.sliding_window else self.whole_inference(inputs, text)
            for index, score in zip(indices, scores):
                if background_by_threshold:
                    score = add_background_channel(score, self.background_threshold)
                results[index] = {"sem_seg": score}
        return results

    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        if not self.train_class_names:
            raise ValueError("no training vocabulary: set DATASETS.TEST or MODEL.TRAIN_CLASS_NAMES_FROM")
        images = batch_images(batched_inputs, self.backbone, self.input_format, self.device)
        labels = batch_labels(batched_inputs, images, self.ignore_value, self.device)
        logits = self.predict_logits(self._to_clip_size(images.tensor), self.class_embeddings(self.train_class_names))
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return {"loss_sem_seg": binary_cross_entropy_loss(logits, labels, self.ignore_value, mask_ignore=self.mask_ignore_in_loss)}

    # ------------------------------------------------------------------ inference paths
    def _rgb_float(self, x: dict) -> torch.Tensor:
        image = x["image"].to(self.device).float()
        return image.flip(0) if self.input_format == "BGR" else image

    def sliding_inference(self, inputs: list[dict], text: torch.Tensor) -> list[torch.Tensor]:
        """Windows + global view for every image as one batch -> per image T x height x width."""
        square = (self.sliding_resize, self.sliding_resize)
        boxes = window_boxes(*square, self.window_size, self.window_stride)
        views = []
        for x in inputs:
            image = self._rgb_float(x)[None]
            resized = F.interpolate(image, size=square, mode="bilinear", align_corners=False)
            global_view = F.interpolate(image, size=(self.window_size, self.window_size), mode="bilinear", align_corners=False)
            views.append(torch.cat([crop_windows(resized, boxes), global_view]))
        views = torch.cat(views)  # (B * (K + 1)) x 3 x window x window, image-major
        logits = self.predict_logits(self._to_clip_size(self.backbone.normalize(views)), text)
        return self._sliding_scores(logits, inputs, boxes)

    def _sliding_scores(self, logits: torch.Tensor, inputs: list[dict], boxes) -> list[torch.Tensor]:
        """Per-view logits -> stitched, global-averaged probabilities at each input's output size,
        class chunk by class chunk (memory stays bounded for 847 classes)."""
        num_views = len(boxes) + 1
        logits = logits.unflatten(0, (len(inputs), num_views))
        square = (self.sliding_resize, self.sliding_resize)
        window = (self.window_size, self.window_size)
        outputs = [logits.new_empty(logits.shape[2], x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1])) for x in inputs]
        for start in range(0, logits.shape[2], self.score_chunk_classes):
            chunk = logits[:, :, start : start + self.score_chunk_classes]
            probs = F.interpolate(chunk.flatten(0, 1), size=window, mode="bilinear", align_corners=False).sigmoid()
            probs = probs.unflatten(0, (len(inputs), num_views))
            windows = stitch_windows(probs[:, :-1].flatten(0, 1), boxes, *square)
            global_view = F.interpolate(probs[:, -1], size=square, mode="bilinear", align_corners=False)
            merged = (windows + global_view) / 2
            for i, out in enumerate(outputs):
                out[start : start + chunk.shape[2]] = F.interpolate(merged[i : i + 1], size=out.shape[-2:], mode="bilinear", align_corners=False)[0]
        return outputs

    def whole_inference(self, inputs: list[dict], text: torch.Tensor) -> list[torch.Tensor]:
        """The reference's cheaper periodic-evaluation path: pad to SIZE_DIVISIBILITY, squeeze to
        the CLIP size, sigmoid, resize to the output size (padding included, as the reference)."""
        outputs = []
        for x in inputs:
            image = self.backbone.normalize(self._rgb_float(x))[None]
            h, w = image.shape[-2:]
            d = self.size_divisibility
            image = F.pad(image, (0, (-w) % d, 0, (-h) % d)) if d > 0 else image
            probs = self.predict_logits(self._to_clip_size(image), text).sigmoid()
            size = (x.get("height", h), x.get("width", w))
            outputs.append(F.interpolate(probs, size=size, mode="bilinear", align_corners=False)[0])
        return outputs
