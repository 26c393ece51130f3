"""The baseline every paper compares against: a MaskCLIP-style cosine cost volume.

CLIP dense features (last block through its value path) are compared with the class text
embeddings by cosine similarity; the B x T x h x w cost volume, divided by a temperature, is
upsampled bilinearly and read as per-pixel class logits. No aggregation. Fine-tuning trains
CLIP's query/value projections of both towers and the temperature with per-pixel
cross-entropy.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList

from ..background import add_background_channel, split_background_vocabulary
from ..backbone.clip_vit import OpenCLIPBackbone
from ..text import PromptTextEncoder, average_templates, build_prompt_text_encoder
from ..vocabulary import TestVocabularyMixin, class_names_of, default_vocabulary_sources
from .image_batching import batch_images, batch_labels, resize_to_outputs

__all__ = ["MaskCLIPBaseline", "cosine_cost_volume"]


def cosine_cost_volume(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel feature with every class embedding.

    Args:
        dense: B x C x h x w image features (any norm).
        text: T x C class embeddings (any norm).
    Returns:
        B x T x h x w cosines in [-1, 1].
    """
    return torch.einsum("bchw,tc->bthw", F.normalize(dense, dim=1), F.normalize(text, dim=-1))


@META_ARCH_REGISTRY.register()
class MaskCLIPBaseline(TestVocabularyMixin, nn.Module):
    """Cosine cost volume between CLIP dense features and class embeddings, upsampled.

    Inputs follow detectron2: a list of dicts with ``image`` (uint8 3 x H x W in
    ``INPUT.FORMAT``), ``sem_seg`` (H x W, training), ``height``/``width`` (output size) and an
    optional ``vocabulary`` (list of class names) that overrides the test vocabulary.
    Inference returns ``{"sem_seg": T x height x width}`` class probabilities.
    """

    @configurable
    def __init__(
        self,
        *,
        clip: OpenCLIPBackbone,
        text_encoder: PromptTextEncoder,
        train_class_names: Sequence[str],
        test_class_names: Sequence[str],
        temperature_init: float,
        learn_temperature: bool,
        ignore_value: int,
        input_format: str,
        background_threshold: float = 0.5,
    ):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={input_format!r}: CLIP models need RGB or BGR input")
        self.backbone = clip
        self.text_encoder = text_encoder
        self.train_class_names = list(train_class_names)
        self.test_class_names = list(test_class_names)
        self.log_inverse_temperature = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature_init)), requires_grad=learn_temperature
        )
        self.ignore_value = ignore_value
        self.input_format = input_format
        self.background_threshold = background_threshold
        self.test_background_by_threshold = False

    @classmethod
    def from_config(cls, cfg):
        clip = OpenCLIPBackbone(cfg)
        train_set, test_set = default_vocabulary_sources(cfg)
        return {
            "clip": clip,
            "text_encoder": build_prompt_text_encoder(cfg, clip),
            "train_class_names": class_names_of(train_set) if train_set else [],
            "test_class_names": class_names_of(test_set) if test_set else [],
            "temperature_init": cfg.MODEL.BASELINE.TEMPERATURE_INIT,
            "learn_temperature": cfg.MODEL.BASELINE.LEARN_TEMPERATURE,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "input_format": cfg.INPUT.FORMAT,
            "background_threshold": cfg.MODEL.BACKGROUND_THRESHOLD,
        }

    @property
    def device(self) -> torch.device:
        return self.log_inverse_temperature.device

    def class_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """T x C unit class embeddings (prompt-ensembled)."""
        return average_templates(self.text_encoder(class_names, device=self.device))

    def predict_logits(self, images: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """CLIP-normalised images B x 3 x H x W -> logits B x T x h x w at the token grid."""
        dense = self.backbone(images)["dense"]
        cost = cosine_cost_volume(dense, self.class_embeddings(class_names))
        return cost * self.log_inverse_temperature.exp()

    def forward(self, batched_inputs: list[dict]):
        images = batch_images(batched_inputs, self.backbone, self.input_format, self.device)
        if self.training:
            if not self.train_class_names:
                raise ValueError("no training vocabulary: set DATASETS.TRAIN or MODEL.TRAIN_CLASS_NAMES_FROM")
            logits = self.predict_logits(images.tensor, self.train_class_names)
            targets = batch_labels(batched_inputs, images, self.ignore_value, self.device)
            logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
            return {"loss_sem_seg": F.cross_entropy(logits, targets, ignore_index=self.ignore_value)}
        return self.inference(batched_inputs, images)

    def inference(self, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        results: list[Optional[dict]] = [None] * len(batched_inputs)
        # Inputs may bring their own vocabularies: run each distinct vocabulary once.
        for (vocabulary, background_by_threshold), indices in self.group_by_vocabulary(batched_inputs).items():
            encoded = split_background_vocabulary(vocabulary, background_by_threshold)
            logits = self.predict_logits(images.tensor[indices], encoded)
            logits = F.interpolate(logits, size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
            outputs = resize_to_outputs(logits, [images.image_sizes[i] for i in indices], [batched_inputs[i] for i in indices])
            for index, output in zip(indices, outputs):
                probabilities = output.softmax(dim=0)
                if background_by_threshold:
                    probabilities = add_background_channel(probabilities, self.background_threshold)
                results[index] = {"sem_seg": probabilities}
        return results  # type: ignore[return-value]
