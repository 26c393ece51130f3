"""Prepare Cityscapes-19 train-id labels from the official gtFine release.

Input (raw, never written to), under ``--root`` (default ``$DETECTRON2_DATASETS`` or ./datasets),
as unzipped from ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``::

    cityscapes/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png   images (used as they are)
    cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png    8-bit label ids 0..33

Output, a new file next to each raw label (the raw files stay as they are)::

    cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png   train ids 0..18, 255 ignore

Label convention: the ``id -> trainId`` column of cityscapesScripts' ``labels.py``
(:data:`CITYSCAPES_LABELS`); the 19 evaluated classes get 0..18, the 15 void or unevaluated
label ids 255. This is what cityscapesScripts' ``createTrainIdLabelImgs.py`` writes (it draws
the same polygons, with train ids instead of ids) and what detectron2 and mmsegmentation read.
A value above 33 is no Cityscapes label id and stops the run with the file's name.

Usage: ``python datasets/prepare_cityscapes.py [--root DIR] [--splits val] [--workers N]``.
Finished files (including ones cityscapesScripts made) are skipped on a re-run; every file is
written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np

from ..datasets.cityscapes import (
    CITYSCAPES_DOWNLOAD_HINT,
    CITYSCAPES_IGNORE_LABEL,
    CITYSCAPES_SPLITS,
    IMAGE_SUFFIX,
    LABEL_SUFFIX,
    RAW_LABEL_SUFFIX,
    cityscapes_paths,
)
from .common import (
    add_splits_argument,
    base_parser,
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

__all__ = [
    "main",
    "prepare_split",
    "CityscapesLabel",
    "CITYSCAPES_LABELS",
    "train_class_names",
    "label_id_to_train_id_lut",
    "convert_label",
    "OFFICIAL_COUNTS",
]



class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int


#: cityscapesScripts ``helpers/labels.py``: (name, id, trainId) of every label id that label
#: images contain (``license plate``, id -1, is never drawn). trainId 255 = not trained on / ignored.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255),
    CityscapesLabel("ego vehicle", 1, 255),
    CityscapesLabel("rectification border", 2, 255),
    CityscapesLabel("out of roi", 3, 255),
    CityscapesLabel("static", 4, 255),
    CityscapesLabel("dynamic", 5, 255),
    CityscapesLabel("ground", 6, 255),
    CityscapesLabel("road", 7, 0),
    CityscapesLabel("sidewalk", 8, 1),
    CityscapesLabel("parking", 9, 255),
    CityscapesLabel("rail track", 10, 255),
    CityscapesLabel("building", 11, 2),
    CityscapesLabel("wall", 12, 3),
    CityscapesLabel("fence", 13, 4),
    CityscapesLabel("guard rail", 14, 255),
    CityscapesLabel("bridge", 15, 255),
    CityscapesLabel("tunnel", 16, 255),
    CityscapesLabel("pole", 17, 5),
    CityscapesLabel("polegroup", 18, 255),
    CityscapesLabel("traffic light", 19, 6),
    CityscapesLabel("traffic sign", 20, 7),
    CityscapesLabel("vegetation", 21, 8),
    CityscapesLabel("terrain", 22, 9),
    CityscapesLabel("sky", 23, 10),
    CityscapesLabel("person", 24, 11),
    CityscapesLabel("rider", 25, 12),
    CityscapesLabel("car", 26, 13),
    CityscapesLabel("truck", 27, 14),
    CityscapesLabel("bus", 28, 15),
    CityscapesLabel("caravan", 29, 255),
    CityscapesLabel("trailer", 30, 255),
    CityscapesLabel("train", 31, 16),
    CityscapesLabel("motorcycle", 32, 17),
    CityscapesLabel("bicycle", 33, 18),
)
#: Largest label id in a ``*_gtFine_labelIds.png``.
MAX_LABEL_ID = max(label.id for label in CITYSCAPES_LABELS)
#: Images per split in the official release.
OFFICIAL_COUNTS = {"train": 2_975, "val": 500}
#: Listing more missing files than this in an error helps nobody.
_MAX_LISTED = 5


def train_class_names() -> list[str]:
    """Names of train ids 0..18, in order (equal to ``cityscapes_19.json``; a test checks this)."""
    evaluated = sorted((label for label in CITYSCAPES_LABELS if label.train_id != CITYSCAPES_IGNORE_LABEL), key=lambda l: l.train_id)
    return [label.name for label in evaluated]


def label_id_to_train_id_lut() -> np.ndarray:
    """(MAX_LABEL_ID + 1,) uint8: label id -> train id (255 for void / unevaluated ids)."""
    lut = np.full(MAX_LABEL_ID + 1, CITYSCAPES_IGNORE_LABEL, dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        lut[label.id] = label.train_id
    return lut


def convert_label(raw: np.ndarray, path: Path) -> np.ndarray:
    """Raw label ids (0..33) -> uint8 train ids (0..18, 255).

    Raises:
        CorruptInputError: a value that is no Cityscapes label id; names ``path``.
    """
    if raw.size and (raw.min() < 0 or raw.max() > MAX_LABEL_ID):
        bad = sorted(int(v) for v in np.unique(raw[(raw < 0) | (raw > MAX_LABEL_ID)]))
        raise CorruptInputError(
            f"{path}: values {bad[:10]} are not Cityscapes label ids (0..{MAX_LABEL_ID}). "
            "Re-download or re-extract gtFine_trainvaltest.zip."
        )
    return label_id_to_train_id_lut()[raw]


def _convert_job(job: ConversionJob) -> None:
    """``run_jobs`` worker: one ``*_labelIds.png`` -> its ``*_labelTrainIds.png``."""
    (source,), (target,) = job.inputs, job.outputs
    save_label(convert_label(read_label(source), source), target)


def _files_with_suffix(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".") and p.is_file())


def _list_raw_labels(root: Path, split: str) -> dict[str, list[Path]]:
    """City -> its raw ``*_gtFine_labelIds.png`` files, after checking every image has one."""
    image_dir, label_dir = cityscapes_paths(root, split)
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        if not folder.is_dir():
            raise PreparationError(
                f"Cityscapes {what} folder {folder} does not exist; {CITYSCAPES_DOWNLOAD_HINT} "
                "(or pass --root, or convert only the splits you have with --splits)."
            )
    cities = sorted(p.name for p in image_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cities:
        raise PreparationError(f"no city folder in {image_dir}; {CITYSCAPES_DOWNLOAD_HINT}.")
    raw_by_city, missing = {}, []
    for city in cities:
        stems = [p.name[: -len(IMAGE_SUFFIX)] for p in _files_with_suffix(image_dir / city, IMAGE_SUFFIX)]
        raw = [label_dir / city / (stem + RAW_LABEL_SUFFIX) for stem in stems]
        missing += [str(p) for p in raw if not p.is_file()]
        raw_by_city[city] = raw
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise PreparationError(
            f"Cityscapes {split}: {len(missing)} images have no raw label: {shown}{more}. "
            "Unzip gtFine_trainvaltest.zip into the same cityscapes folder as leftImg8bit."
        )
    return raw_by_city


def prepare_split(root: Path, split: str, workers: Optional[int] = None) -> int:
    """Write the train-id labels of one split; returns the number of label files now in place."""
    raw_by_city = _list_raw_labels(root, split)
    jobs = [
        ConversionJob(inputs=(raw,), outputs=(raw.with_name(raw.name[: -len(RAW_LABEL_SUFFIX)] + LABEL_SUFFIX),))
        for raws in raw_by_city.values()
        for raw in raws
    ]
    if not jobs:
        raise PreparationError(f"no '*{IMAGE_SUFFIX}' image in the city folders of {cityscapes_paths(root, split)[0]}.")
    warn_if_not_official_count(f"Cityscapes {split} images", len(jobs), OFFICIAL_COUNTS[split])
    # Outputs go into the raw folders (the official layout, so no check_outputs_do_not_touch_inputs
    # here); they never replace a raw file: '_gtFine_labelTrainIds.png' is not a name the release uses.

    stats = run_jobs(jobs, _convert_job, description=f"Cityscapes {split}", workers=workers)
    _, label_dir = cityscapes_paths(root, split)
    for city, raws in raw_by_city.items():
        verify_count(label_dir / city, LABEL_SUFFIX, len(raws), f"Cityscapes {split} {city} train-id labels")
    print(f"Cityscapes {split}: {stats.converted} converted, {stats.skipped} already done, labels in {label_dir}/<city>", flush=True)
    return len(jobs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``datasets/prepare_cityscapes.py``); returns the exit status."""
    parser = base_parser(__doc__.split("\n\n")[0])
    add_splits_argument(parser, CITYSCAPES_SPLITS)
    return run_splits(parser.parse_args(argv), prepare_split)
