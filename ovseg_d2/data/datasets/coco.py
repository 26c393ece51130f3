"""Register the COCO family: COCO-Stuff-171, COCO-Object, COCO Captions 2014, COCO train2017
images and COCO panoptic val2017 regions.

Paths are relative to ``$DETECTRON2_DATASETS`` (read when :func:`register_coco` runs), in the
layout CAT-Seg and detectron2 users already have:

* ``coco_2017_train_stuff_all_sem_seg`` / ``coco_2017_test_stuff_all_sem_seg`` (COCO-Stuff-171,
  CAT-Seg's names; "test" is val2017): images ``coco-stuff/images/{train2017,val2017}/*.jpg``,
  labels ``coco-stuff/annotations_detectron2/{train2017,val2017}/*.png``, 171 classes, ignore 255.
* ``coco_2017_test_object_sem_seg`` (COCO-Object): images ``coco/val2017/*.jpg``, labels
  ``coco/annotations_detectron2/object_val2017/*.png``, 81 classes (0 = background), ignore 255.
* ``coco_2014_train_captions`` / ``coco_2014_val_captions`` (Talk2DINO): images
  ``coco/{train2014,val2014}/*.jpg``, ``coco/annotations/captions_{train2014,val2014}.json``.
* ``coco_2017_train_images`` (CLIPSelf): images ``coco/train2017/*.jpg`` listed by
  ``coco/annotations/instances_train2017.json``.
* ``coco_2017_val_panoptic_regions`` (CLIPSelf region evaluation): images ``coco/val2017/*.jpg``,
  ``coco/panoptic_val2017/*.png`` and ``coco/annotations/panoptic_val2017.json``, 133 classes.

The semantic-segmentation sets go through :func:`register_sem_seg_dataset`; the others are
registered here the same way: no disk access until ``DatasetCatalog.get(name)``, a clear
:class:`FileNotFoundError` at first use when data is missing, re-registration with the same
definition a no-op and with a changed one (e.g. another ``$DETECTRON2_DATASETS``) a replacement.

COCO-Object (``background_by_threshold=True``): label 0 is "background", predicted by a score
threshold, not by text; 1..80 are the COCO things. Its labels come from
``datasets/prepare_coco_object.py`` (see ``ovseg_d2/data/prepare/coco_object.py`` for the two
sources and their conventions).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

from ..class_names import load_class_names
from ..prepare.coco_category_ids import IGNORE_LABEL, STUFF_171_IDS
from .coco_captions import load_coco_captions
from .coco_images import load_coco_image_list
from .coco_panoptic import PANOPTIC_CLASS_NAMES_FILE, load_coco_panoptic_regions, panoptic_class_is_thing
from .register_sem_seg import datasets_root, register_lazy_dataset, register_sem_seg_dataset

__all__ = [
    "register_coco",
    "COCO_STUFF_NAMES",
    "COCO_OBJECT_NAME",
    "COCO_CAPTIONS_NAMES",
    "COCO_TRAIN_IMAGES_NAME",
    "COCO_PANOPTIC_REGIONS_NAME",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- names, files, folders
#: Registered name -> split folder name, as CAT-Seg names them ("test" is COCO val2017).
COCO_STUFF_NAMES = {"coco_2017_train_stuff_all_sem_seg": "train2017", "coco_2017_test_stuff_all_sem_seg": "val2017"}
COCO_OBJECT_NAME = "coco_2017_test_object_sem_seg"
COCO_CAPTIONS_NAMES = {"coco_2014_train_captions": "train2014", "coco_2014_val_captions": "val2014"}
COCO_TRAIN_IMAGES_NAME = "coco_2017_train_images"
COCO_PANOPTIC_REGIONS_NAME = "coco_2017_val_panoptic_regions"

COCO_STUFF_CLASS_NAMES_FILE = "coco_stuff_171"
COCO_OBJECT_CLASS_NAMES_FILE = "coco_object_81"
COCO_DIRNAME = "coco"
COCO_STUFF_DIRNAME = "coco-stuff"
IMAGE_EXT = ".jpg"
LABEL_EXT = ".png"

COCO_STUFF_HINT = (
    "download train2017.zip / val2017.zip (http://images.cocodataset.org/zips/) into coco-stuff/images/ and "
    "stuffthingmaps_trainval2017.zip (http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/) "
    "into coco-stuff/annotations/, then run `python datasets/prepare_coco_stuff.py`"
)
COCO_OBJECT_HINT = (
    "put COCO val2017 images in coco/val2017/ and run `python datasets/prepare_coco_object.py` (needs "
    "coco-stuff/annotations/val2017 from stuffthingmaps_trainval2017.zip; or add `--source instances` to "
    "use coco/annotations/instances_val2017.json instead)"
)
CAPTIONS_HINT = (
    "download http://images.cocodataset.org/zips/{split}.zip into coco/ and "
    "http://images.cocodataset.org/annotations/annotations_trainval2014.zip into coco/ (gives "
    "coco/{split}/ and coco/annotations/captions_{split}.json); no conversion is needed"
)
TRAIN_IMAGES_HINT = (
    "download http://images.cocodataset.org/zips/train2017.zip into coco/ and "
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip into coco/ (gives "
    "coco/train2017/ and coco/annotations/instances_train2017.json); no conversion is needed"
)
PANOPTIC_HINT = (
    "download http://images.cocodataset.org/zips/val2017.zip into coco/ and "
    "http://images.cocodataset.org/annotations/panoptic_annotations_trainval2017.zip into coco/, then "
    "unzip coco/annotations/panoptic_val2017.zip into coco/ (gives coco/panoptic_val2017/*.png); "
    "no conversion is needed"
)


# ---------------------------------------------------------------- lazy registration of non-sem-seg sets
# ---------------------------------------------------------------- the registrars
def _register_coco_stuff(root: Path) -> None:
    class_names = load_class_names(COCO_STUFF_CLASS_NAMES_FILE)
    for name, split in COCO_STUFF_NAMES.items():
        register_sem_seg_dataset(
            name,
            image_root=str(root / COCO_STUFF_DIRNAME / "images" / split),
            gt_root=str(root / COCO_STUFF_DIRNAME / "annotations_detectron2" / split),
            class_names=class_names,
            ignore_label=IGNORE_LABEL,
            image_ext=IMAGE_EXT,
            gt_ext=LABEL_EXT,
            evaluator_type="ovseg_sem_seg",
            prepare_hint=COCO_STUFF_HINT,
            class_names_file=COCO_STUFF_CLASS_NAMES_FILE,
            stuff_dataset_id_to_contiguous_id={category_id: i for i, category_id in enumerate(STUFF_171_IDS)},
        )


def _register_coco_object(root: Path) -> None:
    register_sem_seg_dataset(
        COCO_OBJECT_NAME,
        image_root=str(root / COCO_DIRNAME / "val2017"),
        gt_root=str(root / COCO_DIRNAME / "annotations_detectron2" / "object_val2017"),
        class_names=load_class_names(COCO_OBJECT_CLASS_NAMES_FILE),
        ignore_label=IGNORE_LABEL,
        image_ext=IMAGE_EXT,
        gt_ext=LABEL_EXT,
        evaluator_type="ovseg_sem_seg",
        prepare_hint=COCO_OBJECT_HINT,
        background_by_threshold=True,
        talk2dino_background_cleaning=True,  # Talk2DINO's reference cleans the background on COCO-Object
        class_names_file=COCO_OBJECT_CLASS_NAMES_FILE,
    )


def _register_captions(root: Path) -> None:
    for name, split in COCO_CAPTIONS_NAMES.items():
        image_root = str(root / COCO_DIRNAME / split)
        json_file = str(root / COCO_DIRNAME / "annotations" / f"captions_{split}.json")
        hint = CAPTIONS_HINT.format(split=split)
        register_lazy_dataset(
            name,
            functools.partial(load_coco_captions, name, image_root=image_root, json_file=json_file, prepare_hint=hint),
            dict(image_root=image_root, json_file=json_file, evaluator_type="captions", prepare_hint=hint),
        )


def _register_train_images(root: Path) -> None:
    image_root = str(root / COCO_DIRNAME / "train2017")
    json_file = str(root / COCO_DIRNAME / "annotations" / "instances_train2017.json")
    register_lazy_dataset(
        COCO_TRAIN_IMAGES_NAME,
        functools.partial(
            load_coco_image_list,
            COCO_TRAIN_IMAGES_NAME,
            image_root=image_root,
            json_file=json_file,
            prepare_hint=TRAIN_IMAGES_HINT,
        ),
        dict(image_root=image_root, json_file=json_file, evaluator_type="none", prepare_hint=TRAIN_IMAGES_HINT),
    )


def _register_panoptic_regions(root: Path) -> None:
    """Metadata follows detectron2's "standard" panoptic convention: ``stuff_classes`` and
    ``thing_classes`` both list all 133 names by contiguous id; ``class_is_thing`` says which
    are things (the first 80)."""
    image_root = str(root / COCO_DIRNAME / "val2017")
    panoptic_root = str(root / COCO_DIRNAME / "panoptic_val2017")
    panoptic_json = str(root / COCO_DIRNAME / "annotations" / "panoptic_val2017.json")
    class_names = load_class_names(PANOPTIC_CLASS_NAMES_FILE)
    register_lazy_dataset(
        COCO_PANOPTIC_REGIONS_NAME,
        functools.partial(
            load_coco_panoptic_regions,
            COCO_PANOPTIC_REGIONS_NAME,
            image_root=image_root,
            panoptic_root=panoptic_root,
            panoptic_json=panoptic_json,
            prepare_hint=PANOPTIC_HINT,
        ),
        dict(
            image_root=image_root,
            panoptic_root=panoptic_root,
            panoptic_json=panoptic_json,
            stuff_classes=class_names,
            thing_classes=class_names,
            class_is_thing=panoptic_class_is_thing(),
            class_names_file=PANOPTIC_CLASS_NAMES_FILE,
            evaluator_type="region_classification",
            prepare_hint=PANOPTIC_HINT,
        ),
    )


def register_coco() -> None:
    """Register every COCO data set above under the current ``datasets_root()`` (no disk access)."""
    root = datasets_root()
    _register_coco_stuff(root)
    _register_coco_object(root)
    _register_captions(root)
    _register_train_images(root)
    _register_panoptic_regions(root)
