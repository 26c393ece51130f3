"""Where a model's vocabulary comes from: data set metadata (``stuff_classes``) or the caller."""
from __future__ import annotations

from detectron2.data import MetadataCatalog

__all__ = ["class_names_of", "default_vocabulary_sources"]


def class_names_of(dataset_name: str) -> list[str]:
    """``stuff_classes`` of a registered data set, with a clear error if it has none."""
    metadata = MetadataCatalog.get(dataset_name)
    names = getattr(metadata, "stuff_classes", None)
    if not names:
        raise KeyError(
            f"data set {dataset_name!r} has no 'stuff_classes' in its metadata; is it registered "
            "(import ovseg_d2) and is it a semantic-segmentation set?"
        )
    return list(names)


def default_vocabulary_sources(cfg) -> tuple[str, str]:
    """(training set, test set) whose class names are the default vocabularies."""
    train = cfg.MODEL.TRAIN_CLASS_NAMES_FROM or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    test = cfg.MODEL.TEST_CLASS_NAMES_FROM or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else train)
    return train, test
