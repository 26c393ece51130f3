"""Reading the COCO-Stuff ``stuffthingmaps_trainval2017`` release (raw input of two converters).

The release is a zip of one 8-bit PNG per COCO 2017 train/val image, value = COCO category id
- 1 (0..181) or 255 for unlabeled (see :mod:`.coco_category_ids`). CAT-Seg's layout, which users
already have, unzips it to ``$DETECTRON2_DATASETS/coco-stuff/annotations/{train2017,val2017}``
next to the images in ``coco-stuff/images/{train2017,val2017}``.

mmsegmentation's COCO-Stuff converter writes ``*_labelTrainIds.png`` files into the same folders;
they are not part of the raw release and are skipped here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import ConversionJob, CorruptInputError, PreparationError, read_label, save_label
from .common import warn_if_not_official_count as common_warn

__all__ = [
    "COCO_STUFF_DIRNAME",
    "SPLITS",
    "OFFICIAL_COUNTS",
    "raw_map_dir",
    "list_raw_maps",
    "apply_lut",
    "convert_with_lut",
    "warn_if_not_official_count",
]

#: Folder of COCO-Stuff under the data root (CAT-Seg's name).
COCO_STUFF_DIRNAME = "coco-stuff"
SPLITS = ("train2017", "val2017")
#: Number of PNGs per split in the official release.
OFFICIAL_COUNTS = {"train2017": 118_287, "val2017": 5_000}
RAW_SUFFIX = ".png"
#: Stems ending like this are derived files (mmsegmentation's ``_labelTrainIds``), not raw maps.
_DERIVED_STEM_ENDING = "TrainIds"
DOWNLOAD_HINT = (
    "download http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
    "stuffthingmaps_trainval2017.zip and unzip it into {annotations_dir} (it holds train2017/ "
    "and val2017/)"
)


def raw_map_dir(root: Path, split: str) -> Path:
    """``<root>/coco-stuff/annotations/<split>``: where the unzipped stuffthingmaps live."""
    return Path(root) / COCO_STUFF_DIRNAME / "annotations" / split


def list_raw_maps(root: Path, split: str) -> list[Path]:
    """The raw stuffthingmap PNGs of ``split``, sorted; a clear error if the folder is missing."""
    folder = raw_map_dir(root, split)
    if not folder.is_dir():
        raise PreparationError(
            f"raw COCO-Stuff label folder {folder} does not exist; "
            + DOWNLOAD_HINT.format(annotations_dir=folder.parent)
        )
    maps = sorted(
        p
        for p in folder.iterdir()
        if p.suffix == RAW_SUFFIX and not p.name.startswith(".") and not p.stem.endswith(_DERIVED_STEM_ENDING)
    )
    if not maps:
        raise PreparationError(
            f"no raw '*{RAW_SUFFIX}' stuffthingmap in {folder}; " + DOWNLOAD_HINT.format(annotations_dir=folder.parent)
        )
    return maps


def warn_if_not_official_count(split: str, found: int) -> None:
    """Warn when a COCO-Stuff split's raw map count differs from the official release."""
    common_warn(f"COCO-Stuff {split} raw maps", found, OFFICIAL_COUNTS.get(split))


def apply_lut(raw: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    """Map raw values through ``lut`` (256 entries, -1 = invalid) to a uint8 label map.

    Raises:
        CorruptInputError: a value outside 0..255, or one the table marks invalid; names ``path``.
    """
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise CorruptInputError(
            f"{path}: values {int(raw.min())}..{int(raw.max())} do not fit a stuffthingmap (0..181, 255). "
            "Re-download or re-extract this file."
        )
    mapped = lut[raw]
    invalid = mapped < 0
    if invalid.any():
        bad = sorted(int(v) for v in np.unique(raw[invalid]))
        raise CorruptInputError(
            f"{path}: raw values {bad[:10]} are not COCO-Stuff category values (0..181, 255 unlabeled). "
            "Re-download or re-extract this file."
        )
    return mapped.astype(np.uint8)


def convert_with_lut(job: ConversionJob) -> None:
    """``run_jobs`` worker: one raw map (``inputs[0]``) through the table in ``payload``."""
    (source,), (target,), lut = job.inputs, job.outputs, job.payload
    save_label(apply_lut(read_label(source), lut, source), target)
