"""``CaptionDatasetMapper``: a caption dataset dict (one per caption) -> Talk2DINO's input.

Input: the dicts of a caption set (``coco_2014_{train,val}_captions``, ``ovseg_shapes_*_captions``):
``file_name``, ``image_id``, ``height``, ``width``, ``caption``, ``caption_id``.

The image is prepared as in Talk2DINO's training, with no augmentation, for training and testing
alike: the short side is resized to ``INPUT.CAPTION.IMAGE_SIZE`` with bicubic interpolation
(the long side becomes ``int(size * long / short)``, torchvision's ``Resize(size)`` arithmetic),
then the centre square of that size is cut (top/left offset ``round((side - size) / 2)``,
torchvision's ``CenterCrop``). ImageNet normalisation is the model's job, not the mapper's.
Output dict (input keys kept)::

    image:       uint8 tensor (3, S, S) in INPUT.FORMAT channel order, S = IMAGE_SIZE
    height, width: ORIGINAL image size
    image_id, caption (str), caption_id (int): unchanged

With ``INPUT.CAPTION.FEATURE_CACHE_DIR`` (see ``ovseg_d2/data/feature_cache.py``) no image is
read; instead::

    dino_head_embeddings: float32 (heads, D_v), the image's attention-weighted per-head embeddings
    caption_text_feature: float32 (C,), raw CLIP ``encode_text`` of the caption (C = 512 for ViT-B/16)
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

__all__ = ["CaptionDatasetMapper", "resize_short_side_and_centre_crop", "caption_crop_geometry"]


def caption_crop_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, crop top, crop left) of :func:`resize_short_side_and_centre_crop`."""
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    return new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def resize_short_side_and_centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) uint8: short side to ``size`` (bicubic), centre square."""
    height, width = image.shape[:2]
    new_h, new_w, top, left = caption_crop_geometry(height, width, size)
    transforms = []
    if (new_h, new_w) != (height, width):
        transforms.append(T.ResizeTransform(height, width, new_h, new_w, Image.BICUBIC))
    if (new_h, new_w) != (size, size):
        transforms.append(T.CropTransform(left, top, size, size))
    return T.TransformList(transforms).apply_image(image) if transforms else image


class CaptionDatasetMapper:
    """Read and prepare one caption sample's image, or look up its cached features (module doc).

    The callable does not modify the dict it is given.
    """

    @configurable
    def __init__(self, *, image_size: int, image_format: str, feature_cache: Optional[Any] = None):
        """
        Args:
            image_size: side of the square image the model gets (short-side resize + centre crop).
            image_format: channel order passed to ``read_image`` ("RGB", "BGR", ...).
            feature_cache: a :class:`~ovseg_d2.data.feature_cache.FeatureCacheReader`; when given,
                cached features are emitted instead of the image.
        """
        if int(image_size) <= 0:
            raise ValueError(f"INPUT.CAPTION.IMAGE_SIZE must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.image_format = image_format
        self.feature_cache = feature_cache

    @classmethod
    def from_config(cls, cfg, dataset_names: Sequence[str] = (), is_train: bool = True) -> dict[str, Any]:
        """Arguments from ``cfg.INPUT`` (ovseg_d2/config.py). With ``INPUT.CAPTION.FEATURE_CACHE_DIR``
        the cache is opened for ``dataset_names`` (the sets this mapper will see): training sets
        must be in it; test sets it does not hold are read from images (``open_feature_cache``)."""
        from ..feature_cache import open_feature_cache

        return {
            "image_size": cfg.INPUT.CAPTION.IMAGE_SIZE,
            "image_format": cfg.INPUT.FORMAT,
            "feature_cache": open_feature_cache(cfg, list(dataset_names), is_train),
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        for key in ("image_id", "caption", "caption_id"):
            if key not in dataset_dict:
                raise KeyError(f"{dataset_dict.get('file_name')}: no {key!r}; is this a caption data set (evaluator_type 'captions')?")
        if self.feature_cache is not None:
            dataset_dict.update(self.feature_cache.lookup(dataset_dict["image_id"], dataset_dict["caption_id"]))
            return dataset_dict
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)  # (H, W, C), EXIF-aware
        utils.check_image_size(dataset_dict, image)
        height, width = image.shape[:2]
        image = resize_short_side_and_centre_crop(image, self.image_size)
        dataset_dict["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["height"], dataset_dict["width"] = height, width
        return dataset_dict
