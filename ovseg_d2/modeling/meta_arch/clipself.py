"""CLIPSelf (Wu et al., ICLR 2024): self-distillation of a CLIP ViT's dense features.

Training (``shared/spec/clipself.md``): the student is the shared ``OpenCLIPBackbone`` with the
last block in ``value_residual`` mode, run on the whole padded square image (position
embeddings resized to its token grid). Its dense map is L2-normalised per token and pooled over
each region box by 1 x 1 RoIAlign. The teacher is a frozen, always-eval copy of the initial
image tower; it embeds each region cropped out of the image (longest side resized to its
image size, zero-padded to a square; all crops of the batch in one batched op on the device).
Loss: ``1 - mean cosine(student region, teacher crop)``. Regions and teacher boxes come from
the ``clipself`` dataset mapper (grid or proposals).

Evaluation (region classification): for each ground-truth segment of an input from the
``region_classification`` mapper, ``{"region_scores": {mode: K x T}}`` cosine similarities with
the prompt-ensembled class embeddings, for the modes ``rois`` (1 x 1 RoIAlign of the dense map
on the box), ``maskpool`` (mean dense feature inside the mask) and ``crops`` (the evaluated
model's global embedding of the box crop).
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..backbone.clip_export import VISUAL_PREFIX, ensemble_state_dicts, open_clip_state_dict
from ..backbone.clip_vit import OpenCLIPBackbone
from ..region_pooling import boxes_with_batch_index, crop_resize_pad, mask_pool, roi_align_1x1
from ..text import PromptTextEncoder, average_templates, build_prompt_text_encoder
from ..vocabulary import TestVocabularyMixin, class_names_of
from .image_batching import batch_images

__all__ = ["CLIPSelf", "REGION_EVAL_MODES", "cosine_distillation_loss"]

REGION_EVAL_MODES = ("rois", "maskpool", "crops")


def cosine_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity of K x C student and teacher embeddings."""
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean()


@META_ARCH_REGISTRY.register()
class CLIPSelf(TestVocabularyMixin, nn.Module):
    """Student ``backbone`` (trained), frozen ``teacher`` image tower, shared text encoder."""

    @configurable
    def __init__(
        self,
        *,
        backbone: OpenCLIPBackbone,
        teacher: nn.Module,
        text_encoder: PromptTextEncoder,
        test_class_names: Sequence[str],
        input_format: str,
        eval_modes: Sequence[str] = REGION_EVAL_MODES,
    ):
        """
        Args:
            backbone: the student; its ``dense_last_block`` should be ``value_residual``.
            teacher: an open_clip image tower (``clip.visual``) whose ``forward`` gives the global
                embedding; frozen here and kept in eval mode.
            text_encoder: class-name encoder on the student's text tower (region evaluation).
            test_class_names: default vocabulary of region evaluation.
            input_format: "RGB" or "BGR" (the mapper's channel order).
            eval_modes: region-classification modes computed at inference.
        """
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={input_format!r}: CLIP models need RGB or BGR input")
        bad = [m for m in eval_modes if m not in REGION_EVAL_MODES]
        if bad or not eval_modes:
            raise ValueError(f"MODEL.CLIPSELF.EVAL_MODES={list(eval_modes)} must be a non-empty subset of {REGION_EVAL_MODES}")
        self.backbone = backbone
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        self.text_encoder = text_encoder
        self.test_class_names = list(test_class_names)
        self.test_background_by_threshold = False
        self.input_format = input_format
        self.eval_modes = tuple(eval_modes)
        self.crop_size = int(_square_image_size(teacher))

    @classmethod
    def from_config(cls, cfg):
        if cfg.MODEL.CLIP.DENSE_LAST_BLOCK != "value_residual":
            raise ValueError(
                f"CLIPSelf distils the value_residual dense path; MODEL.CLIP.DENSE_LAST_BLOCK is "
                f"{cfg.MODEL.CLIP.DENSE_LAST_BLOCK!r}. Set it to 'value_residual'."
            )
        backbone_args = OpenCLIPBackbone.from_config(cfg)
        teacher = copy.deepcopy(backbone_args["clip_model"].visual)  # packed attention: open_clip's fast path
        backbone = OpenCLIPBackbone(**backbone_args)
        test_set = cfg.MODEL.TEST_CLASS_NAMES_FROM or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
        return {
            "backbone": backbone,
            "teacher": teacher,
            "text_encoder": build_prompt_text_encoder(cfg, backbone),
            "test_class_names": class_names_of(test_set) if test_set else [],
            "input_format": cfg.INPUT.FORMAT,
            "eval_modes": list(cfg.MODEL.CLIPSELF.EVAL_MODES),
        }

    @property
    def device(self) -> torch.device:
        return self.backbone.pixel_mean.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never leaves eval mode
        return self

    # ------------------------------------------------------------------ shared pieces
    def _rgb_images(self, batched_inputs: list[dict]) -> torch.Tensor:
        """B x 3 x H x W float RGB 0-255, zero-padded to the largest input."""
        images = batch_images(batched_inputs, _IdentityNormalizer(self.backbone.patch_size), self.input_format, self.device)
        return images.tensor

    def student_dense(self, rgb: torch.Tensor) -> torch.Tensor:
        """B x C x h x w unit-norm dense features of RGB 0-255 images."""
        return F.normalize(self.backbone(self.backbone.normalize(rgb))["dense"], dim=1)

    def crops(self, rgb: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """K x 3 x S x S CLIP-normalised square crops (S = the teacher's image size)."""
        return self.backbone.normalize(crop_resize_pad(rgb, boxes, batch_index, self.crop_size))

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.losses(batched_inputs)
        return self.inference(batched_inputs)

    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        for key in ("region_boxes", "teacher_boxes"):
            if any(key not in x for x in batched_inputs):
                raise KeyError(f"CLIPSelf training inputs need '{key}': use INPUT.DATASET_MAPPER_NAME 'clipself'")
        rgb = self._rgb_images(batched_inputs)
        boxes, index = boxes_with_batch_index([x["region_boxes"].to(self.device) for x in batched_inputs])
        teacher_boxes, _ = boxes_with_batch_index([x["teacher_boxes"].to(self.device) for x in batched_inputs])
        dense = self.student_dense(rgb)
        if len(boxes) == 0:
            return {"loss_clipself": dense.sum() * 0.0}
        student = roi_align_1x1(dense, boxes, index, 1.0 / self.backbone.patch_size[0])
        with torch.no_grad():
            target = self.teacher(self.crops(rgb, teacher_boxes, index))
        return {"loss_clipself": cosine_distillation_loss(student, target)}

    # ------------------------------------------------------------------ region classification
    def class_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """T x C unit class embeddings (prompt-ensembled over the templates)."""
        return average_templates(self.text_encoder(class_names, device=self.device))

    def region_embeddings(self, batched_inputs: list[dict]) -> list[dict[str, torch.Tensor]]:
        """Per input, {mode: K x C unit embeddings of its ``region_boxes`` / ``segment_map``}."""
        for key in ("region_boxes", "segment_map", "content_size"):
            if any(key not in x for x in batched_inputs):
                raise KeyError(f"region classification inputs need '{key}': use the region_classification mapper")
        rgb = self._rgb_images(batched_inputs)
        counts = [len(x["region_boxes"]) for x in batched_inputs]
        boxes, index = boxes_with_batch_index([x["region_boxes"].to(self.device, torch.float32) for x in batched_inputs])
        per_mode: dict[str, list[torch.Tensor]] = {}
        if {"rois", "maskpool"} & set(self.eval_modes):
            dense = self.student_dense(rgb)
        if "rois" in self.eval_modes:
            per_mode["rois"] = list(roi_align_1x1(dense, boxes, index, 1.0 / self.backbone.patch_size[0]).split(counts))
        if "maskpool" in self.eval_modes:
            per_mode["maskpool"] = [
                mask_pool(dense[i], x["segment_map"], counts[i], tuple(x["content_size"]), self.backbone.patch_size[0])
                for i, x in enumerate(batched_inputs)
            ]
        if "crops" in self.eval_modes:
            crops = self.crops(rgb, boxes, index)
            per_mode["crops"] = list(self.backbone.encode_image(crops).split(counts))
        return [{m: F.normalize(v[i].float(), dim=-1) for m, v in per_mode.items()} for i in range(len(batched_inputs))]

    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        results: list[Optional[dict]] = [None] * len(batched_inputs)
        for (vocabulary, _), indices in self.group_by_vocabulary(batched_inputs).items():
            text = self.class_embeddings(list(vocabulary)).float()
            embeddings = self.region_embeddings([batched_inputs[i] for i in indices])
            for i, per_mode in zip(indices, embeddings):
                results[i] = {"region_scores": {m: e @ text.T for m, e in per_mode.items()}}
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ export
    def export_state_dict(self, alpha: float) -> dict[str, torch.Tensor]:
        """open_clip state dict: image tower ``alpha * student + (1 - alpha) * teacher``, text
        tower as it is (frozen, hence the original)."""
        student = open_clip_state_dict(self.backbone.clip)
        visual_student = {k[len(VISUAL_PREFIX) :]: v for k, v in student.items() if k.startswith(VISUAL_PREFIX)}
        visual_teacher = open_clip_state_dict(self.teacher)
        merged = ensemble_state_dicts(visual_student, visual_teacher, alpha)
        student.update({VISUAL_PREFIX + k: v for k, v in merged.items()})
        return student


class _IdentityNormalizer:
    """Stands in for a backbone in ``batch_images``: float conversion only, patch-size padding."""

    def __init__(self, patch_size):
        self.patch_size = patch_size

    @staticmethod
    def normalize(image: torch.Tensor) -> torch.Tensor:
        return image.float()


def _square_image_size(visual: nn.Module) -> int:
    size = getattr(visual, "image_size", None)
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"the teacher's image size {size} is not square; CLIPSelf's crops are square")
    return size[0]
