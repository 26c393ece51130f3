"""Prepare PASCAL VOC 2012 (PAS-20, PAS-20b, V21) in CAT-Seg's layout from the official raw release.

Input (raw, never written to), under ``--root`` (default ``$DETECTRON2_DATASETS`` or ./datasets)::

    VOCdevkit/VOC2012/JPEGImages/*.jpg                 VOCtrainval_11-May-2012.tar
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt   same tar: the 1,449 val ids
    VOCdevkit/VOC2012/SegmentationClassAug/*.png       SegmentationClassAug.zip (DeepLab's SBD-augmented
                                                       labels: 10,582 trainaug + 1,449 val)

Output, one 8-bit PNG per label in each of three folders (see
``ovseg_d2/data/datasets/pascal_voc.py`` for the conventions)::

    VOCdevkit/VOC2012/annotations_detectron2/{train,val}/*.png          background -> 255, class v -> v - 1
    VOCdevkit/VOC2012/annotations_detectron2_bg/{train,val}/*.png       background -> 20,  class v -> v - 1
    VOCdevkit/VOC2012/annotations_detectron2_with_bg/{train,val}/*.png  background -> 0,   class v -> v

Splits, as in CAT-Seg's ``datasets/prepare_voc.py``: ``val`` is ``ImageSets/Segmentation/val.txt``
read from ``SegmentationClassAug``; ``train`` (CAT-Seg makes none) is every other label of that
folder, i.e. the 10,582-image "trainaug" set. With only the official tar,
``--label-folder SegmentationClass`` gives the identical val labels (and the 1,464 VOC train ones).

Differences from CAT-Seg's script, none of which changes a val label file: a raw value outside
{0..20, 255}, an unreadable label or image, or an image whose size differs from its label stops
the run naming the file (CAT-Seg maps unknown values to 255 silently); a label that is all
ignore after conversion is still written (CAT-Seg skips it; no official label is).

Usage: ``python datasets/prepare_pascal_voc.py [--root DIR] [--splits val] [--workers N]``.
Finished files are skipped on a re-run; every file is written atomically.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..datasets.pascal_voc import (
    BACKGROUND_FIRST_LABELS_DIRNAME,
    BACKGROUND_LAST_LABELS_DIRNAME,
    IGNORE_LABEL,
    IMAGE_EXT,
    IMAGES_DIRNAME,
    LABEL_EXT,
    NO_BACKGROUND_LABELS_DIRNAME,
    NUM_VOC_CLASSES,
    PAS20B_BACKGROUND_ID,
    V21_BACKGROUND_ID,
    VOC_DIRNAME,
)
from .common import (
    add_splits_argument,
    base_parser,
    check_outputs_do_not_touch_inputs,
    ConversionJob,
    CorruptInputError,
    PreparationError,
    read_label,
    read_rgb,
    run_jobs,
    run_splits,
    save_label,
    verify_count,
)

__all__ = ["main", "prepare_split", "convert_voc_label", "output_dirs", "LABEL_TABLES", "SPLITS"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
DEFAULT_RAW_LABELS_DIRNAME = "SegmentationClassAug"
VAL_LIST = "ImageSets/Segmentation/val.txt"
#: Sizes of the official sets; another count still converts, with a warning.
OFFICIAL_COUNTS = {("SegmentationClassAug", "train"): 10582, ("SegmentationClassAug", "val"): 1449,
                   ("SegmentationClass", "train"): 1464, ("SegmentationClass", "val"): 1449}
#: Raw VOC label values: 0 background, 1..20 the classes, 255 boundaries / difficult regions.
RAW_BACKGROUND = 0
RAW_IGNORE = 255
#: Marks a raw value the tables do not accept.
_INVALID = -1
DOWNLOAD_HINT = (
    "download http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar and "
    "SegmentationClassAug.zip (DeepLab's augmented labels, see CAT-Seg's datasets/README.md) and "
    "unpack both so that {voc} holds JPEGImages/, ImageSets/ and SegmentationClassAug/"
)


def _label_table(background_value: int, class_offset: int) -> np.ndarray:
    """256-entry raw value -> output value table; ``_INVALID`` for values VOC does not use."""
    table = np.full(256, _INVALID, dtype=np.int16)
    table[RAW_BACKGROUND] = background_value
    classes = np.arange(1, NUM_VOC_CLASSES + 1)
    table[classes] = classes + class_offset
    table[RAW_IGNORE] = IGNORE_LABEL
    return table


#: Output folder name -> raw-to-output table, in the order of every job's outputs.
LABEL_TABLES = {
    NO_BACKGROUND_LABELS_DIRNAME: _label_table(background_value=IGNORE_LABEL, class_offset=-1),
    BACKGROUND_LAST_LABELS_DIRNAME: _label_table(background_value=PAS20B_BACKGROUND_ID, class_offset=-1),
    BACKGROUND_FIRST_LABELS_DIRNAME: _label_table(background_value=V21_BACKGROUND_ID, class_offset=0),
}


def output_dirs(root: Path, split: str) -> list[Path]:
    """The three label folders of ``split``, in :data:`LABEL_TABLES` order."""
    voc = Path(root) / VOC_DIRNAME
    return [voc / folder / split for folder in LABEL_TABLES]


def convert_voc_label(job: ConversionJob) -> None:
    """``run_jobs`` worker: raw label ``inputs[0]`` (checked against image ``inputs[1]``) -> the
    three label conventions; outputs that already exist (e.g. made by CAT-Seg) are left alone."""
    label_path, image_path = job.inputs
    raw = read_label(label_path)
    if raw.size == 0:
        raise CorruptInputError(f"{label_path} is an empty image. Re-download or re-extract it.")
    if raw.min() < 0 or raw.max() > 255:
        raise CorruptInputError(f"{label_path}: values {int(raw.min())}..{int(raw.max())} are not VOC label values (0..20, 255).")
    tables = list(LABEL_TABLES.values())
    invalid = tables[0][raw] == _INVALID
    if invalid.any():
        bad = sorted(int(v) for v in np.unique(raw[invalid]))
        raise CorruptInputError(
            f"{label_path}: raw values {bad[:10]} are not VOC label values (0 background, 1..20 classes, "
            "255 boundary). Re-download or re-extract this file."
        )
    image_shape = read_rgb(image_path).shape[:2]
    if image_shape != raw.shape:
        raise CorruptInputError(
            f"{label_path} is {raw.shape[1]}x{raw.shape[0]} but its image {image_path} is "
            f"{image_shape[1]}x{image_shape[0]}; one of them is not from the official release."
        )
    for target, table in zip(job.outputs, tables):
        if not target.exists():
            save_label(table[raw].astype(np.uint8), target)


def _read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise PreparationError(f"split list {path} does not exist; " + DOWNLOAD_HINT.format(voc=path.parents[2]))
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise PreparationError(f"split list {path} is empty; re-extract VOCtrainval_11-May-2012.tar.")
    return ids


def _require_dir(folder: Path, voc: Path) -> None:
    if not folder.is_dir():
        raise PreparationError(f"raw folder {folder} does not exist; " + DOWNLOAD_HINT.format(voc=voc))


def _split_ids(voc: Path, raw_labels: Path, split: str) -> list[str]:
    val_ids = _read_id_list(voc / VAL_LIST)
    if split == "val":
        return val_ids
    val = set(val_ids)
    return sorted(p.stem for p in raw_labels.glob(f"*{LABEL_EXT}") if not p.name.startswith(".") and p.stem not in val)


def _fail_if_missing(paths: list[Path], what: str, voc: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise PreparationError(
            f"{len(missing)} {what} missing: {', '.join(missing[:5])}{more}. The raw release is incomplete; "
            + DOWNLOAD_HINT.format(voc=voc)
        )


def prepare_split(
    root: Path, split: str, *, raw_labels_dirname: str = DEFAULT_RAW_LABELS_DIRNAME, workers: Optional[int] = None
) -> int:
    """Convert one split into the three label folders; returns the number of labels per folder."""
    voc = Path(root) / VOC_DIRNAME
    image_dir, raw_labels = voc / IMAGES_DIRNAME, voc / raw_labels_dirname
    for folder in (image_dir, raw_labels):
        _require_dir(folder, voc)
    ids = _split_ids(voc, raw_labels, split)
    if not ids:
        raise PreparationError(f"no {split} label in {raw_labels} (every label there is a val one).")
    expected = OFFICIAL_COUNTS.get((raw_labels_dirname, split))
    if expected is not None and len(ids) != expected:
        print(f"warning: VOC2012 {split} has {len(ids)} labels in {raw_labels}, the official set has {expected}; "
              "results on it are not comparable with published numbers.", flush=True)
    label_paths = [raw_labels / f"{i}{LABEL_EXT}" for i in ids]
    image_paths = [image_dir / f"{i}{IMAGE_EXT}" for i in ids]
    _fail_if_missing(label_paths, f"{split} label files", voc)
    _fail_if_missing(image_paths, f"{split} images", voc)

    targets = output_dirs(root, split)
    check_outputs_do_not_touch_inputs(targets, [image_dir, raw_labels, voc / "ImageSets"])
    jobs = [
        ConversionJob(inputs=(label, image), outputs=tuple(folder / f"{i}{LABEL_EXT}" for folder in targets))
        for i, label, image in zip(ids, label_paths, image_paths)
    ]
    stats = run_jobs(jobs, convert_voc_label, description=f"PASCAL VOC 2012 {split}", workers=workers)
    for folder in targets:
        verify_count(folder, LABEL_EXT, len(jobs), f"PASCAL VOC 2012 {split} labels")
    print(
        f"PASCAL VOC 2012 {split}: {stats.converted} converted, {stats.skipped} already done; "
        f"labels in {', '.join(str(t) for t in targets)}",
        flush=True,
    )
    return len(jobs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: convert the requested splits; returns the exit status (0 ok, 1 error)."""
    parser = base_parser(__doc__.split("\n\n")[0])
    add_splits_argument(parser, SPLITS)
    parser.add_argument(
        "--label-folder",
        default=DEFAULT_RAW_LABELS_DIRNAME,
        help="raw label folder inside VOCdevkit/VOC2012 (default: SegmentationClassAug; "
        "SegmentationClass gives the same val labels)",
    )
    args = parser.parse_args(argv)
    return run_splits(args, prepare_split, raw_labels_dirname=args.label_folder)
