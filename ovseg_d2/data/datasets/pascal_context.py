"""PASCAL Context val benchmarks (5,105 VOC2010 images) in CAT-Seg's on-disk layout: PC-59, PC-459, C60.

Layout under ``$DETECTRON2_DATASETS`` (``datasets/prepare_pascal_context.py`` writes the label
folders from the raw release; CAT-Seg's ``prepare_pascal_context_59.py`` /
``prepare_pascal_context_459.py`` write the first two identically, so data prepared for CAT-Seg
is used as it is)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg                            all VOC2010 images (raw, shared)
    VOCdevkit/VOC2010/annotations_detectron2/pc59_val/*.png       PC-59, 8-bit
    VOCdevkit/VOC2010/annotations_detectron2/pc459_val/*.tif      PC-459, 16-bit TIFF
    VOCdevkit/VOC2010/annotations_detectron2/pc60_val/*.png       C60, 8-bit (ours, no CAT-Seg equivalent)

``JPEGImages`` holds all 10,103 train+val images, so each set is the label folder's files
(``list_by="labels"``).

Label values (PASCAL Context numbers its 459 classes 1..459, as in ``labels.txt``):

* PC-59 (``context_59_test_sem_seg``): the 59 frequent classes numbered 0..58 in increasing
  459-id order (``pascal_context_59.json``, CAT-Seg's ``pc59.json``); everything else, i.e.
  the other 400 classes and unlabelled pixels, is 255 = ignore.
* PC-459 (``context_459_test_sem_seg``): 459-id minus one, 0..458 (``pascal_context_459.json``,
  CAT-Seg's ``pc459.json``). The ignore value is **459** (CAT-Seg's ``ignore_label=459``), the
  first id past the classes. CAT-Seg's labels are ``LabelMap - 1`` and never hold 459, so every
  pixel is evaluated (PASCAL Context labels full scenes). Our converter writes 459 only for a raw
  0 ("unlabelled"), where CAT-Seg's would wrap around to 65535.
* C60 (``context_60_test_sem_seg``, Talk2DINO's training-free protocol): ``"background"`` = 0
  (everything PC-59 ignores), the 59 classes 1..59 in PC-59's order, 255 = ignore (unused by the
  official data). Background is predicted by a score threshold (``background_by_threshold``).
  Class names are those of mmsegmentation's ``PascalContextDataset`` (``pascal_context_60.json``),
  which the training-free papers evaluate with; they differ from PC-59's in one name
  (``"table"`` where CAT-Seg's list says ``"diningtable"``).
"""
from __future__ import annotations

from pathlib import Path

from ..class_names import load_class_names
from .register_sem_seg import LIST_BY_LABELS, datasets_root, register_sem_seg_dataset

__all__ = [
    "register_pascal_context",
    "context_root",
    "CONTEXT_DIRNAME",
    "IMAGES_DIRNAME",
    "LABELS_DIRNAME",
    "PC59_VAL_DIRNAME",
    "PC459_VAL_DIRNAME",
    "PC60_VAL_DIRNAME",
    "PC59_IGNORE_LABEL",
    "PC459_IGNORE_LABEL",
    "PC60_IGNORE_LABEL",
    "PC60_BACKGROUND_ID",
    "NUM_PC59_CLASSES",
    "NUM_PC459_CLASSES",
]

#: The VOC2010 folder under ``datasets_root()``.
CONTEXT_DIRNAME = "VOCdevkit/VOC2010"
IMAGES_DIRNAME = "JPEGImages"
LABELS_DIRNAME = "annotations_detectron2"
PC59_VAL_DIRNAME = "pc59_val"
PC459_VAL_DIRNAME = "pc459_val"
PC60_VAL_DIRNAME = "pc60_val"
IMAGE_EXT = ".jpg"
PC59_LABEL_EXT = ".png"
PC459_LABEL_EXT = ".tif"
PC60_LABEL_EXT = ".png"

NUM_PC59_CLASSES = 59
NUM_PC459_CLASSES = 459
PC59_IGNORE_LABEL = 255
#: CAT-Seg's value: one past the last class id (458); no official val pixel carries it.
PC459_IGNORE_LABEL = NUM_PC459_CLASSES
PC60_IGNORE_LABEL = 255
PC60_BACKGROUND_ID = 0

PC59_CLASS_NAMES_FILE = "pascal_context_59"
PC459_CLASS_NAMES_FILE = "pascal_context_459"
PC60_CLASS_NAMES_FILE = "pascal_context_60"

PREPARE_HINT = (
    "python datasets/prepare_pascal_context.py (needs VOCdevkit/VOC2010/JPEGImages from "
    "VOCtrainval_03-May-2010.tar, VOCdevkit/VOC2010/trainval_merged.json for PC-59/C60, and "
    "VOCdevkit/VOC2010/trainval/*.mat + labels.txt from PASCAL Context's trainval.tar.gz for PC-459)"
)


def context_root() -> Path:
    """``$DETECTRON2_DATASETS/VOCdevkit/VOC2010`` (read at call time)."""
    return datasets_root() / CONTEXT_DIRNAME


def _loaded_names(file_name: str, expected: int) -> list[str]:
    names = load_class_names(file_name)
    if len(names) != expected:
        raise ValueError(f"class-name file {file_name}.json lists {len(names)} names; the label files need {expected}")
    return names


def register_pascal_context() -> None:
    """Register ``context_59_test_sem_seg``, ``context_459_test_sem_seg`` and
    ``context_60_test_sem_seg`` under ``$DETECTRON2_DATASETS`` (no disk access)."""
    root = context_root()
    labels = root / LABELS_DIRNAME
    pc60 = _loaded_names(PC60_CLASS_NAMES_FILE, NUM_PC59_CLASSES + 1)
    if pc60[PC60_BACKGROUND_ID] != "background":
        raise ValueError(f"{PC60_CLASS_NAMES_FILE}.json needs 'background' at id {PC60_BACKGROUND_ID}")
    common = dict(
        image_root=str(root / IMAGES_DIRNAME),
        image_ext=IMAGE_EXT,
        evaluator_type="ovseg_sem_seg",
        prepare_hint=PREPARE_HINT,
        list_by=LIST_BY_LABELS,
    )
    register_sem_seg_dataset(
        "context_59_test_sem_seg",
        gt_root=str(labels / PC59_VAL_DIRNAME),
        gt_ext=PC59_LABEL_EXT,
        class_names=_loaded_names(PC59_CLASS_NAMES_FILE, NUM_PC59_CLASSES),
        ignore_label=PC59_IGNORE_LABEL,
        background_by_threshold=False,
        class_names_file=f"{PC59_CLASS_NAMES_FILE}.json",
        **common,
    )
    register_sem_seg_dataset(
        "context_459_test_sem_seg",
        gt_root=str(labels / PC459_VAL_DIRNAME),
        gt_ext=PC459_LABEL_EXT,
        class_names=_loaded_names(PC459_CLASS_NAMES_FILE, NUM_PC459_CLASSES),
        ignore_label=PC459_IGNORE_LABEL,
        background_by_threshold=False,
        class_names_file=f"{PC459_CLASS_NAMES_FILE}.json",
        **common,
    )
    register_sem_seg_dataset(
        "context_60_test_sem_seg",
        gt_root=str(labels / PC60_VAL_DIRNAME),
        gt_ext=PC60_LABEL_EXT,
        class_names=pc60,
        ignore_label=PC60_IGNORE_LABEL,
        background_by_threshold=True,
        class_names_file=f"{PC60_CLASS_NAMES_FILE}.json",
        **common,
    )
