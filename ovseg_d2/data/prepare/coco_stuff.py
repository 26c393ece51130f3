"""Prepare COCO-Stuff-171 (train2017 / val2017) in CAT-Seg's layout from the official raw release.

Input (raw, never written to), under ``--root`` (default ``$DETECTRON2_DATASETS`` or ./datasets)::

    coco-stuff/images/{train2017,val2017}/*.jpg          COCO 2017 images (train2017.zip, val2017.zip)
    coco-stuff/annotations/{train2017,val2017}/*.png     stuffthingmaps_trainval2017.zip

Output, one 8-bit PNG per raw map with the same file name::

    coco-stuff/annotations_detectron2/{train2017,val2017}/*.png

Label convention (identical to CAT-Seg's ``datasets/prepare_coco_stuff.py``): the 171 COCO
category ids that carry annotations, numbered 0..170 in increasing id order (names in
``ovseg_d2/data/class_names/coco_stuff_171.json``); unlabeled and the eleven never-annotated
thing ids become 255 (ignore). A raw value that no stuffthingmap contains (182..254) stops the
run with the file's name instead of being silently ignored.

Usage: ``python datasets/prepare_coco_stuff.py [--root DIR] [--splits val2017] [--workers N]``.
Finished files are skipped on a re-run; every file is written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .coco_category_ids import stuffthingmap_to_stuff_171_lut
from .common import (
    add_splits_argument,
    base_parser,
    check_outputs_do_not_touch_inputs,
    ConversionJob,
    run_jobs,
    run_splits,
    verify_count,
)
from .stuffthingmaps import (
    COCO_STUFF_DIRNAME,
    SPLITS,
    convert_with_lut,
    list_raw_maps,
    raw_map_dir,
    warn_if_not_official_count,
)

__all__ = ["main", "output_dir", "prepare_split"]

OUTPUT_SUFFIX = ".png"


def output_dir(root: Path, split: str) -> Path:
    """``<root>/coco-stuff/annotations_detectron2/<split>``: the registered label folder."""
    return Path(root) / COCO_STUFF_DIRNAME / "annotations_detectron2" / split


def prepare_split(root: Path, split: str, workers: Optional[int] = None) -> int:
    """Convert one split; returns the number of label files now in place."""
    raw_maps = list_raw_maps(root, split)
    warn_if_not_official_count(split, len(raw_maps))
    out_dir = output_dir(root, split)
    check_outputs_do_not_touch_inputs([out_dir], [raw_map_dir(root, split)])
    lut = stuffthingmap_to_stuff_171_lut()
    jobs = [ConversionJob(inputs=(raw,), outputs=(out_dir / (raw.stem + OUTPUT_SUFFIX),), payload=lut) for raw in raw_maps]
    stats = run_jobs(jobs, convert_with_lut, description=f"COCO-Stuff-171 {split}", workers=workers)
    verify_count(out_dir, OUTPUT_SUFFIX, len(jobs), f"COCO-Stuff-171 {split} labels")
    print(f"COCO-Stuff-171 {split}: {stats.converted} converted, {stats.skipped} already done, labels in {out_dir}", flush=True)
    return len(jobs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``datasets/prepare_coco_stuff.py``); returns the exit status."""
    parser = base_parser(__doc__.split("\n\n")[0])
    add_splits_argument(parser, SPLITS)
    return run_splits(parser.parse_args(argv), prepare_split)
