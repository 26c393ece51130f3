"""Prepare ADE20K-150 (A-150) labels in CAT-Seg's layout from the official SceneParsing release.

Input (raw, never written to), under ``--root`` (default ``$DETECTRON2_DATASETS`` or ./datasets),
as unzipped from ``ADEChallengeData2016.zip``::

    ADEChallengeData2016/images/{training,validation}/*.jpg       images (used as they are)
    ADEChallengeData2016/annotations/{training,validation}/*.png  8-bit labels

Output, one 8-bit PNG per raw label with the same file name::

    ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png

Label convention (identical to CAT-Seg's ``datasets/prepare_ade20k_150.py``, which computes
``uint8(raw - 1)``): raw 1..150 (the classes) become 0..149, raw 0 ("other objects", not
evaluated) becomes 255 (ignore). A raw value above 150 stops the run with the file's name
instead of wrapping into a wrong class.

Usage: ``python datasets/prepare_ade20k_150.py [--root DIR] [--splits validation] [--workers N]``.
Finished files are skipped on a re-run; every file is written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..datasets.ade20k import (
    ADE20K_150_DIRNAME,
    ADE20K_150_DOWNLOAD_HINT,
    ADE20K_150_IGNORE_LABEL,
    ADE20K_150_IMAGE_EXT,
    ADE20K_150_LABEL_EXT,
    ADE20K_150_RAW_LABELS_DIRNAME,
    ADE20K_150_SPLITS,
    ade20k_150_paths,
)
from .common import (
    add_splits_argument,
    base_parser,
    check_outputs_do_not_touch_inputs,
    ConversionJob,
    CorruptInputError,
    PreparationError,
    read_label,
    run_jobs,
    run_splits,
    save_label,
    verify_count,
    warn_if_not_official_count,
)

__all__ = ["main", "prepare_split", "convert_label", "raw_label_dir", "NUM_CLASSES", "OFFICIAL_COUNTS"]


#: Raw values 1..NUM_CLASSES are classes; 0 is "other".
NUM_CLASSES = 150
RAW_OTHER_VALUE = 0
#: Images (and labels) per split in the official release.
OFFICIAL_COUNTS = {"training": 20_210, "validation": 2_000}
#: Listing more missing images than this in an error helps nobody.
_MAX_LISTED = 5


def raw_label_dir(root: Path, split: str) -> Path:
    """``<root>/ADEChallengeData2016/annotations/<split>``: the raw labels."""
    return Path(root) / ADE20K_150_DIRNAME / ADE20K_150_RAW_LABELS_DIRNAME / split


def convert_label(raw: np.ndarray, path: Path) -> np.ndarray:
    """Raw SceneParsing label (0 other, 1..150 classes) -> uint8 (0..149, 255 ignore).

    Raises:
        CorruptInputError: a value outside 0..150; names ``path``.
    """
    if raw.size and (raw.min() < 0 or raw.max() > NUM_CLASSES):
        bad = sorted(int(v) for v in np.unique(raw[(raw < 0) | (raw > NUM_CLASSES)]))
        raise CorruptInputError(
            f"{path}: values {bad[:10]} are not ADE20K-150 label values (0 other, 1..{NUM_CLASSES} classes). "
            "Re-download or re-extract this file."
        )
    return np.where(raw == RAW_OTHER_VALUE, ADE20K_150_IGNORE_LABEL, raw - 1).astype(np.uint8)


def _convert_job(job: ConversionJob) -> None:
    """``run_jobs`` worker: one raw label (``inputs[0]``) -> one converted label (``outputs[0]``)."""
    (source,), (target,) = job.inputs, job.outputs
    save_label(convert_label(read_label(source), source), target)


def _visible_files(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == suffix and not p.name.startswith(".") and p.is_file())


def _check_images_match_labels(image_dir: Path, raw_dir: Path, labels: list[Path]) -> None:
    """Every label needs its image and vice versa, else the registered set would fail at first use."""
    image_stems = {p.stem for p in _visible_files(image_dir, ADE20K_150_IMAGE_EXT)}
    label_stems = {p.stem for p in labels}
    problems = []
    for missing, what, folder, suffix in (
        (sorted(label_stems - image_stems), "labels have no image", image_dir, ADE20K_150_IMAGE_EXT),
        (sorted(image_stems - label_stems), "images have no raw label", raw_dir, ADE20K_150_LABEL_EXT),
    ):
        if missing:
            shown = ", ".join(str(folder / (stem + suffix)) for stem in missing[:_MAX_LISTED])
            more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
            problems.append(f"{len(missing)} {what}; missing: {shown}{more}")
    if problems:
        raise PreparationError(
            "ADEChallengeData2016 is incomplete: " + "; ".join(problems) + ". Re-extract ADEChallengeData2016.zip."
        )


def prepare_split(root: Path, split: str, workers: Optional[int] = None) -> int:
    """Convert one split; returns the number of label files now in place."""
    raw_dir = raw_label_dir(root, split)
    image_dir, out_dir = ade20k_150_paths(root, split)
    for folder, what in ((raw_dir, "raw label"), (image_dir, "image")):
        if not folder.is_dir():
            raise PreparationError(
                f"ADE20K-150 {what} folder {folder} does not exist; {ADE20K_150_DOWNLOAD_HINT} "
                "(or pass --root, or convert only the splits you have with --splits)."
            )
    labels = _visible_files(raw_dir, ADE20K_150_LABEL_EXT)
    if not labels:
        raise PreparationError(f"no raw '*{ADE20K_150_LABEL_EXT}' label in {raw_dir}; re-extract ADEChallengeData2016.zip.")
    _check_images_match_labels(image_dir, raw_dir, labels)
    warn_if_not_official_count(f"ADE20K-150 {split} labels", len(labels), OFFICIAL_COUNTS[split])
    check_outputs_do_not_touch_inputs([out_dir], [raw_dir, image_dir])

    jobs = [ConversionJob(inputs=(raw,), outputs=(out_dir / raw.name,)) for raw in labels]
    stats = run_jobs(jobs, _convert_job, description=f"ADE20K-150 {split}", workers=workers)
    verify_count(out_dir, ADE20K_150_LABEL_EXT, len(jobs), f"ADE20K-150 {split} labels")
    print(f"ADE20K-150 {split}: {stats.converted} converted, {stats.skipped} already done, labels in {out_dir}", flush=True)
    return len(jobs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``datasets/prepare_ade20k_150.py``); returns the exit status."""
    parser = base_parser(__doc__.split("\n\n")[0])
    add_splits_argument(parser, ADE20K_150_SPLITS)
    return run_splits(parser.parse_args(argv), prepare_split)
