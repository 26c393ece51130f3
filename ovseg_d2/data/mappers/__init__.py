"""Dataset mappers: dataset dict -> model input dict.

:func:`build_dataset_mapper` picks the mapper of a data set: sets whose metadata ``evaluator_type``
is in :data:`DATASET_TYPE_MAPPERS` (captions, region classification) get their own mapper; the
others get the ``INPUT.DATASET_MAPPER_NAME`` mapper (:func:`build_sem_seg_mapper`).
"""
from __future__ import annotations

from typing import Callable, Sequence

from .caption_mapper import CaptionDatasetMapper
from .clipself_mapper import CLIPSelfDatasetMapper
from .color_aug import ColorAugSSDTransform, RandomColorAugSSD
from .region_mapper import RegionClassificationDatasetMapper
from .semantic_mapper import OpenVocabSemSegDatasetMapper

__all__ = [
    "OpenVocabSemSegDatasetMapper",
    "CLIPSelfDatasetMapper",
    "RegionClassificationDatasetMapper",
    "CaptionDatasetMapper",
    "ColorAugSSDTransform",
    "RandomColorAugSSD",
    "SEM_SEG_MAPPERS",
    "DATASET_TYPE_MAPPERS",
    "build_sem_seg_mapper",
    "build_dataset_mapper",
]

#: ``cfg.INPUT.DATASET_MAPPER_NAME`` -> mapper class (built with ``cls(cfg, is_train)``).
SEM_SEG_MAPPERS: dict[str, Callable] = {
    "ovseg_semantic": OpenVocabSemSegDatasetMapper,
    "clipself": CLIPSelfDatasetMapper,
}


def build_sem_seg_mapper(cfg, is_train: bool) -> Callable[[dict], dict]:
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``, configured for training or testing.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in SEM_SEG_MAPPERS:
        raise ValueError(f"Unknown INPUT.DATASET_MAPPER_NAME {name!r}; known: {sorted(SEM_SEG_MAPPERS)}")
    return SEM_SEG_MAPPERS[name](cfg, is_train)


def _region_mapper(cfg, dataset_names: Sequence[str], is_train: bool) -> Callable[[dict], dict]:
    # a region view trains like its semantic source; it is evaluated one set at a time
    if is_train:
        return build_sem_seg_mapper(cfg, is_train)
    return RegionClassificationDatasetMapper(cfg, dataset_names[0])


def _caption_mapper(cfg, dataset_names: Sequence[str], is_train: bool) -> Callable[[dict], dict]:
    return CaptionDatasetMapper(cfg, dataset_names, is_train)


#: metadata ``evaluator_type`` -> ``factory(cfg, dataset_names, is_train)`` for data sets that need
#: their own mapper whatever ``INPUT.DATASET_MAPPER_NAME`` says.
DATASET_TYPE_MAPPERS: dict[str, Callable] = {
    "captions": _caption_mapper,
    "region_classification": _region_mapper,
}


def build_dataset_mapper(cfg, dataset_names: Sequence[str], is_train: bool) -> Callable[[dict], dict]:
    """The mapper for ``dataset_names`` (loaded together: all of one ``evaluator_type``).

    Raises:
        ValueError: the sets mix an evaluator type with its own mapper and another type.
    """
    from detectron2.data import MetadataCatalog

    dataset_names = list(dataset_names)
    types = {name: getattr(MetadataCatalog.get(name), "evaluator_type", None) for name in dataset_names}
    own = {t for t in types.values() if t in DATASET_TYPE_MAPPERS}
    if own and len(set(types.values())) > 1:
        raise ValueError(
            f"data sets loaded together need one mapper, but their evaluator types differ: {types}. "
            "Train (or test) caption sets, region sets and segmentation sets in separate runs."
        )
    if own:
        return DATASET_TYPE_MAPPERS[own.pop()](cfg, dataset_names, is_train)
    return build_sem_seg_mapper(cfg, is_train)
