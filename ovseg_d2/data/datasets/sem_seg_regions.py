"""A region view of a registered semantic-segmentation set: panoptic-style segments from labels.

Region classification (CLIPSelf's evaluation) needs ground-truth segments with a class, a box
and a mask. A semantic label map gives them: every connected component (8-connectivity) of a
*thing* class is one segment, every *stuff* class present is one segment. The view's dicts are
the source set's dicts plus ``segments_info`` in the COCO-panoptic form used by
``coco_2017_val_panoptic_regions`` (``id``, ``category_id``, ``isthing``, ``bbox`` XYXY_ABS,
``area``); :func:`label_segments` recomputes the same id map from the label file, so the
mapper and the loader always agree. Segments smaller than ``min_area`` pixels are dropped.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from .register_sem_seg import register_lazy_dataset

__all__ = ["label_segments", "register_sem_seg_region_view", "DEFAULT_MIN_SEGMENT_AREA"]

#: Segments with fewer pixels are dropped (slivers left between overlapping shapes).
DEFAULT_MIN_SEGMENT_AREA = 16
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def label_segments(
    label: np.ndarray, *, thing_class_ids: Sequence[int], ignore_label: int, min_area: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(H, W) class labels -> (H, W) int32 segment ids (0 = none) and their descriptions.

    Ids are 1, 2, ... in order of class id, then of scipy's component order (row-major scan).
    """
    from scipy import ndimage

    label = np.asarray(label)
    things = set(int(c) for c in thing_class_ids)
    segment_map = np.zeros(label.shape, dtype=np.int32)
    segments = []
    for class_id in np.unique(label):
        class_id = int(class_id)
        if class_id == ignore_label:
            continue
        mask = label == class_id
        if class_id in things:
            components, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            parts = [components == i for i in range(1, count + 1)]
        else:
            parts = [mask]
        for part in parts:
            area = int(part.sum())
            if area < min_area:
                continue
            ys, xs = np.nonzero(part)
            segment_id = len(segments) + 1
            segment_map[part] = segment_id
            segments.append(
                {
                    "id": segment_id,
                    "category_id": class_id,
                    "isthing": class_id in things,
                    "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                    "bbox_mode": 0,  # BoxMode.XYXY_ABS
                    "area": area,
                    "iscrowd": 0,
                }
            )
    return segment_map, segments


def _load_region_view(source: str, thing_class_ids: tuple[int, ...], ignore_label: int, min_area: int) -> list[dict]:
    from detectron2.data import DatasetCatalog

    from ..mappers.semantic_mapper import read_label_map

    dicts = []
    for record in DatasetCatalog.get(source):
        _, segments = label_segments(
            read_label_map(record["sem_seg_file_name"]), thing_class_ids=thing_class_ids, ignore_label=ignore_label, min_area=min_area
        )
        dicts.append(dict(record, segments_info=segments))
    return dicts


def register_sem_seg_region_view(
    name: str,
    source: str,
    *,
    class_names: Sequence[str],
    thing_class_ids: Sequence[int],
    ignore_label: int,
    min_area: int = DEFAULT_MIN_SEGMENT_AREA,
    extra_metadata: dict | None = None,
) -> None:
    """Register ``name``: the region view of the registered semantic set ``source`` (lazy, no disk access)."""
    things = tuple(sorted(int(c) for c in thing_class_ids))
    register_lazy_dataset(
        name,
        functools.partial(_load_region_view, source, things, int(ignore_label), int(min_area)),
        dict(
            source_dataset=source,
            stuff_classes=list(class_names),
            thing_classes=list(class_names),
            class_is_thing=[i in things for i in range(len(class_names))],
            thing_class_ids=list(things),
            ignore_label=int(ignore_label),
            min_segment_area=int(min_area),
            evaluator_type="region_classification",
            **(extra_metadata or {}),
        ),
    )
