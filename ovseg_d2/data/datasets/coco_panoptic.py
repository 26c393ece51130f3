"""COCO panoptic val2017 as per-image segment lists: CLIPSelf's region-classification benchmark.

The raw release (``panoptic_annotations_trainval2017.zip``, as detectron2 lays it out) is
``coco/annotations/panoptic_val2017.json`` plus one RGB PNG per image in
``coco/panoptic_val2017/``; a pixel's segment id is ``R + 256 G + 256^2 B`` (0 = no segment)
and the JSON describes each segment. One dict per image::

    {"file_name": ".../coco/val2017/000000000139.jpg", "image_id": 139, "height": 426, "width": 640,
     "pan_seg_file_name": ".../coco/panoptic_val2017/000000000139.png",
     "segments_info": [{"id": 3226956, "category_id": 0, "isthing": True,
                        "bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS,
                        "area": 2543, "iscrowd": 0}, ...]}

``category_id`` is contiguous, 0..132: the JSON's 133 categories in increasing id order, which
puts the 80 things (0..79) before the 53 stuff classes (80..132) - the same numbering as
detectron2's "standard" panoptic metadata. ``bbox`` is converted from COCO's XYWH to absolute
XYXY. Names are shipped in ``ovseg_d2/data/class_names/coco_panoptic_133.json`` (the official
category names, e.g. "wall-other-merged"), so a vocabulary is always a file in the package;
the loader checks that the JSON's categories have exactly these names and this thing/stuff
split and stops with a clear message otherwise.

Decode a segment map with :func:`panoptic_segment_masks`; segment ``s``'s mask is
``segment_map == s["id"]``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..class_names import load_class_names
from .coco_files import check_files_present, missing_data_error, read_json, require_file, require_folder

__all__ = [
    "PANOPTIC_CLASS_NAMES_FILE",
    "NUM_PANOPTIC_THING_CLASSES",
    "panoptic_class_is_thing",
    "load_coco_panoptic_regions",
    "panoptic_segment_masks",
    "rgb_to_segment_id",
]

logger = logging.getLogger(__name__)

PANOPTIC_CLASS_NAMES_FILE = "coco_panoptic_133"
#: Things come first in id order: contiguous ids 0..79 are things, 80..132 stuff.
NUM_PANOPTIC_THING_CLASSES = 80
#: Segment id = R + RGB_BASE * G + RGB_BASE**2 * B (the COCO panoptic format).
RGB_BASE = 256


def panoptic_class_is_thing() -> list[bool]:
    """Per contiguous class id: is it a thing (countable object) class?"""
    num_classes = len(load_class_names(PANOPTIC_CLASS_NAMES_FILE))
    return [index < NUM_PANOPTIC_THING_CLASSES for index in range(num_classes)]


def rgb_to_segment_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 panoptic PNG pixels -> (H, W) int32 segment ids."""
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + RGB_BASE * rgb[..., 1] + RGB_BASE * RGB_BASE * rgb[..., 2]


def panoptic_segment_masks(dataset_dict: dict[str, Any]) -> np.ndarray:
    """The (H, W) int32 segment-id map of a dict from :func:`load_coco_panoptic_regions`.

    Raises:
        FileNotFoundError: the PNG is missing (the message names it).
        ValueError: the PNG is not an RGB image of the dict's size.
    """
    from PIL import Image

    path = Path(dataset_dict["pan_seg_file_name"])
    if not path.is_file():
        raise FileNotFoundError(
            f"panoptic segment PNG {path} does not exist; re-extract coco/annotations/panoptic_val2017.zip into coco/"
        )
    with Image.open(path) as image:
        if image.mode != "RGB":
            raise ValueError(f"{path} is a {image.mode} image; a COCO panoptic PNG is RGB")
        rgb = np.asarray(image)
    expected = (dataset_dict.get("height"), dataset_dict.get("width"))
    if None not in expected and rgb.shape[:2] != expected:
        raise ValueError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]}, its image is {expected[1]}x{expected[0]}")
    return rgb_to_segment_id(rgb)


def _contiguous_category_ids(categories: list[dict], json_path: Path) -> dict[int, int]:
    """JSON category id -> 0..132, after checking names and the thing/stuff split."""
    names = load_class_names(PANOPTIC_CLASS_NAMES_FILE)
    is_thing = panoptic_class_is_thing()
    ordered = sorted(categories, key=lambda c: int(c["id"]))
    found = [(str(c["name"]), bool(c.get("isthing", 0))) for c in ordered]
    shipped = list(zip(names, is_thing))
    if found != shipped:
        first = next((i for i, (a, b) in enumerate(zip(found, shipped)) if a != b), min(len(found), len(shipped)))
        got = found[first] if first < len(found) else "nothing"
        want = shipped[first] if first < len(shipped) else "nothing"
        raise ValueError(
            f"{json_path}: its {len(found)} categories differ from {PANOPTIC_CLASS_NAMES_FILE}.json "
            f"({len(shipped)} classes); first difference at class {first}: (name, isthing) {got} in the "
            f"file, {want} shipped. Is it COCO's panoptic_val2017.json?"
        )
    return {int(c["id"]): index for index, c in enumerate(ordered)}


def _segment(info: dict, contiguous: dict[int, int], json_path: Path, image_id: int) -> dict[str, Any]:
    from detectron2.structures import BoxMode

    category = int(info["category_id"])
    if category not in contiguous:
        raise ValueError(f"{json_path}: segment {info.get('id')} of image {image_id} has unknown category {category}")
    x, y, w, h = (float(v) for v in info["bbox"])
    label = contiguous[category]
    return {
        "id": int(info["id"]),
        "category_id": label,
        "isthing": label < NUM_PANOPTIC_THING_CLASSES,
        "bbox": [x, y, x + w, y + h],
        "bbox_mode": BoxMode.XYXY_ABS,
        "area": int(info["area"]),
        "iscrowd": int(info.get("iscrowd", 0)),
    }


def load_coco_panoptic_regions(
    name: str, *, image_root: str, panoptic_root: str, panoptic_json: str, prepare_hint: str
) -> list[dict[str, Any]]:
    """One dict per annotated image with its segments (format in the module doc), sorted by image_id.

    Raises:
        FileNotFoundError: the JSON, a folder, an image or a panoptic PNG is missing.
        ValueError: the JSON is malformed or its categories are not COCO panoptic's 133.
    """
    image_dir, pan_dir, json_path = Path(image_root), Path(panoptic_root), Path(panoptic_json)
    expected = {"images": f"{image_dir}/*.jpg", "panoptic PNGs": f"{pan_dir}/*.png", "panoptic JSON": json_path}
    require_file(json_path, "panoptic annotation file", name, expected, prepare_hint)
    require_folder(image_dir, "image", name, expected, prepare_hint)
    require_folder(pan_dir, "panoptic PNG", name, expected, prepare_hint)
    data = read_json(json_path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise ValueError(f"{json_path} lacks the 'images', 'annotations' and 'categories' lists of a COCO panoptic file")

    contiguous = _contiguous_category_ids(data["categories"], json_path)
    images = {int(image["id"]): image for image in data["images"]}
    dataset_dicts = []
    for annotation in sorted(data["annotations"], key=lambda a: int(a["image_id"])):
        image_id = int(annotation["image_id"])
        image = images.get(image_id)
        if image is None:
            raise ValueError(f"{json_path}: an annotation refers to image {image_id}, which the file does not list")
        dataset_dicts.append(
            {
                "file_name": str(image_dir / image["file_name"]),
                "image_id": image_id,
                "height": int(image["height"]),
                "width": int(image["width"]),
                "pan_seg_file_name": str(pan_dir / annotation["file_name"]),
                "segments_info": [_segment(s, contiguous, json_path, image_id) for s in annotation["segments_info"]],
            }
        )
    if not dataset_dicts:
        raise missing_data_error(name, f"{json_path} annotates no image.", expected, prepare_hint)
    image_names = (Path(d["file_name"]).name for d in dataset_dicts)
    check_files_present(image_dir, image_names, "images", name, expected, prepare_hint)
    png_names = (Path(d["pan_seg_file_name"]).name for d in dataset_dicts)
    check_files_present(pan_dir, png_names, "panoptic PNGs", name, expected, prepare_hint)
    logger.info("Loaded %d panoptic images for '%s' from %s", len(dataset_dicts), name, json_path)
    return dataset_dicts
