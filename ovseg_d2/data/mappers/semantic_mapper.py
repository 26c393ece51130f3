"""``OpenVocabSemSegDatasetMapper``: dataset dict -> model input for semantic segmentation.

Reads an image and its label map, applies the same geometric augmentations to both (photometric
ones to the image only), and returns tensors. Used for training and for testing; at test time
only the resize is applied and the label (when the data set has one) is returned as read.

Output dict (the input dict's keys are kept, e.g. ``sem_seg_file_name`` for the evaluator)::

    image:     uint8 tensor (C, H', W') in cfg.INPUT.FORMAT channel order, after augmentation
    sem_seg:   int64 tensor (H', W'), class index per pixel, ignore_label where unlabelled
               (present whenever the dict has "sem_seg_file_name")
    height, width: ORIGINAL image size, i.e. the size predictions are evaluated at
    file_name, sem_seg_file_name: unchanged
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .color_aug import RandomColorAugSSD

__all__ = ["OpenVocabSemSegDatasetMapper", "DEFAULT_IGNORE_LABEL", "read_label_map", "pad_multiple_from_config"]

logger = logging.getLogger(__name__)

#: Ignore value used when the data set's metadata does not define ``ignore_label``.
DEFAULT_IGNORE_LABEL = 255
#: Fill value of image padding.
IMAGE_PAD_VALUE = 0
#: ``cfg.INPUT.SIZE_DIVISIBILITY`` value meaning "the crop size when cropping is on".
SIZE_DIVISIBILITY_FROM_CROP = -1
_FLIP_DIRECTIONS = {"horizontal": dict(horizontal=True, vertical=False), "vertical": dict(horizontal=False, vertical=True)}
_NO_FLIP = "none"


def read_label_map(file_name: str) -> np.ndarray:
    """Read a single-channel label file (PNG / TIFF; 8- or 16-bit) as an (H, W) integer array.

    Values are kept exactly (palette PNGs give their indices). uint8 stays uint8 (so resizing
    takes PIL's fast path); wider integer types are returned as float64, which represents them
    exactly and which detectron2's resize accepts (torch has no nearest resize for int64).
    """
    label = utils.read_image(file_name)  # format=None: no colour conversion, values as stored
    if label.ndim != 2:
        raise ValueError(f"Label file {file_name} must be single-channel, got array of shape {label.shape}")
    if label.dtype == np.uint8:
        return label
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"Label file {file_name} must hold integers, got dtype {label.dtype}")
    return label.astype(np.float64)


def _dataset_ignore_label(dataset_names: Sequence[str]) -> int:
    """``ignore_label`` of the first data set in ``dataset_names`` (metadata only, no disk access)."""
    if not dataset_names:
        return DEFAULT_IGNORE_LABEL
    return int(getattr(MetadataCatalog.get(dataset_names[0]), "ignore_label", DEFAULT_IGNORE_LABEL))


def pad_multiple_from_config(cfg) -> Optional[tuple[int, int]]:
    """(height, width) that training images/labels are padded up to a multiple of, or None.

    ``INPUT.SIZE_DIVISIBILITY`` > 0: that size on both sides. -1: the crop size when cropping
    is on with crop type "absolute" (so every crop comes out exactly CROP.SIZE), else None.
    0 (or -1 without an absolute crop): no padding.
    """
    divisibility = int(cfg.INPUT.SIZE_DIVISIBILITY)
    if divisibility > 0:
        return divisibility, divisibility
    if divisibility == SIZE_DIVISIBILITY_FROM_CROP and cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute":
        crop_h, crop_w = cfg.INPUT.CROP.SIZE
        return int(crop_h), int(crop_w)
    return None


def _writable_tensor(array: np.ndarray) -> torch.Tensor:
    """Tensor of ``array`` (contiguous), copying only if it is read-only (e.g. straight from PIL)."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def _flip_augmentation(random_flip: str) -> Optional[T.Augmentation]:
    if random_flip == _NO_FLIP:
        return None
    if random_flip not in _FLIP_DIRECTIONS:
        raise ValueError(f"INPUT.RANDOM_FLIP must be one of {[_NO_FLIP, *_FLIP_DIRECTIONS]}, got {random_flip!r}")
    return T.RandomFlip(**_FLIP_DIRECTIONS[random_flip])


class OpenVocabSemSegDatasetMapper:
    """Map a semantic-segmentation dataset dict to the model's input dict (see module doc).

    The callable reads files; it does not modify the dict it is given.
    """

    @configurable
    def __init__(
        self,
        *,
        is_train: bool,
        augmentations: list[Union[T.Augmentation, T.Transform]],
        image_format: str,
        ignore_label: int = DEFAULT_IGNORE_LABEL,
        pad_multiple: Optional[tuple[int, int]] = None,
    ):
        """
        Args:
            is_train: training mode (labels required; padding applied).
            augmentations: applied in order to image and label together.
            image_format: image channel order passed to ``read_image`` ("RGB", "BGR", ...).
            ignore_label: label value used to pad labels (and by the category-area crop).
            pad_multiple: in training, pad image (with 0) and label (with ``ignore_label``) at
                the bottom/right so height and width become multiples of (ph, pw); with crops no
                larger than that, this pads every crop to exactly (ph, pw). None: no padding.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = int(ignore_label)
        self.pad_multiple = tuple(pad_multiple) if pad_multiple is not None else None
        mode = "training" if is_train else "inference"
        logger.info("[%s] %s augmentations: %s", type(self).__name__, mode, augmentations)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict[str, Any]:
        """Build the constructor's arguments from ``cfg.INPUT`` (see ovseg_d2/config.py)."""
        if is_train:
            ignore_label = _dataset_ignore_label(cfg.DATASETS.TRAIN)
            augmentations: list[Union[T.Augmentation, T.Transform]] = [
                T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
            ]
            if cfg.INPUT.CROP.ENABLED:
                augmentations.append(
                    T.RandomCrop_CategoryAreaConstraint(
                        cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, ignore_label
                    )
                )
            if cfg.INPUT.COLOR_AUG_SSD:
                augmentations.append(RandomColorAugSSD(img_format=cfg.INPUT.FORMAT))
            flip = _flip_augmentation(cfg.INPUT.RANDOM_FLIP)
            if flip is not None:
                augmentations.append(flip)
            pad_multiple = pad_multiple_from_config(cfg)
        else:
            ignore_label = _dataset_ignore_label(cfg.DATASETS.TEST)
            augmentations = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
            pad_multiple = None
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore_label,
            "pad_multiple": pad_multiple,
        }

    def _pad(self, image: torch.Tensor, sem_seg: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Pad (C, H, W) image with 0 and (H, W) label with ignore_label up to ``pad_multiple``."""
        height, width = image.shape[-2:]
        multiple_h, multiple_w = self.pad_multiple
        pad_bottom = -height % multiple_h
        pad_right = -width % multiple_w
        if pad_bottom == 0 and pad_right == 0:
            return image, sem_seg
        padding = [0, pad_right, 0, pad_bottom]  # F.pad order: (left, right, top, bottom)
        image = F.pad(image, padding, value=IMAGE_PAD_VALUE)
        if sem_seg is not None:
            sem_seg = F.pad(sem_seg, padding, value=self.ignore_label)
        return image, sem_seg

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        """Read, augment and tensorise one sample (see the module doc for the output keys)."""
        dataset_dict = copy.deepcopy(dataset_dict)
        image_file = dataset_dict["file_name"]
        image = utils.read_image(image_file, format=self.image_format)  # (H, W, C), EXIF-aware
        utils.check_image_size(dataset_dict, image)
        original_height, original_width = image.shape[:2]

        label_file = dataset_dict.get("sem_seg_file_name")
        sem_seg = None
        if label_file is not None:
            sem_seg = read_label_map(label_file)
            if sem_seg.shape != image.shape[:2]:
                raise ValueError(
                    f"Image and label sizes differ: {image_file} is {image.shape[1]}x{image.shape[0]} (WxH) "
                    f"but {label_file} is {sem_seg.shape[1]}x{sem_seg.shape[0]} (WxH)"
                )
        elif self.is_train:
            raise ValueError(f"Training needs a label: the dataset dict of {image_file} has no 'sem_seg_file_name'")

        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg

        image_tensor = _writable_tensor(image.transpose(2, 0, 1))
        label_tensor = torch.from_numpy(sem_seg.astype(np.int64)) if sem_seg is not None else None
        if self.is_train and self.pad_multiple is not None:
            image_tensor, label_tensor = self._pad(image_tensor, label_tensor)

        dataset_dict["image"] = image_tensor
        if label_tensor is not None:
            dataset_dict["sem_seg"] = label_tensor
        dataset_dict["height"], dataset_dict["width"] = original_height, original_width
        return dataset_dict
