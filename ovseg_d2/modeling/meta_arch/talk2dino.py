"""Talk2DINO (Barsellotti et al., 2025) as a detectron2 meta-architecture.

Parts (``shared/spec/talk2dino.md``): a frozen DINOv2 with registers
(:class:`DINOv2AttentionBackbone`: final-norm patch tokens and the last block's CLS -> patch
attention logits), CLIP's frozen text tower (:class:`CLIPTextTower`, through the shared
:class:`PromptTextEncoder`) and ψ (``TALK2DINO_PROJECTION_REGISTRY``), the only trained part.

Training (caption inputs, see ``notes/talk2dino_contract.md``): per-head embeddings
v_h = softmax(logits_h)-weighted mean of the patch tokens, captions' raw CLIP features through ψ,
max-over-heads selection and symmetric InfoNCE (``talk2dino_loss.py``) -> ``{"loss_talk2dino"}``.
Inputs may carry the cached ``dino_head_embeddings`` / ``caption_text_feature`` instead of the
image / caption (``tools/extract_features.py``); the loss is then the same.

Evaluation on caption inputs returns per input ``{"head_embeddings": [heads, D] unit,
"caption_embedding": [D] unit}`` for the retrieval evaluator.

Segmentation (``shared/anchors/talk2dino_inference_settings.md``): class embeddings are the raw
CLIP embeddings of the 7 templates averaged, through ψ, L2-normalised. The image is resized
(aspect kept) to short side 448 (long side at most 2048); 448 windows at stride 224 run through
DINOv2 as one batch (all windows of all images of the call). Per window: sigmoid(cosine) at the
32 x 32 patch grid, optional background cleaning (per data set, metadata
``talk2dino_background_cleaning``), bilinear upsampling to the window (``align_corners=True``),
optional PAMR guided by the raw window; windows are averaged where they overlap, the result is
resized to the output size (bilinear, ``align_corners=False``) and, on background-by-threshold
sets, a constant ``MODEL.BACKGROUND_THRESHOLD`` channel (0.55 ViT-B, 0.54 ViT-L) is put first.
The post-processing runs over chunks of ``MODEL.TALK2DINO.SCORE_CHUNK_CLASSES`` classes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY

from ..background import add_background_channel, split_background_vocabulary
from ..background_cleaning import background_cleaning
from ..backbone.clip_text import CLIPTextTower
from ..backbone.dinov2_attention import DINOv2AttentionBackbone
from ..heads.talk2dino_projection import build_talk2dino_projection
from ..pamr import pamr, pamr_affinity
from ..sliding_window import stitch_windows, window_boxes
from ..talk2dino_loss import attention_weighted_head_embeddings, talk2dino_contrastive_loss
from ..text import PromptTextEncoder, build_prompt_text_encoder
from ..vocabulary import TestVocabularyMixin, default_vocabulary_sources

__all__ = ["Talk2DINO", "NORMALIZE_EPS", "BACKGROUND_CLEANING_METADATA_KEY"]

#: L2-normalisation epsilon of patch tokens and text embeddings (the reference's)
NORMALIZE_EPS = 1e-6
#: data set metadata flag turning background cleaning on (V21, COCO-Object)
BACKGROUND_CLEANING_METADATA_KEY = "talk2dino_background_cleaning"
_CAPTION_KEYS = ("caption", "caption_text_feature")


@META_ARCH_REGISTRY.register()
class Talk2DINO(TestVocabularyMixin, nn.Module):
    """Talk2DINO. Segmentation inputs/outputs follow detectron2 (``{"sem_seg": T x height x width}``
    sigmoid scores per image); caption inputs follow the captions contract (module doc)."""

    predicts_background_by_threshold = True  # the reference's demo adds the 0.55 channel

    @configurable
    def __init__(
        self,
        *,
        dinov2: DINOv2AttentionBackbone,
        text_tower: CLIPTextTower,
        text_encoder: PromptTextEncoder,
        projection: nn.Module,
        test_class_names: Sequence[str] = (),
        test_background_by_threshold: bool = False,
        test_background_cleaning: bool = False,
        temperature: float,
        gather_negatives: bool,
        sliding_short_side: int,
        sliding_max_long_side: int,
        window_size: int,
        window_stride: int,
        background_threshold: float,
        background_cleaning: bool,
        background_cleaning_lambda: float,
        pamr: bool,
        pamr_iterations: int,
        pamr_dilations: Sequence[int],
        score_chunk_classes: int,
        input_format: str,
    ):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={input_format!r}: Talk2DINO needs RGB or BGR input")
        if window_size % dinov2.patch_size[0] or window_size % dinov2.patch_size[1]:
            raise ValueError(f"MODEL.TALK2DINO.WINDOW={window_size} must be a multiple of DINOv2's patch size {dinov2.patch_size}")
        if score_chunk_classes < 1:
            raise ValueError(f"MODEL.TALK2DINO.SCORE_CHUNK_CLASSES must be at least 1, got {score_chunk_classes}")
        self.dinov2 = dinov2
        self.text_tower = text_tower
        self.text_encoder = text_encoder
        self.projection = projection
        self.temperature = temperature
        self.gather_negatives = gather_negatives
        self.sliding_short_side = sliding_short_side
        self.sliding_max_long_side = sliding_max_long_side
        self.window_size = window_size
        self.window_stride = window_stride
        self.background_threshold = background_threshold
        self.background_cleaning = background_cleaning
        self.background_cleaning_lambda = background_cleaning_lambda
        self.pamr = pamr
        self.pamr_iterations = pamr_iterations
        self.pamr_dilations = tuple(pamr_dilations)
        self.score_chunk_classes = score_chunk_classes
        self.input_format = input_format
        self.set_test_vocabulary(
            test_class_names, background_by_threshold=test_background_by_threshold, background_cleaning=test_background_cleaning
        )

    @classmethod
    def from_config(cls, cfg):
        dinov2 = DINOv2AttentionBackbone(cfg)
        text_tower = CLIPTextTower(cfg)
        _, test_set = default_vocabulary_sources(cfg)
        metadata = MetadataCatalog.get(test_set) if test_set else None
        t = cfg.MODEL.TALK2DINO
        return {
            "dinov2": dinov2,
            "text_tower": text_tower,
            "text_encoder": build_prompt_text_encoder(cfg, text_tower),
            "projection": build_talk2dino_projection(cfg, text_tower.embed_dim, dinov2.embed_dim),
            # caption sets have no class names: the vocabulary then comes from the trainer or the call
            "test_class_names": list(getattr(metadata, "stuff_classes", None) or []),
            "test_background_by_threshold": bool(getattr(metadata, "background_by_threshold", False)),
            "test_background_cleaning": bool(getattr(metadata, BACKGROUND_CLEANING_METADATA_KEY, False)),
            "temperature": t.TEMPERATURE,
            "gather_negatives": t.GATHER_NEGATIVES,
            "sliding_short_side": t.SLIDING_SHORT_SIDE,
            "sliding_max_long_side": t.SLIDING_MAX_LONG_SIDE,
            "window_size": t.WINDOW,
            "window_stride": t.WINDOW_STRIDE,
            "background_threshold": cfg.MODEL.BACKGROUND_THRESHOLD,
            "background_cleaning": t.BACKGROUND_CLEANING,
            "background_cleaning_lambda": t.BACKGROUND_CLEANING_LAMBDA,
            "pamr": t.PAMR,
            "pamr_iterations": t.PAMR_ITERATIONS,
            "pamr_dilations": list(t.PAMR_DILATIONS),
            "score_chunk_classes": t.SCORE_CHUNK_CLASSES,
            "input_format": cfg.INPUT.FORMAT,
        }

    @property
    def device(self) -> torch.device:
        return self.dinov2.pixel_mean.device

    # ------------------------------------------------------------------ vocabulary
    def set_test_vocabulary(self, class_names, *, background_by_threshold: bool = False, background_cleaning: Optional[bool] = None) -> None:
        """As the mixin's, plus background cleaning for this vocabulary (None: MODEL.TALK2DINO.BACKGROUND_CLEANING)."""
        super().set_test_vocabulary(class_names, background_by_threshold=background_by_threshold)
        self.test_background_cleaning = self.background_cleaning if background_cleaning is None else bool(background_cleaning)

    def test_dataset_options(self, metadata) -> dict:
        return {"background_cleaning": bool(getattr(metadata, BACKGROUND_CLEANING_METADATA_KEY, False))}

    def _cleaning_for(self, x: dict) -> bool:
        """Background cleaning for one input: its own ``background_cleaning``, else the test
        data set's setting, else (for a vocabulary given with the input) the config default."""
        if "background_cleaning" in x:
            return bool(x["background_cleaning"])
        return self.background_cleaning if x.get("vocabulary") else self.test_background_cleaning

    # ------------------------------------------------------------------ shared pieces
    def _rgb_float(self, x: dict) -> torch.Tensor:
        if "image" not in x:
            raise KeyError("this input has no 'image' (nor cached 'dino_head_embeddings'); use the caption or semantic mapper")
        image = x["image"].to(self.device).float()
        return image.flip(0) if self.input_format == "BGR" else image

    def class_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """[T, D] unit embeddings: the templates' raw CLIP embeddings averaged, then ψ."""
        raw = self.text_encoder(class_names, device=self.device)  # T x P x C, raw
        return F.normalize(self.projection(raw.mean(dim=1).float()), dim=-1, eps=NORMALIZE_EPS)

    def head_embeddings_from_inputs(self, batched_inputs: list[dict]) -> torch.Tensor:
        """[B, heads, D] per-head attention-weighted embeddings (not normalised), from the cached
        ``dino_head_embeddings`` where present, else from the image (same-size images batched).
        Always full precision and without gradient (DINOv2 is frozen)."""
        out: list[Optional[torch.Tensor]] = [None] * len(batched_inputs)
        by_size: dict[tuple, list[int]] = {}
        for i, x in enumerate(batched_inputs):
            if "dino_head_embeddings" in x:
                out[i] = x["dino_head_embeddings"].to(self.device, torch.float32)
            else:
                by_size.setdefault(tuple(self._rgb_float(x).shape), []).append(i)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            for indices in by_size.values():
                images = torch.stack([self._rgb_float(batched_inputs[i]) for i in indices])
                features = self.dinov2(self.dinov2.normalize(images))
                embeddings = attention_weighted_head_embeddings(features["patch_tokens"], features["cls_attention_logits"])
                for i, e in zip(indices, embeddings):
                    out[i] = e
        return torch.stack(out)  # type: ignore[arg-type]

    def encode_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """[B, C] raw CLIP text features of the captions (frozen tower, full precision)."""
        tokens = self.text_encoder.tokenizer(list(captions)).to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            return self.text_tower.encode_text(tokens).float()

    def caption_text_features_from_inputs(self, batched_inputs: list[dict]) -> torch.Tensor:
        """[B, C]: the cached ``caption_text_feature`` where present, else ``encode_captions``."""
        out: list[Optional[torch.Tensor]] = [None] * len(batched_inputs)
        to_encode = [i for i, x in enumerate(batched_inputs) if "caption_text_feature" not in x]
        missing = [i for i in to_encode if "caption" not in batched_inputs[i]]
        if missing:
            raise KeyError(f"inputs {missing} have neither 'caption' nor 'caption_text_feature': train Talk2DINO on a caption data set")
        for i, x in enumerate(batched_inputs):
            if "caption_text_feature" in x:
                out[i] = x["caption_text_feature"].to(self.device, torch.float32)
        if to_encode:
            for i, feature in zip(to_encode, self.encode_captions([batched_inputs[i]["caption"] for i in to_encode])):
                out[i] = feature
        return torch.stack(out)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.losses(batched_inputs)
        if any(key in x for x in batched_inputs for key in _CAPTION_KEYS):
            return self.caption_inference(batched_inputs)
        return self.segmentation_inference(batched_inputs)

    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        heads = self.head_embeddings_from_inputs(batched_inputs)
        text = self.projection(self.caption_text_features_from_inputs(batched_inputs))
        loss = talk2dino_contrastive_loss(heads, text, temperature=self.temperature, gather_negatives=self.gather_negatives)
        return {"loss_talk2dino": loss}

    def caption_inference(self, batched_inputs: list[dict]) -> list[dict]:
        heads = F.normalize(self.head_embeddings_from_inputs(batched_inputs), dim=-1)
        captions = F.normalize(self.projection(self.caption_text_features_from_inputs(batched_inputs)), dim=-1)
        return [{"head_embeddings": h, "caption_embedding": c} for h, c in zip(heads, captions)]

    def segmentation_inference(self, batched_inputs: list[dict]) -> list[dict]:
        results: list[Optional[dict]] = [None] * len(batched_inputs)
        for (vocabulary, background_by_threshold), indices in self.group_by_vocabulary(batched_inputs).items():
            text = self.class_embeddings(split_background_vocabulary(vocabulary, background_by_threshold))
            inputs = [batched_inputs[i] for i in indices]
            for index, score in zip(indices, self.sliding_inference(inputs, text)):
                if background_by_threshold:
                    score = add_background_channel(score, self.background_threshold)
                results[index] = {"sem_seg": score}
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ sliding window
    def sliding_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the image is resized to before cutting windows: short side SLIDING_SHORT_SIDE
        unless the long side would exceed SLIDING_MAX_LONG_SIDE (mmseg's keep-ratio rule)."""
        scale = min(self.sliding_max_long_side / max(height, width), self.sliding_short_side / min(height, width))
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def window_masks(self, windows: torch.Tensor, text: torch.Tensor, cleaning: Sequence[bool]) -> torch.Tensor:
        """Windows [N, 3, S, S] (RGB 0-255) -> sigmoid(cosine) maps [N, T, S/14, S/14], background-
        cleaned where ``cleaning[i]``."""
        features = self.dinov2(self.dinov2.normalize(windows))
        tokens = features["patch_tokens"]
        h, w = features["grid"]
        cosine = torch.einsum("bnd,td->btn", F.normalize(tokens.float(), dim=-1, eps=NORMALIZE_EPS), text.float())
        masks = cosine.sigmoid().unflatten(2, (h, w))
        clean = torch.tensor(list(cleaning), device=masks.device)
        if clean.any():
            cleaned = background_cleaning(
                masks[clean], text, tokens[clean], features["cls_attention_logits"][clean], weight=self.background_cleaning_lambda
            )
            masks = masks.clone()
            masks[clean] = cleaned
        return masks

    def sliding_inference(self, inputs: list[dict], text: torch.Tensor) -> list[torch.Tensor]:
        """Per input: T x height x width scores (sigmoid scale). The windows of all inputs run
        through DINOv2 as one batch."""
        window = (self.window_size, self.window_size)
        images, all_boxes, windows, cleaning = [], [], [], []
        for x in inputs:
            image = self._rgb_float(x)[None]
            size = self.sliding_size(*image.shape[-2:])
            if size != tuple(image.shape[-2:]):
                image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            boxes = window_boxes(*size, self.window_size, self.window_stride)
            crops = torch.cat([image[:, :, t:b, l:r] for t, l, b, r in boxes])
            if tuple(crops.shape[-2:]) != window:  # a side shorter than the window (aspect ratio above 4.57)
                crops = F.interpolate(crops, size=window, mode="bilinear", align_corners=False)
            images.append(image)
            all_boxes.append(boxes)
            windows.append(crops)
            cleaning += [self._cleaning_for(x)] * len(boxes)
        windows_t = torch.cat(windows)
        masks = self.window_masks(windows_t, text, cleaning)
        outputs, start = [], 0
        for x, image, boxes in zip(inputs, images, all_boxes):
            k = len(boxes)
            outputs.append(self._stitch(masks[start : start + k], windows_t[start : start + k], boxes, image.shape[-2:], x))
            start += k
        return outputs

    def _stitch(self, masks: torch.Tensor, windows: torch.Tensor, boxes, size, x: dict) -> torch.Tensor:
        """One image's window maps [K, T, h, w] -> [T, height, width], class chunk by chunk."""
        window = tuple(windows.shape[-2:])
        crop = (boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1])
        out_size = (x.get("height", size[0]), x.get("width", size[1]))
        affinity = pamr_affinity(windows, self.pamr_dilations) if self.pamr else None
        out = masks.new_empty(masks.shape[1], *out_size, dtype=torch.float32)
        for start in range(0, masks.shape[1], self.score_chunk_classes):
            chunk = F.interpolate(masks[:, start : start + self.score_chunk_classes].float(), size=window, mode="bilinear", align_corners=True)
            if self.pamr:
                chunk = pamr(chunk, windows, iterations=self.pamr_iterations, dilations=self.pamr_dilations, affinity=affinity)
            if crop != window:
                chunk = F.interpolate(chunk, size=crop, mode="bilinear", align_corners=False)
            stitched = stitch_windows(chunk, boxes, *size)  # 1 x t x H x W
            if tuple(stitched.shape[-2:]) != out_size:
                stitched = F.interpolate(stitched, size=out_size, mode="bilinear", align_corners=False)
            out[start : start + chunk.shape[1]] = stitched[0]
        return out
