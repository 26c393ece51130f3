"""Prepare COCO-Object val2017 (80 things + background, the training-free protocol's "Object").

Output, under ``--root`` (default ``$DETECTRON2_DATASETS`` or ./datasets), one 8-bit PNG per
val2017 image, named after the image (``000000000139.jpg`` -> ``000000000139.png``)::

    coco/annotations_detectron2/object_val2017/*.png    0 = background, 1..80 = things, 255 = ignore

Label values 1..80 are the 80 COCO thing categories in increasing category-id order (names in
``ovseg_d2/data/class_names/coco_object_81.json``, index 0 "background"). The registered set
reads its images from ``coco/val2017``.

Two sources (``--source``):

``stuffthingmaps`` (default) - the published protocol. GroupViT's
    ``convert_dataset/convert_coco_object.py``, which TCL, FreeDA and Talk2DINO use to make
    their COCO-Object labels, does not rasterise instance annotations: it relabels the COCO-Stuff
    stuffthingmaps (``coco-stuff/annotations/val2017/*.png``) so that thing values become 1..80
    and every stuff AND unlabeled pixel becomes background 0 (no ignore pixels at all). This
    source reproduces exactly that, so numbers are comparable with the papers.

``instances`` - for users without COCO-Stuff: rasterises ``coco/annotations/instances_val2017.json``
    with pycocotools. Conventions (ours; the published converter has no instance-level rule):

    * every pixel starts as background 0;
    * crowd (``iscrowd=1``) regions are painted 255 (ignore) first: their outline is coarse
      and they merge many instances, so they are neither scored as the class nor as background;
    * non-crowd instances are painted on top, largest mask (pixel count) first, ties by
      annotation id, so smaller objects lying on larger ones stay visible; where a non-crowd
      instance overlaps a crowd region the instance's class wins;
    * polygons of fewer than 3 points enclose nothing and are dropped (as detectron2 does).

    Thing pixels therefore match the published labels closely but not exactly (COCO-Stuff drew
    its thing layer from the same annotations with its own overlap rule).

A hidden marker ``.ovseg_source.json`` in the output folder records the source; re-running with
the other source stops with a message instead of mixing the two. Finished files are skipped on a
re-run; every file is written atomically; a corrupt input stops the run naming the file (and
the annotation id for the JSON source).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..class_names import load_class_names
from .coco_category_ids import BACKGROUND_LABEL, IGNORE_LABEL, stuffthingmap_to_object_lut, thing_id_to_object_label
from .common import (
    atomic_save,
    base_parser,
    check_outputs_do_not_touch_inputs,
    ConversionJob,
    CorruptInputError,
    main_guard,
    PreparationError,
    resolve_root,
    run_jobs,
    save_label,
    verify_count,
)
from .stuffthingmaps import convert_with_lut, list_raw_maps, raw_map_dir, warn_if_not_official_count

__all__ = ["main", "output_dir", "instances_json_path", "instance_label_map", "SOURCES", "CLASS_NAMES_FILE"]

CLASS_NAMES_FILE = "coco_object_81"
SPLIT = "val2017"
SOURCE_STUFFTHINGMAPS = "stuffthingmaps"
SOURCE_INSTANCES = "instances"
SOURCES = (SOURCE_STUFFTHINGMAPS, SOURCE_INSTANCES)
OUTPUT_SUFFIX = ".png"
#: A polygon needs 3 (x, y) points to enclose any area.
MIN_POLYGON_COORDS = 6
MARKER_NAME = ".ovseg_source.json"
INSTANCES_DOWNLOAD_HINT = (
    "download http://images.cocodataset.org/annotations/annotations_trainval2017.zip and unzip it "
    "into {coco_dir} (it holds annotations/instances_val2017.json)"
)


def output_dir(root: Path) -> Path:
    """``<root>/coco/annotations_detectron2/object_val2017``: the registered label folder."""
    return Path(root) / "coco" / "annotations_detectron2" / f"object_{SPLIT}"


def instances_json_path(root: Path) -> Path:
    return Path(root) / "coco" / "annotations" / f"instances_{SPLIT}.json"


# ---------------------------------------------------------------- source marker
def _claim_output_folder(out_dir: Path, source: str) -> None:
    """Record ``source`` in the output folder, or stop if it already holds the other source's labels."""
    marker = out_dir / MARKER_NAME
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text()).get("source")
        except ValueError:
            previous = None
        if previous == source:
            return
        if previous is not None:
            raise PreparationError(
                f"{out_dir} holds COCO-Object labels made from '{previous}'; run again with "
                f"--source {previous}, or delete that folder to rebuild it from '{source}'."
            )
    elif out_dir.is_dir() and any(out_dir.glob(f"*{OUTPUT_SUFFIX}")):
        raise PreparationError(
            f"{out_dir} already holds label files of unknown origin (no {MARKER_NAME}); delete that "
            "folder and run again."
        )
    atomic_save(marker, lambda tmp: Path(tmp).write_text(json.dumps({"source": source}) + "\n"))


# ---------------------------------------------------------------- stuffthingmaps source
def _prepare_from_stuffthingmaps(root: Path, workers: Optional[int]) -> None:
    raw_maps = list_raw_maps(root, SPLIT)
    warn_if_not_official_count(SPLIT, len(raw_maps))
    out_dir = output_dir(root)
    check_outputs_do_not_touch_inputs([out_dir], [raw_map_dir(root, SPLIT)])
    _claim_output_folder(out_dir, SOURCE_STUFFTHINGMAPS)
    lut = stuffthingmap_to_object_lut()
    jobs = [ConversionJob(inputs=(raw,), outputs=(out_dir / (raw.stem + OUTPUT_SUFFIX),), payload=lut) for raw in raw_maps]
    stats = run_jobs(jobs, convert_with_lut, description="COCO-Object val2017 (stuffthingmaps)", workers=workers)
    verify_count(out_dir, OUTPUT_SUFFIX, len(jobs), "COCO-Object val2017 labels")
    print(f"COCO-Object val2017: {stats.converted} converted, {stats.skipped} already done, labels in {out_dir}", flush=True)


# ---------------------------------------------------------------- instances source
def _annotation_rle(segmentation: Any, height: int, width: int) -> Optional[dict]:
    """One RLE for a COCO ``segmentation`` (polygon list, uncompressed or compressed RLE).

    ``None`` for a polygon list without any polygon of 3 or more points (it encloses nothing;
    detectron2 drops such polygons too).
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= MIN_POLYGON_COORDS]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} differs from the image size {[height, width]}")
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError(f"unknown segmentation format {type(segmentation).__name__}")


def instance_label_map(height: int, width: int, annotations: Sequence[tuple[int, int, bool, Any]]) -> np.ndarray:
    """Paint one image's instances into a COCO-Object label map (conventions in the module doc).

    Args:
        annotations: ``(annotation id, label 1..80, is crowd, COCO segmentation)`` per instance.

    Raises:
        ValueError: a segmentation cannot be decoded; the message names the annotation id.
    """
    from pycocotools import mask as mask_utils

    label = np.full((height, width), BACKGROUND_LABEL, dtype=np.uint8)
    crowd, instances = [], []
    for annotation_id, class_label, is_crowd, segmentation in annotations:
        try:
            rle = _annotation_rle(segmentation, height, width)
            mask = np.zeros((height, width), bool) if rle is None else mask_utils.decode(rle).astype(bool)
        except Exception as err:  # pycocotools raises bare TypeError/ValueError on bad input
            raise ValueError(f"annotation {annotation_id}: cannot decode its segmentation: {err}") from err
        (crowd if is_crowd else instances).append((annotation_id, class_label, mask))
    for _, _, mask in crowd:
        label[mask] = IGNORE_LABEL
    for _, class_label, mask in sorted(instances, key=lambda item: (-int(item[2].sum()), item[0])):
        label[mask] = class_label
    return label


def _paint_instances(job: ConversionJob) -> None:
    """``run_jobs`` worker: one image's label map from its annotations in ``payload``."""
    (json_path,), (target,) = job.inputs, job.outputs
    file_name, height, width, annotations = job.payload
    try:
        label = instance_label_map(height, width, annotations)
    except ValueError as err:
        raise CorruptInputError(f"{json_path}: image {file_name}: {err}. Re-download this file.") from err
    save_label(label, target)


def _load_instances(json_path: Path) -> dict:
    if not json_path.is_file():
        raise PreparationError(
            f"COCO instance annotations {json_path} do not exist; "
            + INSTANCES_DOWNLOAD_HINT.format(coco_dir=json_path.parent.parent)
        )
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        if not all(isinstance(data.get(key), list) for key in ("images", "annotations", "categories")):
            raise ValueError("it lacks an 'images', 'annotations' or 'categories' list")
    except (ValueError, UnicodeDecodeError, AttributeError) as err:
        raise CorruptInputError(f"cannot read {json_path}: {err}. Re-download or re-extract it.") from err
    return data


def _category_labels(data: dict, json_path: Path) -> dict[int, int]:
    """Category id -> 1..80, after checking the file's categories are COCO's 80 things."""
    expected = thing_id_to_object_label()
    names = load_class_names(CLASS_NAMES_FILE)
    found = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    if sorted(found) != sorted(expected):
        raise CorruptInputError(
            f"{json_path}: category ids {sorted(found)[:10]}... are not the 80 COCO thing ids; "
            "is this COCO's instances_val2017.json?"
        )
    wrong = [(cid, found[cid], names[label]) for cid, label in expected.items() if found[cid] != names[label]]
    if wrong:
        raise CorruptInputError(f"{json_path}: category names differ from {CLASS_NAMES_FILE}.json: {wrong[:5]}")
    return expected


def _instance_jobs(data: dict, json_path: Path, out_dir: Path) -> list[ConversionJob]:
    labels = _category_labels(data, json_path)
    images = {int(image["id"]): image for image in data["images"]}
    per_image: dict[int, list] = defaultdict(list)
    for annotation in data["annotations"]:
        image_id, category_id = int(annotation["image_id"]), int(annotation["category_id"])
        if image_id not in images:
            raise CorruptInputError(f"{json_path}: annotation {annotation.get('id')} refers to unknown image {image_id}")
        if category_id not in labels:
            raise CorruptInputError(f"{json_path}: annotation {annotation.get('id')} has unknown category {category_id}")
        per_image[image_id].append(
            (int(annotation["id"]), labels[category_id], bool(annotation.get("iscrowd", 0)), annotation["segmentation"])
        )
    jobs = []
    for image_id in sorted(images):
        image = images[image_id]
        stem = Path(image["file_name"]).stem
        payload = (image["file_name"], int(image["height"]), int(image["width"]), tuple(per_image.get(image_id, ())))
        jobs.append(ConversionJob(inputs=(json_path,), outputs=(out_dir / (stem + OUTPUT_SUFFIX),), payload=payload))
    if len({job.outputs[0] for job in jobs}) != len(jobs):
        raise CorruptInputError(f"{json_path}: two images share a file name")
    return jobs


def _prepare_from_instances(root: Path, workers: Optional[int]) -> None:
    json_path = instances_json_path(root)
    out_dir = output_dir(root)
    check_outputs_do_not_touch_inputs([out_dir], [json_path.parent, Path(root) / "coco" / SPLIT])
    data = _load_instances(json_path)
    jobs = _instance_jobs(data, json_path, out_dir)
    del data
    _claim_output_folder(out_dir, SOURCE_INSTANCES)
    stats = run_jobs(jobs, _paint_instances, description="COCO-Object val2017 (instances)", workers=workers)
    verify_count(out_dir, OUTPUT_SUFFIX, len(jobs), "COCO-Object val2017 labels")
    print(f"COCO-Object val2017: {stats.converted} converted, {stats.skipped} already done, labels in {out_dir}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default=SOURCE_STUFFTHINGMAPS,
        help="stuffthingmaps: coco-stuff/annotations/val2017 (the published protocol, default); "
        "instances: coco/annotations/instances_val2017.json rasterised with pycocotools",
    )
    args = parser.parse_args(argv)
    root = resolve_root(args)

    def run() -> None:
        if args.source == SOURCE_STUFFTHINGMAPS:
            _prepare_from_stuffthingmaps(root, args.workers)
        else:
            _prepare_from_instances(root, args.workers)

    return main_guard(run)
