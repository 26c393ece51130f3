"""``OpenVocabPredictor``: segment your own images with your own class names.

In the spirit of detectron2's ``DefaultPredictor``: builds the model from the config, loads
``MODEL.WEIGHTS`` (ovseg_d2's checkpointer: strict, ``weights_only``), eval mode, the test-time
resize of ``cfg.INPUT`` (``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``), then calls the
meta-architecture with detectron2's input dicts plus ``vocabulary``. It relies only on the
interface every ovseg_d2 meta-architecture shares (``TestVocabularyMixin``; inputs with
"image"/"height"/"width"/"vocabulary"; outputs ``{"sem_seg": T x H x W}``) and on the declared
``predicts_background_by_threshold``.

Very large images: the model always works at the capped test resolution (``MAX_SIZE_TEST``);
``scores_at="working"`` keeps the T x h x w scores at that resolution and computes the H x W
labels band by band (``upsample_argmax``), so memory grows with H x W, not with T x H x W.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from ..checkpoint import build_checkpointer
from ..data.image_loading import read_image_rgb
from ..modeling.background import BACKGROUND_INDEX
from ..modeling.text import parse_vocabulary

__all__ = ["OpenVocabPredictor", "upsample_argmax", "PRECISIONS", "BACKGROUND_NAME"]

#: ``TEST.PRECISION`` values -> autocast dtype (None: plain float32)
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: name of the threshold background class in outputs
BACKGROUND_NAME = "background"
#: score elements (classes x rows x columns) upsampled at a time by ``upsample_argmax``
DEFAULT_BAND_ELEMENTS = 2**24

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]


def upsample_argmax(scores: torch.Tensor, size: tuple[int, int], *, max_elements: int = DEFAULT_BAND_ELEMENTS) -> torch.Tensor:
    """argmax over classes of ``F.interpolate(scores[None], size, bilinear, align_corners=False)``
    without materialising the T x H x W upsampled scores: rows are done in bands of at most
    ``max_elements`` score values (bilinear sampling with ``grid_sample``, border padding, which
    is the same interpolation). scores: T x h x w -> H x W long."""
    num_classes, h, w = scores.shape
    out_h, out_w = size
    rows = max(1, max_elements // max(1, num_classes * out_w))
    device = scores.device
    xs = (torch.arange(out_w, device=device, dtype=torch.float32) + 0.5) * (2.0 / out_w) - 1.0
    labels = torch.empty(out_h, out_w, dtype=torch.long, device=device)
    source = scores[None].float()
    for start in range(0, out_h, rows):
        stop = min(out_h, start + rows)
        ys = (torch.arange(start, stop, device=device, dtype=torch.float32) + 0.5) * (2.0 / out_h) - 1.0
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]  # 1 x band x W x (x, y)
        band = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
        labels[start:stop] = band[0].max(dim=0).indices  # as argmax (first maximum), about 2x faster on CPU
    return labels


class OpenVocabPredictor:
    """``predictor(image, vocabulary) -> dict`` for any ovseg_d2 meta-architecture.

    Args:
        cfg: a config with ovseg_d2's keys (``add_ovseg_config``); not modified.
        device: overrides ``MODEL.DEVICE`` ("cpu", "cuda", "cuda:1").
        precision: overrides ``TEST.PRECISION``: "float32" | "bfloat16" (autocast, CPU or
            CUDA) | "float16" (autocast, CUDA only).

    ``image``: a path, a PIL image (read as RGB: EXIF orientation, grayscale, alpha and 16-bit
    handled by ``read_image_rgb``) or an H x W x 3 uint8 array in ``cfg.INPUT.FORMAT``.
    ``vocabulary``: a list of class names; a name may hold synonyms "a, b" / "a; b", used
    according to ``MODEL.TEXT.SYNONYMS``.

    Returns a dict:
        ``sem_seg``: T x H x W float32 scores at the input resolution (``scores_at="working"``:
            at the model's working resolution instead);
        ``labels``: H x W long, argmax of the scores;
        ``vocabulary``: the display name of each score channel (the first synonym);
        ``synonyms``: per channel, the synonyms the method encoded;
        ``background``: H x W bool, only when background is scored by threshold; then channel 0
            is "background" (a constant ``MODEL.BACKGROUND_THRESHOLD``) and a pixel is background
            unless some class scores above it.
    """

    def __init__(self, cfg, *, device: Optional[str] = None, precision: Optional[str] = None):
        self.cfg = cfg.clone()
        self.cfg.defrost()
        if device is not None:
            self.cfg.MODEL.DEVICE = device
        self.cfg.freeze()
        self.precision = precision or self.cfg.TEST.PRECISION
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {tuple(PRECISIONS)} (TEST.PRECISION)")
        self.device = torch.device(self.cfg.MODEL.DEVICE)
        if self.precision == "float16" and self.device.type != "cuda":
            raise ValueError(f"float16 inference needs CUDA (device is {self.device}); use bfloat16 or float32")
        self.model = build_model(self.cfg).eval()
        weights = self.cfg.MODEL.WEIGHTS
        if weights:
            if "://" not in weights and not os.path.isfile(weights):  # fvcore would only assert
                raise FileNotFoundError(f"MODEL.WEIGHTS {weights}: no such file; give the path of a trained model (.pth) or '' for the config's own weights")
            build_checkpointer(self.cfg, self.model).load(weights)
        self.input_format = self.cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={self.input_format!r}: the predictor reads RGB or BGR images")
        min_size = self.cfg.INPUT.MIN_SIZE_TEST
        self.resize = T.ResizeShortestEdge([min_size, min_size], self.cfg.INPUT.MAX_SIZE_TEST) if min_size > 0 else None
        self.synonym_rule = self.cfg.MODEL.TEXT.SYNONYMS
        self.background_by_default = bool(getattr(self.model, "predicts_background_by_threshold", False))

    # ------------------------------------------------------------------ inputs
    def parse_vocabulary(self, vocabulary: Sequence[str], background: Optional[bool] = None) -> tuple[list[str], list[list[str]], bool]:
        """(names passed to the model, synonyms per output channel, background by threshold).

        Raises ValueError for an empty vocabulary, an empty name or duplicate classes (including
        "background" when background is scored by threshold)."""
        use_background = self.background_by_default if background is None else bool(background)
        synonyms = parse_vocabulary(vocabulary, self.synonym_rule)
        names = [name.strip() for name in vocabulary]
        if use_background:
            clashing = [name for name, s in zip(names, synonyms) if BACKGROUND_NAME in (x.lower() for x in s)]
            if clashing:
                raise ValueError(
                    f"{clashing} name 'background', which this model scores by threshold (not by text); "
                    "remove it from the vocabulary or pass background=False"
                )
            names = [BACKGROUND_NAME] + names
            synonyms = [[BACKGROUND_NAME]] + synonyms
        return names, synonyms, use_background

    def load_image(self, image: ImageSource) -> np.ndarray:
        """H x W x 3 uint8 in ``INPUT.FORMAT`` (arrays are taken to be in that format already)."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"an image array must be H x W x 3 uint8 in INPUT.FORMAT ({self.input_format}); got "
                    f"{image.dtype} of shape {image.shape}. Pass a path or a PIL image to have it converted."
                )
            return image
        if not isinstance(image, (str, os.PathLike, Image.Image)):
            raise TypeError(f"image must be a path, a PIL image or an H x W x 3 uint8 array, not {type(image).__name__}")
        rgb = read_image_rgb(image)
        return np.ascontiguousarray(rgb[..., ::-1]) if self.input_format == "BGR" else rgb

    def _model_input(self, array: np.ndarray, names: list[str], background: bool, scores_at: str) -> dict:
        height, width = array.shape[:2]
        resized = self.resize.get_transform(array).apply_image(array) if self.resize is not None else array
        out_size = (height, width) if scores_at == "input" else resized.shape[:2]
        return {
            "image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
            "height": out_size[0],
            "width": out_size[1],
            "vocabulary": names,
            "background_by_threshold": background,
        }

    # ------------------------------------------------------------------ prediction
    def __call__(self, image: ImageSource, vocabulary: Sequence[str], *, background: Optional[bool] = None, scores_at: str = "input") -> dict:
        """Predict one image; see the class docstring. ``background`` None: the model's default."""
        return self.predict_batch([image], vocabulary, background=background, scores_at=scores_at)[0]

    def predict_batch(
        self,
        images: Iterable[ImageSource],
        vocabulary: Sequence[str],
        *,
        batch_size: int = 4,
        background: Optional[bool] = None,
        scores_at: str = "input",
    ) -> list[dict]:
        """Predict many images with one vocabulary, up to ``batch_size`` images per model call
        (images of the same working size are batched together; the text embeddings are computed
        once). Each result equals that of ``predictor(image, vocabulary)``. Returns one dict per
        image, in order."""
        if scores_at not in ("input", "working"):
            raise ValueError(f"scores_at must be 'input' or 'working', got {scores_at!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        names, synonyms, use_background = self.parse_vocabulary(vocabulary, background)
        results: list[dict] = []
        pending: list[np.ndarray] = []
        for image in images:
            pending.append(self.load_image(image))
            if len(pending) == batch_size:
                results += self._predict_arrays(pending, names, synonyms, use_background, scores_at)
                pending = []
        if pending:
            results += self._predict_arrays(pending, names, synonyms, use_background, scores_at)
        return results

    def _predict_arrays(self, arrays, names, synonyms, use_background, scores_at) -> list[dict]:
        inputs = [self._model_input(a, names, use_background, scores_at) for a in arrays]
        # Only images of the same working size share a model call: a meta-architecture that pads
        # a batch to a common size (the baseline) would otherwise let padding tokens change the
        # scores, and an image's result would depend on the other images of its batch.
        by_size: dict[tuple, list[int]] = {}
        for i, x in enumerate(inputs):
            by_size.setdefault(tuple(x["image"].shape), []).append(i)
        outputs: list = [None] * len(inputs)
        dtype = PRECISIONS[self.precision]
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            for indices in by_size.values():
                for i, output in zip(indices, self.model([inputs[i] for i in indices])):
                    outputs[i] = output
        results = []
        for array, output in zip(arrays, outputs):
            scores = output["sem_seg"].float()
            if scores.shape[0] != len(names):
                raise RuntimeError(f"{type(self.model).__name__} returned {scores.shape[0]} score channels for {len(names)} classes")
            size = tuple(array.shape[:2])
            labels = scores.argmax(dim=0) if tuple(scores.shape[-2:]) == size else upsample_argmax(scores, size)
            result = {"sem_seg": scores, "labels": labels, "vocabulary": [s[0] for s in synonyms], "synonyms": synonyms}
            if use_background:
                result["background"] = labels == BACKGROUND_INDEX
            results.append(result)
        return results
