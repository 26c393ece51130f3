"""``CLIPSelfDatasetMapper``: dataset dict -> CLIPSelf training input (student image + regions).

The image is resized so that its longest side is ``MODEL.CLIPSELF.STUDENT_SIZE`` (bilinear) and
zero-padded bottom/right to a square. Regions are drawn here (data-loader workers, seeded by
detectron2 per worker) and the teacher's crops are cut on the device by the model, all at once,
from these boxes. Output dict (input keys kept)::

    image:         uint8 (3, S, S) in INPUT.FORMAT, S = STUDENT_SIZE, content top-left
    content_size:  (h, w) of the resized image inside the square
    region_boxes:  float32 (K, 4) XYXY pixels of the student image: what the student pools
    teacher_boxes: float32 (K, 4) what the teacher crops (= region_boxes for the grid;
                   enlarged by PROPOSAL_CROP_SCALE and clipped for proposals)
    height, width: original image size

Grid regions: :func:`~ovseg_d2.modeling.region_sampling.sample_grid_boxes` over the content.
Proposal regions: the dict's ``proposal_boxes`` (detectron2's ``MODEL.LOAD_PROPOSALS`` with
``DATASETS.PROPOSAL_FILES_TRAIN``), the ``DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN`` with the
highest objectness, shuffled, at most ``MAX_REGIONS``.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from ...modeling.region_sampling import clip_boxes, enlarge_boxes, sample_grid_boxes

__all__ = ["CLIPSelfDatasetMapper", "resize_longest_and_pad", "REGION_SOURCES"]

logger = logging.getLogger(__name__)

REGION_SOURCES = ("grid", "proposals")
_SEED_BOUND = 2**31 - 1


def resize_longest_and_pad(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(H, W, C) uint8 -> (C, size, size) uint8 tensor: longest side resized to ``size``
    (bilinear, aspect kept), zero-padded bottom/right; and the (h, w) of the resized content."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (new_h, new_w) != (h, w):
        image = T.ResizeTransform(h, w, new_h, new_w, Image.BILINEAR).apply_image(image)
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    tensor = F.pad(tensor, (0, size - new_w, 0, size - new_h), value=0)
    return tensor, (new_h, new_w)


class CLIPSelfDatasetMapper:
    """Make the padded student image and the region / teacher boxes of one image (module doc)."""

    @configurable
    def __init__(
        self,
        *,
        student_size: int,
        image_format: str,
        region_source: str,
        max_regions: int,
        grid_max_splits: int,
        proposal_crop_scale: float,
        proposal_min_size: float,
        proposal_topk: int,
    ):
        if region_source not in REGION_SOURCES:
            raise ValueError(f"MODEL.CLIPSELF.REGION_SOURCE={region_source!r} is not one of {REGION_SOURCES}")
        self.student_size = int(student_size)
        self.image_format = image_format
        self.region_source = region_source
        self.max_regions = int(max_regions)
        self.grid_max_splits = int(grid_max_splits)
        self.proposal_crop_scale = float(proposal_crop_scale)
        self.proposal_min_size = float(proposal_min_size)
        self.proposal_topk = int(proposal_topk)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict[str, Any]:
        c = cfg.MODEL.CLIPSELF
        if c.REGION_SOURCE == "proposals" and not (cfg.MODEL.LOAD_PROPOSALS and cfg.DATASETS.PROPOSAL_FILES_TRAIN):
            raise ValueError(
                "MODEL.CLIPSELF.REGION_SOURCE 'proposals' needs MODEL.LOAD_PROPOSALS True and "
                "DATASETS.PROPOSAL_FILES_TRAIN (one detectron2 proposals file per training set)"
            )
        return {
            "student_size": c.STUDENT_SIZE,
            "image_format": cfg.INPUT.FORMAT,
            "region_source": c.REGION_SOURCE,
            "max_regions": c.MAX_REGIONS,
            "grid_max_splits": c.GRID_MAX_SPLITS,
            "proposal_crop_scale": c.PROPOSAL_CROP_SCALE,
            "proposal_min_size": c.PROPOSAL_MIN_SIZE,
            "proposal_topk": cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN,
        }

    def _proposal_boxes(self, dataset_dict: dict, scale: np.ndarray, content: tuple[int, int], rng) -> np.ndarray:
        if "proposal_boxes" not in dataset_dict:
            raise KeyError(f"{dataset_dict.get('file_name')}: no 'proposal_boxes'; is MODEL.LOAD_PROPOSALS on with a proposals file?")
        boxes = BoxMode.convert(
            np.asarray(dataset_dict["proposal_boxes"], dtype=np.float64).reshape(-1, 4),
            dataset_dict.get("proposal_bbox_mode", BoxMode.XYXY_ABS),
            BoxMode.XYXY_ABS,
        )
        logits = np.asarray(dataset_dict.get("proposal_objectness_logits", np.zeros(len(boxes))), dtype=np.float64)
        boxes = clip_boxes(boxes * scale, *content)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.proposal_min_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.proposal_min_size)
        boxes, logits = boxes[keep], logits[keep]
        boxes = boxes[np.argsort(-logits, kind="stable")[: self.proposal_topk]]
        return boxes[rng.permutation(len(boxes))[: self.max_regions]]

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        height, width = image.shape[:2]
        tensor, content = resize_longest_and_pad(image, self.student_size)
        scale = np.array([content[1] / width, content[0] / height] * 2)  # x, y, x, y
        rng = np.random.default_rng(np.random.randint(_SEED_BOUND))  # detectron2 seeds np.random per worker
        if self.region_source == "grid":
            boxes, _ = sample_grid_boxes(*content, max_regions=self.max_regions, max_splits=self.grid_max_splits, rng=rng)
            teacher = boxes
        else:
            boxes = self._proposal_boxes(dataset_dict, scale, content, rng)
            teacher = enlarge_boxes(boxes, self.proposal_crop_scale, *content)
        for key in ("proposal_boxes", "proposal_objectness_logits", "proposal_bbox_mode", "sem_seg_file_name"):
            dataset_dict.pop(key, None)
        dataset_dict["image"] = tensor
        dataset_dict["content_size"] = content
        dataset_dict["region_boxes"] = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        dataset_dict["teacher_boxes"] = torch.as_tensor(teacher, dtype=torch.float32).reshape(-1, 4)
        dataset_dict["height"], dataset_dict["width"] = height, width
        return dataset_dict
