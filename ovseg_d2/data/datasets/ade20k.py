"""ADE20K benchmarks in CAT-Seg's on-disk layout: A-150 (SceneParsing) and A-847 (ADE20K-Full).

Layout under ``$DETECTRON2_DATASETS`` (the ``datasets/prepare_ade20k_*.py`` scripts write the
derived folders from the raw releases; CAT-Seg's preparation writes them identically, so data
prepared for CAT-Seg is used as it is)::

    ADEChallengeData2016/images/{training,validation}/*.jpg                  raw images
    ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png  A-150 labels
    ADE20K_2021_17_01/images_detectron2/validation/*.jpg                     A-847 images (short side <= 512)
    ADE20K_2021_17_01/annotations_detectron2/validation/*.tif                A-847 labels (16-bit TIFF)

Registered names (those of the validation sets are CAT-Seg's), label files, values, ignore::

    name                              classes  labels                   values  ignore
    ade20k_150_test_sem_seg           150      8-bit PNG, validation    0..149  255
    ade20k_150_train_sem_seg          150      8-bit PNG, training      0..149  255
    ade20k_full_sem_seg_freq_val_all  847      16-bit TIFF, validation  0..846  65535

CAT-Seg registers no A-847 training split, so neither do we. Class names: ``ade20k_150.json``
(CAT-Seg's ``ade150.json``, verbatim, including its ``"bed "`` with a trailing space, which CLIP's
tokenizer drops when it collapses whitespace) and ``ade20k_847.json`` (CAT-Seg's
``ade847.json``).

Registration touches no file; a missing data set fails at first use with a message naming the
expected folders and the prepare script (see :mod:`.register_sem_seg`).
"""
from __future__ import annotations

from pathlib import Path

from ..class_names import load_class_names
from .register_sem_seg import datasets_root, register_sem_seg_dataset

__all__ = [
    "register_ade20k",
    "ade20k_150_paths",
    "ade20k_full_paths",
    "ADE20K_150_DIRNAME",
    "ADE20K_150_SPLITS",
    "ADE20K_150_IGNORE_LABEL",
    "ADE20K_150_CLASS_NAMES_FILE",
    "ADE20K_FULL_DIRNAME",
    "ADE20K_FULL_SPLITS",
    "ADE20K_FULL_IGNORE_LABEL",
    "ADE20K_FULL_CLASS_NAMES_FILE",
    "ADE20K_FULL_VAL_NAME",
]

_JSON_SUFFIX = ".json"

# ---------------------------------------------------------------- A-150 (SceneParsing, 2016)
#: The SceneParsing release folder under ``datasets_root()`` (ADEChallengeData2016.zip).
ADE20K_150_DIRNAME = "ADEChallengeData2016"
#: Release folder names of the two splits.
ADE20K_150_SPLITS = ("training", "validation")
#: Registered name -> split folder (CAT-Seg calls the validation split "test").
_ADE20K_150_NAMES = {"ade20k_150_test_sem_seg": "validation", "ade20k_150_train_sem_seg": "training"}
ADE20K_150_IMAGES_DIRNAME = "images"
#: Raw labels: 0 = "other" (not evaluated), 1..150 = classes.
ADE20K_150_RAW_LABELS_DIRNAME = "annotations"
#: Converted labels: raw value - 1, raw 0 -> 255.
ADE20K_150_LABELS_DIRNAME = "annotations_detectron2"
ADE20K_150_IMAGE_EXT = ".jpg"
ADE20K_150_LABEL_EXT = ".png"
ADE20K_150_IGNORE_LABEL = 255
ADE20K_150_CLASS_NAMES_FILE = "ade20k_150"
ADE20K_150_DOWNLOAD_HINT = (
    "download http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and unzip it "
    "into $DETECTRON2_DATASETS"
)
ADE20K_150_PREPARE_HINT = ADE20K_150_DOWNLOAD_HINT + ", then run: python datasets/prepare_ade20k_150.py"

# ---------------------------------------------------------------- A-847 (ADE20K-Full, 2021 release)
#: The ADE20K 2021 release folder under ``datasets_root()``.
ADE20K_FULL_DIRNAME = "ADE20K_2021_17_01"
ADE20K_FULL_SPLITS = ("training", "validation")
ADE20K_FULL_VAL_NAME = "ade20k_full_sem_seg_freq_val_all"
#: Images re-encoded (and shrunk to short side <= 512) by the prepare script.
ADE20K_FULL_IMAGES_DIRNAME = "images_detectron2"
ADE20K_FULL_LABELS_DIRNAME = "annotations_detectron2"
ADE20K_FULL_IMAGE_EXT = ".jpg"
#: 847 classes do not fit 8 bits: labels are 16-bit TIFFs.
ADE20K_FULL_LABEL_EXT = ".tif"
ADE20K_FULL_IGNORE_LABEL = 65535
ADE20K_FULL_CLASS_NAMES_FILE = "ade20k_847"
ADE20K_FULL_DOWNLOAD_HINT = (
    "request and download the ADE20K 2021 release (ADE20K_2021_17_01) from "
    "https://groups.csail.mit.edu/vision/datasets/ADE20K/ and unzip it into $DETECTRON2_DATASETS"
)
ADE20K_FULL_PREPARE_HINT = ADE20K_FULL_DOWNLOAD_HINT + ", then run: python datasets/prepare_ade20k_full.py"


def ade20k_150_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(image folder, converted label folder) of A-150 ``split`` under the data root ``root``."""
    base = Path(root) / ADE20K_150_DIRNAME
    return base / ADE20K_150_IMAGES_DIRNAME / split, base / ADE20K_150_LABELS_DIRNAME / split


def ade20k_full_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(converted image folder, label folder) of A-847 ``split`` under the data root ``root``."""
    base = Path(root) / ADE20K_FULL_DIRNAME
    return base / ADE20K_FULL_IMAGES_DIRNAME / split, base / ADE20K_FULL_LABELS_DIRNAME / split


def register_ade20k() -> None:
    """Register A-150 (val as ``..._test_...``, and train) and A-847 val under ``datasets_root()``.

    Touches no file; picks up the current ``$DETECTRON2_DATASETS`` at every call.
    """
    root = datasets_root()

    names_150 = load_class_names(ADE20K_150_CLASS_NAMES_FILE)
    for name, split in _ADE20K_150_NAMES.items():
        image_dir, label_dir = ade20k_150_paths(root, split)
        register_sem_seg_dataset(
            name,
            image_root=str(image_dir),
            gt_root=str(label_dir),
            class_names=names_150,
            ignore_label=ADE20K_150_IGNORE_LABEL,
            image_ext=ADE20K_150_IMAGE_EXT,
            gt_ext=ADE20K_150_LABEL_EXT,
            evaluator_type="ovseg_sem_seg",
            prepare_hint=ADE20K_150_PREPARE_HINT,
            background_by_threshold=False,
            class_names_file=ADE20K_150_CLASS_NAMES_FILE + _JSON_SUFFIX,
        )

    image_dir, label_dir = ade20k_full_paths(root, "validation")
    register_sem_seg_dataset(
        ADE20K_FULL_VAL_NAME,
        image_root=str(image_dir),
        gt_root=str(label_dir),
        class_names=load_class_names(ADE20K_FULL_CLASS_NAMES_FILE),
        ignore_label=ADE20K_FULL_IGNORE_LABEL,
        image_ext=ADE20K_FULL_IMAGE_EXT,
        gt_ext=ADE20K_FULL_LABEL_EXT,
        evaluator_type="ovseg_sem_seg",
        prepare_hint=ADE20K_FULL_PREPARE_HINT,
        background_by_threshold=False,
        class_names_file=ADE20K_FULL_CLASS_NAMES_FILE + _JSON_SUFFIX,
    )
