"""``RegionClassificationDatasetMapper``: a panoptic-style dict -> region-classification input.

Works on ``coco_2017_val_panoptic_regions``, on detectron2's own panoptic sets (``segments_info``
+ ``pan_seg_file_name``, e.g. ``coco_2017_val_panoptic``) and on region views of semantic sets
(``segments_info`` + ``sem_seg_file_name``, see ``data/datasets/sem_seg_regions.py``). The image
is prepared exactly as CLIPSelf's student sees it in training (longest side
``MODEL.CLIPSELF.STUDENT_SIZE``, zero-padded to a square). Output dict (input keys kept)::

    image:          uint8 (3, S, S) in INPUT.FORMAT
    content_size:   (h, w) of the resized image inside the square
    region_boxes:   float32 (K, 4) XYXY of each segment's box in the resized image
    region_classes: int64 (K,) contiguous class ids (indices into ``stuff_classes``)
    region_is_thing: bool (K,)
    segment_map:    int64 (H0, W0) at the ORIGINAL size: segment index 0..K-1, -1 elsewhere
    height, width:  original size

A segment's box is its ``bbox`` when the dict gives one, else the tight box of its mask.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode

from ..datasets.coco_panoptic import panoptic_segment_masks
from ..datasets.sem_seg_regions import DEFAULT_MIN_SEGMENT_AREA, label_segments
from .clipself_mapper import resize_longest_and_pad
from .semantic_mapper import read_label_map

__all__ = ["RegionClassificationDatasetMapper"]


class RegionClassificationDatasetMapper:
    """Image, segment boxes, classes and the segment-index map of one image (module doc)."""

    @configurable
    def __init__(
        self,
        *,
        image_size: int,
        image_format: str,
        class_is_thing: Optional[Sequence[bool]] = None,
        thing_class_ids: Sequence[int] = (),
        ignore_label: int = 255,
        min_segment_area: int = DEFAULT_MIN_SEGMENT_AREA,
    ):
        self.image_size = int(image_size)
        self.image_format = image_format
        self.class_is_thing = list(class_is_thing) if class_is_thing is not None else None
        self.thing_class_ids = tuple(thing_class_ids)
        self.ignore_label = int(ignore_label)
        self.min_segment_area = int(min_segment_area)

    @classmethod
    def from_config(cls, cfg, dataset_name: str) -> dict[str, Any]:
        meta = MetadataCatalog.get(dataset_name)
        class_is_thing = getattr(meta, "class_is_thing", None)
        if class_is_thing is None and hasattr(meta, "thing_dataset_id_to_contiguous_id") and hasattr(meta, "stuff_classes"):
            things = set(meta.thing_dataset_id_to_contiguous_id.values())  # detectron2's standard panoptic metadata
            class_is_thing = [i in things for i in range(len(meta.stuff_classes))]
        return {
            "image_size": cfg.MODEL.CLIPSELF.STUDENT_SIZE,
            "image_format": cfg.INPUT.FORMAT,
            "class_is_thing": class_is_thing,
            "thing_class_ids": getattr(meta, "thing_class_ids", ()),
            "ignore_label": getattr(meta, "ignore_label", 255),
            "min_segment_area": getattr(meta, "min_segment_area", DEFAULT_MIN_SEGMENT_AREA),
        }

    def _segment_ids(self, dataset_dict: dict) -> np.ndarray:
        """(H0, W0) segment ids matching ``segments_info[*]["id"]``."""
        if "pan_seg_file_name" in dataset_dict:
            return panoptic_segment_masks(dataset_dict)
        if "sem_seg_file_name" in dataset_dict:
            segment_map, _ = label_segments(
                read_label_map(dataset_dict["sem_seg_file_name"]),
                thing_class_ids=self.thing_class_ids,
                ignore_label=self.ignore_label,
                min_area=self.min_segment_area,
            )
            return segment_map
        raise KeyError(
            f"{dataset_dict.get('file_name')}: a region-classification dict needs 'pan_seg_file_name' (panoptic PNG) "
            "or 'sem_seg_file_name' (a region view of a semantic set) next to 'segments_info'"
        )

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        if "segments_info" not in dataset_dict:
            raise KeyError(f"{dataset_dict.get('file_name')}: no 'segments_info'; is this a panoptic-style (region) data set?")
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        height, width = image.shape[:2]
        tensor, content = resize_longest_and_pad(image, self.image_size)
        ids = self._segment_ids(dataset_dict)
        if ids.shape != (height, width):
            raise ValueError(f"{dataset_dict['file_name']}: segment map {ids.shape} vs image {(height, width)}")

        index_map = np.full(ids.shape, -1, dtype=np.int64)
        boxes, classes, is_thing = [], [], []
        for segment in dataset_dict["segments_info"]:
            mask = ids == segment["id"]
            if not mask.any():
                continue  # listed but absent from the map (e.g. lost at annotation time)
            index_map[mask] = len(boxes)
            if "bbox" in segment:
                box = BoxMode.convert(list(segment["bbox"]), segment.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS)
            else:
                ys, xs = np.nonzero(mask)
                box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            boxes.append(box)
            category = int(segment["category_id"])
            classes.append(category)
            thing = segment.get("isthing")
            if thing is None:
                thing = bool(self.class_is_thing[category]) if self.class_is_thing is not None else False
            is_thing.append(bool(thing))
        scale = np.array([content[1] / width, content[0] / height] * 2)
        region_boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
        dataset_dict.pop("segments_info")
        dataset_dict["image"] = tensor
        dataset_dict["content_size"] = content
        dataset_dict["region_boxes"] = torch.as_tensor(region_boxes, dtype=torch.float32)
        dataset_dict["region_classes"] = torch.as_tensor(classes, dtype=torch.long)
        dataset_dict["region_is_thing"] = torch.as_tensor(is_thing, dtype=torch.bool)
        dataset_dict["segment_map"] = torch.from_numpy(index_map)
        dataset_dict["height"], dataset_dict["width"] = height, width
        return dataset_dict
