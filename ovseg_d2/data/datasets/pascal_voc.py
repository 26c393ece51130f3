"""PASCAL VOC 2012 val benchmarks (1,449 images) in CAT-Seg's on-disk layout: PAS-20, PAS-20b, V21.

Layout under ``$DETECTRON2_DATASETS`` (``datasets/prepare_pascal_voc.py`` writes the label
folders from the raw release; CAT-Seg's ``datasets/prepare_voc.py`` writes the first two
identically, so data prepared for CAT-Seg is used as it is)::

    VOCdevkit/VOC2012/JPEGImages/*.jpg                        all VOC2012 images (raw, shared)
    VOCdevkit/VOC2012/annotations_detectron2/val/*.png        PAS-20
    VOCdevkit/VOC2012/annotations_detectron2_bg/val/*.png     PAS-20b
    VOCdevkit/VOC2012/annotations_detectron2_with_bg/val/*.png  V21 (ours, no CAT-Seg equivalent)

``JPEGImages`` holds every VOC2012 image, so each set is the label folder's files
(``list_by="labels"``), not the image folder's.

Label values per folder, from the raw VOC value ``v`` (0 background, 1..20 classes, 255 object
boundaries and "difficult" regions)::

    PAS-20  voc_2012_test_sem_seg             background -> 255 (ignored)   class v -> v - 1 (0..19)
    PAS-20b voc_2012_test_background_sem_seg  background -> 20              class v -> v - 1 (0..19)
    V21     voc_2012_test_with_bg_sem_seg     background -> 0               class v -> v     (1..20)
    all three: 255 stays 255, the ignore value

PAS-20b (CAT-Seg's protocol): the model is asked for 59 names (``stuff_classes`` =
``pascal_voc_20b.json``: the 20 VOC names, then the 39 PASCAL Context-59 classes that are not VOC
classes, in CAT-Seg's ``voc20b.json`` order) and any prediction of one of those 39 stand-ins
counts as background. The metadata says so with ``prediction_to_eval_class`` (length 59:
``[0, 1, ..., 19] + [20] * 39``) and names the 21 evaluation classes in ``evaluation_classes``
(``pascal_voc_20b_eval.json``: the 20 VOC names, then ``"background"`` at id 20, the label
files' background value). This reproduces CAT-Seg's ``VOCbEvaluator`` (``pred[pred >= 20] = 20``).

V21 (Talk2DINO's training-free protocol): 21 classes with ``"background"`` at index 0, which the
model predicts with a score threshold rather than a text prompt (``background_by_threshold``).
Class names are those of mmsegmentation's ``PascalVOCDataset`` (``pascal_voc_21.json``).
"""
from __future__ import annotations

from pathlib import Path

from ..class_names import load_class_names
from .register_sem_seg import LIST_BY_LABELS, datasets_root, register_sem_seg_dataset

__all__ = [
    "register_pascal_voc",
    "voc_root",
    "VOC_DIRNAME",
    "IMAGES_DIRNAME",
    "NO_BACKGROUND_LABELS_DIRNAME",
    "BACKGROUND_LAST_LABELS_DIRNAME",
    "BACKGROUND_FIRST_LABELS_DIRNAME",
    "IGNORE_LABEL",
    "NUM_VOC_CLASSES",
    "PAS20B_BACKGROUND_ID",
    "V21_BACKGROUND_ID",
    "PAS20B_PREDICTION_TO_EVAL_CLASS",
]

#: The VOC2012 folder under ``datasets_root()``.
VOC_DIRNAME = "VOCdevkit/VOC2012"
IMAGES_DIRNAME = "JPEGImages"
#: PAS-20 labels: background ignored, classes 0..19 (CAT-Seg's folder).
NO_BACKGROUND_LABELS_DIRNAME = "annotations_detectron2"
#: PAS-20b labels: classes 0..19, background 20 (CAT-Seg's folder).
BACKGROUND_LAST_LABELS_DIRNAME = "annotations_detectron2_bg"
#: V21 labels: background 0, classes 1..20 (the raw VOC values; our folder).
BACKGROUND_FIRST_LABELS_DIRNAME = "annotations_detectron2_with_bg"
#: The benchmarks evaluate VOC2012 val (ImageSets/Segmentation/val.txt).
EVAL_SPLIT = "val"
IMAGE_EXT = ".jpg"
LABEL_EXT = ".png"
#: Object boundaries and "difficult" regions, in every folder.
IGNORE_LABEL = 255
NUM_VOC_CLASSES = 20
#: Background's value in ``annotations_detectron2_bg`` (after the 20 classes, as in CAT-Seg).
PAS20B_BACKGROUND_ID = NUM_VOC_CLASSES
#: Background's value in ``annotations_detectron2_with_bg`` (first, as in mmsegmentation).
V21_BACKGROUND_ID = 0

PAS20_CLASS_NAMES_FILE = "pascal_voc_20"
PAS20B_VOCABULARY_FILE = "pascal_voc_20b"
PAS20B_EVALUATION_CLASSES_FILE = "pascal_voc_20b_eval"
V21_CLASS_NAMES_FILE = "pascal_voc_21"
#: Number of PAS-20b stand-ins for background (PASCAL Context-59 minus the 20 VOC classes).
NUM_PAS20B_STAND_INS = 39
#: PAS-20b: predicted vocabulary id -> evaluation id (VOC classes keep theirs, stand-ins -> background).
PAS20B_PREDICTION_TO_EVAL_CLASS = tuple(range(NUM_VOC_CLASSES)) + (PAS20B_BACKGROUND_ID,) * NUM_PAS20B_STAND_INS

PREPARE_HINT = (
    "python datasets/prepare_pascal_voc.py (needs VOCdevkit/VOC2012/{JPEGImages,ImageSets/Segmentation} "
    "from VOCtrainval_11-May-2012.tar and SegmentationClassAug/ from SegmentationClassAug.zip)"
)


def voc_root() -> Path:
    """``$DETECTRON2_DATASETS/VOCdevkit/VOC2012`` (read at call time)."""
    return datasets_root() / VOC_DIRNAME


def _check_class_lists(voc20: list[str], vocabulary: list[str], evaluation: list[str], v21: list[str]) -> None:
    """The shipped files must agree with the label conventions above; fail loudly if edited wrongly."""
    expected = {
        f"{PAS20_CLASS_NAMES_FILE}.json": (len(voc20), NUM_VOC_CLASSES),
        f"{PAS20B_VOCABULARY_FILE}.json": (len(vocabulary), len(PAS20B_PREDICTION_TO_EVAL_CLASS)),
        f"{PAS20B_EVALUATION_CLASSES_FILE}.json": (len(evaluation), NUM_VOC_CLASSES + 1),
        f"{V21_CLASS_NAMES_FILE}.json": (len(v21), NUM_VOC_CLASSES + 1),
    }
    for file_name, (found, wanted) in expected.items():
        if found != wanted:
            raise ValueError(f"class-name file {file_name} lists {found} names; PASCAL VOC needs {wanted}")
    if vocabulary[:NUM_VOC_CLASSES] != voc20 or evaluation[:NUM_VOC_CLASSES] != voc20:
        raise ValueError("the PAS-20b class lists must start with the 20 names of pascal_voc_20.json")
    if evaluation[PAS20B_BACKGROUND_ID] != "background" or v21[V21_BACKGROUND_ID] != "background":
        raise ValueError("PAS-20b / V21 evaluation lists need 'background' at the label files' background id")


def register_pascal_voc() -> None:
    """Register ``voc_2012_test_sem_seg``, ``voc_2012_test_background_sem_seg`` and
    ``voc_2012_test_with_bg_sem_seg`` under ``$DETECTRON2_DATASETS`` (no disk access)."""
    root = voc_root()
    image_root = root / IMAGES_DIRNAME
    voc20 = load_class_names(PAS20_CLASS_NAMES_FILE)
    vocabulary = load_class_names(PAS20B_VOCABULARY_FILE)
    evaluation = load_class_names(PAS20B_EVALUATION_CLASSES_FILE)
    v21 = load_class_names(V21_CLASS_NAMES_FILE)
    _check_class_lists(voc20, vocabulary, evaluation, v21)

    common = dict(
        image_root=str(image_root),
        ignore_label=IGNORE_LABEL,
        image_ext=IMAGE_EXT,
        gt_ext=LABEL_EXT,
        evaluator_type="ovseg_sem_seg",
        prepare_hint=PREPARE_HINT,
        list_by=LIST_BY_LABELS,
    )
    register_sem_seg_dataset(
        "voc_2012_test_sem_seg",
        gt_root=str(root / NO_BACKGROUND_LABELS_DIRNAME / EVAL_SPLIT),
        class_names=voc20,
        background_by_threshold=False,
        class_names_file=f"{PAS20_CLASS_NAMES_FILE}.json",
        **common,
    )
    register_sem_seg_dataset(
        "voc_2012_test_background_sem_seg",
        gt_root=str(root / BACKGROUND_LAST_LABELS_DIRNAME / EVAL_SPLIT),
        class_names=vocabulary,
        background_by_threshold=False,
        class_names_file=f"{PAS20B_VOCABULARY_FILE}.json",
        evaluation_classes=evaluation,
        evaluation_classes_file=f"{PAS20B_EVALUATION_CLASSES_FILE}.json",
        prediction_to_eval_class=list(PAS20B_PREDICTION_TO_EVAL_CLASS),
        **common,
    )
    register_sem_seg_dataset(
        "voc_2012_test_with_bg_sem_seg",
        gt_root=str(root / BACKGROUND_FIRST_LABELS_DIRNAME / EVAL_SPLIT),
        class_names=v21,
        background_by_threshold=True,
        talk2dino_background_cleaning=True,  # Talk2DINO's reference cleans the background on V21 (voc_bg configs)
        class_names_file=f"{V21_CLASS_NAMES_FILE}.json",
        **common,
    )
