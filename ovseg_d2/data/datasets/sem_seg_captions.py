"""A caption view of a registered semantic-segmentation set: captions written from its labels.

Talk2DINO trains on (image, caption) pairs. A label map says which classes an image shows, so
captions can be written from it, deterministically: the objects (classes that are not
background) in class-id order, and the background, in a few fixed phrasings
(:data:`CAPTION_TEMPLATES`), e.g. for a sand image with a red circle and a striped square::

    "a photo of a red circle and a striped square"
    "a red circle and a striped square on a sand background"
    "a sand background with a striped square and a red circle"

A class is mentioned when it covers at least ``min_area`` labelled pixels (slivers left between
overlapping shapes are not). An image without objects gets only ``"a photo of <background>"``;
one without background only the templates that need no background.

The view's dicts are the source set's dicts, one per caption (like ``coco_2014_*_captions``),
plus ``caption`` (str) and ``caption_id`` (int, ``image index * len(CAPTION_TEMPLATES) + k``,
unique within the view). Its metadata has ``evaluator_type="captions"``.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from .register_sem_seg import register_lazy_dataset
from .sem_seg_regions import DEFAULT_MIN_SEGMENT_AREA

__all__ = ["CAPTION_TEMPLATES", "captions_from_label", "mentioned_classes", "register_sem_seg_caption_view"]

#: ``{objects}``: the objects in class-id order, ``{objects_reversed}``: in reverse order,
#: ``{background}``: the background class(es).
CAPTION_TEMPLATES = (
    "a photo of {objects}",
    "{objects} on {background}",
    "{background} with {objects_reversed}",
)
NO_OBJECT_TEMPLATE = "a photo of {background}"


def _with_article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _enumerate(names: Sequence[str]) -> str:
    """["x", "y", "z"] -> "a x, a y and a z"."""
    phrases = [_with_article(n) for n in names]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def mentioned_classes(label: np.ndarray, *, ignore_label: int, min_area: int) -> list[int]:
    """Sorted class ids with at least ``min_area`` pixels in the (H, W) ``label`` (ignore excluded)."""
    ids, counts = np.unique(np.asarray(label), return_counts=True)
    return [int(c) for c, n in zip(ids, counts) if c != ignore_label and n >= min_area]


def captions_from_label(
    label: np.ndarray,
    class_names: Sequence[str],
    *,
    background_class_ids: Sequence[int],
    ignore_label: int,
    min_area: int = DEFAULT_MIN_SEGMENT_AREA,
) -> list[str]:
    """The captions of one (H, W) label map (rules in the module doc)."""
    present = mentioned_classes(label, ignore_label=ignore_label, min_area=min_area)
    backgrounds = set(int(c) for c in background_class_ids)
    objects = [class_names[c] for c in present if c not in backgrounds]
    background = [class_names[c] for c in present if c in backgrounds]
    fields = {"background": _enumerate(background) if background else ""}
    if not objects:
        return [NO_OBJECT_TEMPLATE.format(**fields)] if background else []
    fields.update(objects=_enumerate(objects), objects_reversed=_enumerate(objects[::-1]))
    return [t.format(**fields) for t in CAPTION_TEMPLATES if background or "{background}" not in t]


def _load_caption_view(source: str, class_names: tuple[str, ...], background_class_ids: tuple[int, ...], ignore_label: int, min_area: int) -> list[dict]:
    from detectron2.data import DatasetCatalog

    from ..mappers.semantic_mapper import read_label_map

    dicts = []
    for index, record in enumerate(DatasetCatalog.get(source)):
        captions = captions_from_label(
            read_label_map(record["sem_seg_file_name"]),
            class_names,
            background_class_ids=background_class_ids,
            ignore_label=ignore_label,
            min_area=min_area,
        )
        for k, caption in enumerate(captions):
            dicts.append(dict(record, caption=caption, caption_id=index * len(CAPTION_TEMPLATES) + k))
    return dicts


def register_sem_seg_caption_view(
    name: str,
    source: str,
    *,
    class_names: Sequence[str],
    background_class_ids: Sequence[int],
    ignore_label: int,
    min_area: int = DEFAULT_MIN_SEGMENT_AREA,
    extra_metadata: dict | None = None,
) -> None:
    """Register ``name``: the caption view of the registered semantic set ``source`` (lazy, no disk access)."""
    backgrounds = tuple(sorted(int(c) for c in background_class_ids))
    register_lazy_dataset(
        name,
        functools.partial(_load_caption_view, source, tuple(class_names), backgrounds, int(ignore_label), int(min_area)),
        dict(
            source_dataset=source,
            stuff_classes=list(class_names),
            background_class_ids=list(backgrounds),
            ignore_label=int(ignore_label),
            min_caption_area=int(min_area),
            caption_templates=list(CAPTION_TEMPLATES),
            evaluator_type="captions",
            **(extra_metadata or {}),
        ),
    )
