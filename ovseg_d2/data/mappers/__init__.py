"""Dataset mappers: dataset dict -> model input dict. Pick one with :func:`build_sem_seg_mapper`."""
from __future__ import annotations

from typing import Callable

from .clipself_mapper import CLIPSelfDatasetMapper
from .color_aug import ColorAugSSDTransform, RandomColorAugSSD
from .region_mapper import RegionClassificationDatasetMapper
from .semantic_mapper import OpenVocabSemSegDatasetMapper

__all__ = [
    "OpenVocabSemSegDatasetMapper",
    "CLIPSelfDatasetMapper",
    "RegionClassificationDatasetMapper",
    "ColorAugSSDTransform",
    "RandomColorAugSSD",
    "SEM_SEG_MAPPERS",
    "build_sem_seg_mapper",
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
