"""Data: data-set registration, class-name files, dataset mappers."""
from .class_names import load_class_names
from .datasets import datasets_root, register_all, register_sem_seg_dataset
from .mappers import (
    ColorAugSSDTransform,
    OpenVocabSemSegDatasetMapper,
    RandomColorAugSSD,
    build_sem_seg_mapper,
)

__all__ = [
    "load_class_names",
    "datasets_root",
    "register_all",
    "register_sem_seg_dataset",
    "OpenVocabSemSegDatasetMapper",
    "ColorAugSSDTransform",
    "RandomColorAugSSD",
    "build_sem_seg_mapper",
]
