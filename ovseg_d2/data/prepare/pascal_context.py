"""Prepare PASCAL Context val (PC-59, PC-459, C60) in CAT-Seg's layout from the official raw release.

Input (raw, never written to), under ``--root`` (default ``$DETECTRON2_DATASETS`` or ./datasets)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg        VOCtrainval_03-May-2010.tar
    VOCdevkit/VOC2010/trainval_merged.json    PASCAL in Detail annotations (PC-59 and C60)
    VOCdevkit/VOC2010/trainval/*.mat          PASCAL Context trainval.tar.gz: ``LabelMap``, ids 1..459 (PC-459)
    VOCdevkit/VOC2010/labels.txt              same archive: ``<id>: <name>`` for the 459 classes
    VOCdevkit/VOC2010/pascalcontext_val.txt   optional: CAT-Seg's list of the 5,105 val ids

Output (val only, as CAT-Seg's scripts; conventions in ``ovseg_d2/data/datasets/pascal_context.py``)::

    VOCdevkit/VOC2010/annotations_detectron2/pc59_val/*.png    59 classes 0..58, rest 255
    VOCdevkit/VOC2010/annotations_detectron2/pc60_val/*.png    background 0, 59 classes 1..59
    VOCdevkit/VOC2010/annotations_detectron2/pc459_val/*.tif   16-bit, LabelMap - 1 (0..458)

PC-59 and C60 (as CAT-Seg's ``prepare_pascal_context_59.py`` and the Detail API's ``getMask``):
the val images are those of ``trainval_merged.json`` with ``phase == "val"``; each image's
``annos_segmentation`` run-length masks are painted in file order onto a zero canvas with their
``category_id`` (a PASCAL Context id, 1..459), later ones on top. The 59 ids in
:data:`PC59_CONTEXT_IDS` then become 0..58 (PC-59) or 1..59 (C60); every other pixel (0 = no
annotation, or another class) becomes 255 (PC-59) or background 0 (C60).

PC-459 (as CAT-Seg's ``prepare_pascal_context_459.py``): for each val id, ``trainval/<id>.mat``'s
``LabelMap`` minus one, saved as a 16-bit TIFF. The val ids come from ``pascalcontext_val.txt``
when present, else from the ``val`` images of ``trainval_merged.json``. A raw 0 (unlabelled; not
in the official val maps) becomes the ignore value 459 (CAT-Seg's would wrap to 65535).

Stops with a message naming the file for: an unreadable or malformed JSON, annotation, ``.mat``
or image; an id outside 0..459; an image whose size differs from its annotation. A missing
``.mat`` or image is an error too (CAT-Seg skips a missing ``.mat`` silently).

Usage: ``python datasets/prepare_pascal_context.py [--root DIR] [--benchmarks pc59 pc60 pc459]
[--workers N]``. Finished files are skipped on a re-run; every file is written atomically.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..class_names import load_class_names
from ..datasets.pascal_context import (
    CONTEXT_DIRNAME,
    IMAGE_EXT,
    IMAGES_DIRNAME,
    LABELS_DIRNAME,
    NUM_PC459_CLASSES,
    PC59_IGNORE_LABEL,
    PC59_LABEL_EXT,
    PC59_VAL_DIRNAME,
    PC60_BACKGROUND_ID,
    PC60_LABEL_EXT,
    PC60_VAL_DIRNAME,
    PC459_CLASS_NAMES_FILE,
    PC459_IGNORE_LABEL,
    PC459_LABEL_EXT,
    PC459_VAL_DIRNAME,
)
from .common import (
    base_parser,
    check_outputs_do_not_touch_inputs,
    ConversionJob,
    CorruptInputError,
    main_guard,
    PreparationError,
    read_rgb,
    resolve_root,
    run_jobs,
    save_label,
    verify_count,
    warn_if_not_official_count,
)

__all__ = [
    "main",
    "prepare",
    "PC59_CONTEXT_IDS",
    "PC59_TABLE",
    "PC60_TABLE",
    "BENCHMARKS",
    "convert_detail_annotations",
    "convert_label_map",
    "read_labels_txt",
]

DETAIL_JSON = "trainval_merged.json"
MAT_DIRNAME = "trainval"
LABELS_TXT = "labels.txt"
CATSEG_VAL_LIST = "pascalcontext_val.txt"
VAL_PHASE = "val"
#: The official val split's size; another count still converts, with a warning.
OFFICIAL_VAL_COUNT = 5105
#: ``LabelMap`` key in the ``.mat`` files.
LABEL_MAP_KEY = "LabelMap"
#: PASCAL Context ids are 1..MAX_CONTEXT_ID; 0 means "no label" in the raw data.
MAX_CONTEXT_ID = NUM_PC459_CLASSES
NO_LABEL = 0
BENCHMARKS = ("pc59", "pc60", "pc459")

#: PASCAL Context ids (``labels.txt`` numbering) of the 59 classes, in PC-59 order (increasing id);
#: the Detail API's and CAT-Seg's ``_mapping`` without its leading 0.
PC59_CONTEXT_IDS = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98,
    104, 105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308,
    324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)


def _context_table(other_value: int, first_class_value: int) -> np.ndarray:
    """Context id (0..459) -> label value: the 59 classes numbered from ``first_class_value``."""
    table = np.full(MAX_CONTEXT_ID + 1, other_value, dtype=np.uint8)
    table[list(PC59_CONTEXT_IDS)] = np.arange(len(PC59_CONTEXT_IDS)) + first_class_value
    return table


#: Painted Context ids -> PC-59 labels (everything else ignored) and -> C60 labels (else background).
PC59_TABLE = _context_table(other_value=PC59_IGNORE_LABEL, first_class_value=0)
PC60_TABLE = _context_table(other_value=PC60_BACKGROUND_ID, first_class_value=PC60_BACKGROUND_ID + 1)
_TABLES = {"pc59": PC59_TABLE, "pc60": PC60_TABLE}
_OUTPUT_FOLDERS = {
    "pc59": (PC59_VAL_DIRNAME, PC59_LABEL_EXT),
    "pc60": (PC60_VAL_DIRNAME, PC60_LABEL_EXT),
    "pc459": (PC459_VAL_DIRNAME, PC459_LABEL_EXT),
}

DOWNLOAD_HINT = (
    "see CAT-Seg's datasets/README.md: unpack VOCtrainval_03-May-2010.tar (JPEGImages), put "
    "trainval_merged.json (PC-59/C60) and the contents of PASCAL Context's trainval.tar.gz "
    "(trainval/*.mat and labels.txt, PC-459) into {context}"
)


# ---------------------------------------------------------------- shared checks
def _check_image(image_path: Path, shape: tuple[int, int], source: str) -> None:
    """Decode the image (naming it if corrupt) and compare its size with its annotation's."""
    image_shape = read_rgb(image_path).shape[:2]
    if image_shape != tuple(shape):
        raise CorruptInputError(
            f"{source} is {shape[1]}x{shape[0]} but its image {image_path} is {image_shape[1]}x{image_shape[0]}; "
            "one of them is not from the official release."
        )


def _fail_if_missing(paths: Sequence[Path], what: str, context: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise PreparationError(
            f"{len(missing)} {what} missing: {', '.join(missing[:5])}{more}. The raw release is incomplete; "
            + DOWNLOAD_HINT.format(context=context)
        )


# ---------------------------------------------------------------- PC-59 / C60 from trainval_merged.json
def _decode_segmentation(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """One Detail (COCO-style) run-length mask -> (H, W) bool; compressed or uncompressed counts."""
    from pycocotools import mask as mask_utils

    if not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
        raise CorruptInputError(f"{where}: segmentation is not a run-length mask {{'size', 'counts'}} as in trainval_merged.json.")
    if list(segmentation["size"]) != [height, width]:
        raise CorruptInputError(f"{where}: mask size {segmentation['size']} differs from the image's {[height, width]}.")
    try:
        rle = segmentation
        if isinstance(rle["counts"], list):  # uncompressed counts
            rle = mask_utils.frPyObjects(rle, height, width)
        decoded = mask_utils.decode(rle)
    except Exception as err:
        raise CorruptInputError(f"{where}: cannot decode the run-length mask ({type(err).__name__}: {err}).") from err
    if decoded.shape != (height, width):
        raise CorruptInputError(f"{where}: decoded mask has shape {decoded.shape}, expected {(height, width)}.")
    return decoded.astype(bool)


def convert_detail_annotations(job: ConversionJob) -> None:
    """``run_jobs`` worker: paint one image's annotations, write its PC-59 and/or C60 label.

    ``inputs`` = (json, image); ``payload`` = (height, width, annotations, benchmarks) with
    annotations a tuple of (annotation id, category id, segmentation) in file order.
    """
    json_path, image_path = job.inputs
    height, width, annotations, benchmarks = job.payload
    canvas = np.full((height, width), NO_LABEL, dtype=np.int16)
    for annotation_id, category_id, segmentation in annotations:
        where = f"{json_path}, annotation {annotation_id} of {image_path.name}"
        canvas[_decode_segmentation(segmentation, height, width, where)] = category_id
    _check_image(image_path, (height, width), f"the annotation of {image_path.name} in {json_path}")
    for target, benchmark in zip(job.outputs, benchmarks):
        if not target.exists():
            save_label(_TABLES[benchmark][canvas], target)


def _load_detail_json(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptInputError(f"{path} is not valid JSON ({err}); re-download trainval_merged.json.") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annos_segmentation"), list):
        raise CorruptInputError(f"{path} lacks the 'images' / 'annos_segmentation' lists of a PASCAL in Detail file.")
    return data


def _val_images_and_annotations(path: Path, data: dict) -> tuple[list[dict], dict[Any, list]]:
    """The val image records (file order) and, per image id, its (id, category, mask) tuples."""
    try:
        val_images = [image for image in data["images"] if image["phase"] == VAL_PHASE]
        for image in val_images:
            if "image_id" not in image:
                raise KeyError("image_id")
            image["height"], image["width"], image["file_name"] = int(image["height"]), int(image["width"]), str(image["file_name"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptInputError(f"{path}: an image record lacks phase/image_id/file_name/height/width ({err!r}).") from err
    wanted = {image["image_id"] for image in val_images}
    annotations: dict[Any, list] = {image_id: [] for image_id in wanted}
    for index, annotation in enumerate(data["annos_segmentation"]):
        try:
            image_id = annotation["image_id"]
            if image_id not in wanted:
                continue
            category_id = annotation["category_id"]
            segmentation = annotation["segmentation"]
        except (KeyError, TypeError) as err:
            raise CorruptInputError(f"{path}: annos_segmentation[{index}] lacks image_id/category_id/segmentation.") from err
        annotation_id = annotation.get("id", f"#{index}")
        if not isinstance(category_id, int) or not NO_LABEL <= category_id <= MAX_CONTEXT_ID:
            raise CorruptInputError(f"{path}: annotation {annotation_id} has category_id {category_id!r}, not a PASCAL Context id 1..{MAX_CONTEXT_ID}.")
        annotations[image_id].append((annotation_id, category_id, segmentation))
    return val_images, annotations


def _prepare_from_detail(context: Path, benchmarks: list[str], workers: Optional[int]) -> list[str]:
    """PC-59 and/or C60; returns the val image stems (file order of the JSON)."""
    json_path, image_dir = context / DETAIL_JSON, context / IMAGES_DIRNAME
    if not json_path.is_file():
        raise PreparationError(f"{json_path} does not exist; " + DOWNLOAD_HINT.format(context=context))
    print(f"reading {json_path} ...", flush=True)
    val_images, annotations = _val_images_and_annotations(json_path, _load_detail_json(json_path))
    if not val_images:
        raise CorruptInputError(f"{json_path} lists no image with phase 'val'.")
    warn_if_not_official_count(f"{json_path} val images", len(val_images), OFFICIAL_VAL_COUNT)
    image_paths = [image_dir / image["file_name"] for image in val_images]
    _fail_if_missing(image_paths, "val images", context)

    targets = [context / LABELS_DIRNAME / _OUTPUT_FOLDERS[b][0] for b in benchmarks]
    check_outputs_do_not_touch_inputs(targets, [image_dir, json_path])
    stems = [Path(image["file_name"]).stem for image in val_images]
    jobs = [
        ConversionJob(
            inputs=(json_path, image_path),
            outputs=tuple(folder / f"{stem}{_OUTPUT_FOLDERS[b][1]}" for folder, b in zip(targets, benchmarks)),
            payload=(image["height"], image["width"], tuple(annotations[image["image_id"]]), tuple(benchmarks)),
        )
        for image, image_path, stem in zip(val_images, image_paths, stems)
    ]
    names = "/".join(b.upper() for b in benchmarks)
    stats = run_jobs(jobs, convert_detail_annotations, description=f"PASCAL Context {names} val", workers=workers)
    for folder, benchmark in zip(targets, benchmarks):
        verify_count(folder, _OUTPUT_FOLDERS[benchmark][1], len(jobs), f"PASCAL Context {benchmark.upper()} val labels")
    print(f"PASCAL Context {names} val: {stats.converted} converted, {stats.skipped} already done; "
          f"labels in {', '.join(map(str, targets))}", flush=True)
    return stems


# ---------------------------------------------------------------- PC-459 from trainval/*.mat
def read_labels_txt(path: Path) -> dict[int, str]:
    """``labels.txt`` (``<id>: <name>`` per line) -> {id: name}; must number 1..459 exactly."""
    if not path.is_file():
        raise PreparationError(f"{path} does not exist; " + DOWNLOAD_HINT.format(context=path.parent))
    entries: dict[int, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if ":" not in line:
            continue
        number, name = line.split(":", 1)
        try:
            entries[int(number.strip())] = name.strip()
        except ValueError as err:
            raise CorruptInputError(f"{path}: line {line!r} is not '<id>: <name>'.") from err
    if sorted(entries) != list(range(1, MAX_CONTEXT_ID + 1)):
        raise CorruptInputError(
            f"{path} numbers {len(entries)} classes; PASCAL Context's labels.txt numbers exactly 1..{MAX_CONTEXT_ID}."
        )
    return entries


def _warn_if_names_differ(labels: dict[int, str], path: Path) -> None:
    """The shipped PC-459 names must describe the same ids (compared without spaces and case)."""
    shipped = load_class_names(PC459_CLASS_NAMES_FILE)

    def normalise(name: str) -> str:
        return re.sub(r"\s+", "", name).lower()

    differing = [(i, labels[i], shipped[i - 1]) for i in sorted(labels) if normalise(labels[i]) != normalise(shipped[i - 1])]
    if differing:
        shown = ", ".join(f"{i}: {raw!r} vs {ours!r}" for i, raw, ours in differing[:5])
        print(f"warning: {len(differing)} names of {path} differ from {PC459_CLASS_NAMES_FILE}.json ({shown}); "
              "check that this labels.txt belongs to the .mat files.", flush=True)


def convert_label_map(job: ConversionJob) -> None:
    """``run_jobs`` worker: ``trainval/<id>.mat`` (``inputs[0]``, checked against image
    ``inputs[1]``) -> 16-bit TIFF of ``LabelMap - 1``, raw 0 -> :data:`PC459_IGNORE_LABEL`."""
    import scipy.io

    mat_path, image_path = job.inputs
    try:
        content = scipy.io.loadmat(str(mat_path))
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CorruptInputError(f"cannot read {mat_path}: {type(err).__name__}: {err}. Re-extract trainval.tar.gz.") from err
    if LABEL_MAP_KEY not in content:
        raise CorruptInputError(f"{mat_path} has no '{LABEL_MAP_KEY}' array (keys: {sorted(k for k in content if not k.startswith('__'))}).")
    raw = np.asarray(content[LABEL_MAP_KEY])
    if raw.ndim != 2 or raw.size == 0 or not np.issubdtype(raw.dtype, np.integer):
        raise CorruptInputError(f"{mat_path}: {LABEL_MAP_KEY} is {raw.dtype} with shape {raw.shape}, not a 2-D integer label map.")
    raw = raw.astype(np.int64)
    if raw.min() < NO_LABEL or raw.max() > MAX_CONTEXT_ID:
        raise CorruptInputError(f"{mat_path}: {LABEL_MAP_KEY} values {int(raw.min())}..{int(raw.max())} are outside 0..{MAX_CONTEXT_ID}.")
    _check_image(image_path, raw.shape, str(mat_path))
    label = np.where(raw == NO_LABEL, PC459_IGNORE_LABEL, raw - 1)
    save_label(label.astype(np.uint16), job.outputs[0])


def _pc459_val_ids(context: Path, json_stems: Optional[list[str]]) -> list[str]:
    """CAT-Seg's ``pascalcontext_val.txt`` if present, else the JSON's val images."""
    listed = context / CATSEG_VAL_LIST
    if listed.is_file():
        ids = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        if not ids:
            raise CorruptInputError(f"{listed} is empty.")
        return ids
    if json_stems is not None:
        return json_stems
    json_path = context / DETAIL_JSON
    if json_path.is_file():
        val_images, _ = _val_images_and_annotations(json_path, _load_detail_json(json_path))
        return [Path(image["file_name"]).stem for image in val_images]
    raise PreparationError(
        f"PC-459 needs the val ids: put CAT-Seg's {CATSEG_VAL_LIST} or {DETAIL_JSON} into {context}."
    )


def _prepare_pc459(context: Path, json_stems: Optional[list[str]], workers: Optional[int]) -> None:
    mat_dir, image_dir = context / MAT_DIRNAME, context / IMAGES_DIRNAME
    if not mat_dir.is_dir():
        raise PreparationError(f"{mat_dir} does not exist; " + DOWNLOAD_HINT.format(context=context))
    _warn_if_names_differ(read_labels_txt(context / LABELS_TXT), context / LABELS_TXT)
    ids = _pc459_val_ids(context, json_stems)
    warn_if_not_official_count("the PC-459 val list", len(ids), OFFICIAL_VAL_COUNT)
    mat_paths = [mat_dir / f"{i}.mat" for i in ids]
    image_paths = [image_dir / f"{i}{IMAGE_EXT}" for i in ids]
    _fail_if_missing(mat_paths, "PC-459 label maps", context)
    _fail_if_missing(image_paths, "val images", context)

    target = context / LABELS_DIRNAME / PC459_VAL_DIRNAME
    check_outputs_do_not_touch_inputs([target], [image_dir, mat_dir])
    jobs = [
        ConversionJob(inputs=(mat, image), outputs=(target / f"{i}{PC459_LABEL_EXT}",))
        for i, mat, image in zip(ids, mat_paths, image_paths)
    ]
    stats = run_jobs(jobs, convert_label_map, description="PASCAL Context PC-459 val", workers=workers)
    verify_count(target, PC459_LABEL_EXT, len(jobs), "PASCAL Context PC-459 val labels")
    print(f"PASCAL Context PC-459 val: {stats.converted} converted, {stats.skipped} already done; labels in {target}", flush=True)


def prepare(root: Path, benchmarks: Sequence[str] = BENCHMARKS, workers: Optional[int] = None) -> None:
    """Write the requested val label folders (``pc59``, ``pc60``, ``pc459``) under ``root``."""
    context = Path(root) / CONTEXT_DIRNAME
    if not (context / IMAGES_DIRNAME).is_dir():
        raise PreparationError(f"{context / IMAGES_DIRNAME} does not exist; " + DOWNLOAD_HINT.format(context=context))
    unknown = sorted(set(benchmarks) - set(BENCHMARKS))
    if unknown:
        raise PreparationError(f"unknown benchmarks {unknown}; choose from {list(BENCHMARKS)}.")
    from_json = [b for b in BENCHMARKS if b in benchmarks and b in _TABLES]
    json_stems = _prepare_from_detail(context, from_json, workers) if from_json else None
    if "pc459" in benchmarks:
        _prepare_pc459(context, json_stems, workers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: convert the requested benchmarks; returns the exit status (0 ok, 1 error)."""
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS),
                        help="label folders to write (default: all three)")
    args = parser.parse_args(argv)
    root = resolve_root(args)
    return main_guard(lambda: prepare(root, args.benchmarks, args.workers))
