"""Cityscapes-19 semantic segmentation (the "City" benchmark), in the official folder layout.

Layout under ``$DETECTRON2_DATASETS``: the official release (``leftImg8bit_trainvaltest.zip``,
``gtFine_trainvaltest.zip``) plus one derived label file per image, next to the raw ones, as
cityscapesScripts' ``createTrainIdLabelImgs.py``, detectron2 and mmsegmentation expect it::

    cityscapes/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png        images (raw)
    cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png         34 label ids (raw)
    cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png    19 train ids (derived)

``datasets/prepare_cityscapes.py`` writes the ``labelTrainIds`` files (train ids 0..18, every
other label id 255 = ignore); files made by cityscapesScripts are the same and are used as they are.

Registered names::

    cityscapes_19_test_sem_seg    val (500 images)     19 classes, ignore 255
    cityscapes_19_train_sem_seg   train (2,975 images)  19 classes, ignore 255

Class names: ``cityscapes_19.json``, the names of the 19 train ids in cityscapesScripts'
``labels.py`` (also detectron2's and mmsegmentation's).

Images sit in one folder per city, so this module lists them with its own loader, which applies
the shared listing (:func:`load_sem_seg_dicts`) to each city folder and so fails the same way:
a missing data set raises ``FileNotFoundError`` at first use, naming the expected folders and
the prepare script. Registration touches no file.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..class_names import load_class_names
from .register_sem_seg import datasets_root, load_sem_seg_dicts, register_sem_seg_dataset

__all__ = [
    "register_cityscapes",
    "cityscapes_paths",
    "load_cityscapes_dicts",
    "CITYSCAPES_DIRNAME",
    "CITYSCAPES_SPLITS",
    "CITYSCAPES_IGNORE_LABEL",
    "CITYSCAPES_CLASS_NAMES_FILE",
    "IMAGE_SUFFIX",
    "RAW_LABEL_SUFFIX",
    "LABEL_SUFFIX",
]

#: The release folder under ``datasets_root()``.
CITYSCAPES_DIRNAME = "cityscapes"
CITYSCAPES_SPLITS = ("train", "val")
#: Registered name -> split folder.
_CITYSCAPES_NAMES = {"cityscapes_19_test_sem_seg": "val", "cityscapes_19_train_sem_seg": "train"}
IMAGES_DIRNAME = "leftImg8bit"
LABELS_DIRNAME = "gtFine"
#: File-name endings after the common stem ``<city>_<sequence>_<frame>``.
IMAGE_SUFFIX = "_leftImg8bit.png"
RAW_LABEL_SUFFIX = "_gtFine_labelIds.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
CITYSCAPES_IGNORE_LABEL = 255
CITYSCAPES_CLASS_NAMES_FILE = "cityscapes_19"
_JSON_SUFFIX = ".json"
CITYSCAPES_DOWNLOAD_HINT = (
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ and unzip both into $DETECTRON2_DATASETS/cityscapes"
)
CITYSCAPES_PREPARE_HINT = CITYSCAPES_DOWNLOAD_HINT + ", then run: python datasets/prepare_cityscapes.py"


def cityscapes_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(image folder, label folder) of ``split`` under the data root ``root``; both hold city folders."""
    base = Path(root) / CITYSCAPES_DIRNAME
    return base / IMAGES_DIRNAME / split, base / LABELS_DIRNAME / split


def _city_folders(folder: Path) -> list[str]:
    """Names of the visible sub-folders of ``folder``, sorted; [] if ``folder`` is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_cityscapes_dicts(name: str, *, image_root: str, gt_root: str, prepare_hint: str) -> list[dict[str, Any]]:
    """Dataset dicts of every ``<city>/*_leftImg8bit.png`` under ``image_root``, sorted by city then stem.

    Each city folder is listed by :func:`load_sem_seg_dicts`, so a missing label file or label
    folder raises its ``FileNotFoundError``. Without any city folder (or without the image or
    label folder) the top-level folders are handed to it, which raises the same error for the
    missing folder or the absent images.
    """
    listing = dict(image_ext=IMAGE_SUFFIX, gt_ext=LABEL_SUFFIX, prepare_hint=prepare_hint)
    image_dir, gt_dir = Path(image_root), Path(gt_root)
    cities = _city_folders(image_dir)
    if not cities or not gt_dir.is_dir():
        return load_sem_seg_dicts(name, image_root=image_root, gt_root=gt_root, **listing)
    dataset_dicts: list[dict[str, Any]] = []
    for city in cities:
        dataset_dicts += load_sem_seg_dicts(name, image_root=str(image_dir / city), gt_root=str(gt_dir / city), **listing)
    return dataset_dicts


def register_cityscapes() -> None:
    """Register ``cityscapes_19_test_sem_seg`` (val) and ``cityscapes_19_train_sem_seg`` (train).

    Metadata and re-registration go through :func:`register_sem_seg_dataset`; its flat-folder
    loader is then replaced by :func:`load_cityscapes_dicts`, which walks the city folders.
    Touches no file; picks up the current ``$DETECTRON2_DATASETS`` at every call.
    """
    from detectron2.data import DatasetCatalog

    root = datasets_root()
    class_names = load_class_names(CITYSCAPES_CLASS_NAMES_FILE)
    for name, split in _CITYSCAPES_NAMES.items():
        image_dir, label_dir = cityscapes_paths(root, split)
        register_sem_seg_dataset(
            name,
            image_root=str(image_dir),
            gt_root=str(label_dir),
            class_names=class_names,
            ignore_label=CITYSCAPES_IGNORE_LABEL,
            image_ext=IMAGE_SUFFIX,
            gt_ext=LABEL_SUFFIX,
            evaluator_type="ovseg_sem_seg",
            prepare_hint=CITYSCAPES_PREPARE_HINT,
            background_by_threshold=False,
            class_names_file=CITYSCAPES_CLASS_NAMES_FILE + _JSON_SUFFIX,
        )
        DatasetCatalog.remove(name)
        DatasetCatalog.register(
            name,
            functools.partial(
                load_cityscapes_dicts, name, image_root=str(image_dir), gt_root=str(label_dir), prepare_hint=CITYSCAPES_PREPARE_HINT
            ),
        )
