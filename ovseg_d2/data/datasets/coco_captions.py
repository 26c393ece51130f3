"""COCO Captions 2014 as detectron2 dataset dicts: one dict per caption (Talk2DINO's training data).

Talk2DINO trains on (image, caption) pairs where each image appears once per caption (about 5
times), so the loader yields one dict per caption::

    {"file_name": ".../coco/train2014/COCO_train2014_000000057870.jpg",
     "image_id": 57870, "height": 480, "width": 640,
     "caption": "A restaurant has modern wooden tables and chairs.", "caption_id": 787980}

Dicts are sorted by (image_id, caption_id), so an image's captions are adjacent and the order
never depends on the JSON's. Captions are stripped of surrounding white space (a few COCO
captions end in a space or newline); nothing else is changed. Image sizes come from the JSON.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .coco_files import check_files_present, missing_data_error, read_json, require_file, require_folder

__all__ = ["load_coco_captions"]

logger = logging.getLogger(__name__)


def load_coco_captions(name: str, *, image_root: str, json_file: str, prepare_hint: str) -> list[dict[str, Any]]:
    """Read ``captions_*.json`` and list one dict per caption (format in the module doc).

    Raises:
        FileNotFoundError: the JSON, the image folder or a listed image is missing.
        ValueError: the JSON is malformed or a caption refers to an image it does not list.
    """
    image_dir, json_path = Path(image_root), Path(json_file)
    expected = {"images": f"{image_dir}/*.jpg", "captions": json_path}
    require_file(json_path, "caption file", name, expected, prepare_hint)
    require_folder(image_dir, "image", name, expected, prepare_hint)
    data = read_json(json_path)
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "annotations")):
        raise ValueError(f"{json_path} lacks the 'images' and 'annotations' lists of a COCO captions file")

    images = {int(image["id"]): image for image in data["images"]}
    dataset_dicts = []
    for annotation in sorted(data["annotations"], key=lambda a: (int(a["image_id"]), int(a["id"]))):
        image = images.get(int(annotation["image_id"]))
        if image is None:
            raise ValueError(
                f"{json_path}: caption {annotation['id']} refers to image {annotation['image_id']}, which it does not list"
            )
        dataset_dicts.append(
            {
                "file_name": str(image_dir / image["file_name"]),
                "image_id": int(image["id"]),
                "height": int(image["height"]),
                "width": int(image["width"]),
                "caption": str(annotation["caption"]).strip(),
                "caption_id": int(annotation["id"]),
            }
        )
    if not dataset_dicts:
        raise missing_data_error(name, f"{json_path} holds no caption.", expected, prepare_hint)
    captioned = sorted({d["image_id"] for d in dataset_dicts})
    check_files_present(image_dir, (images[i]["file_name"] for i in captioned), "captioned images", name, expected, prepare_hint)
    logger.info("Loaded %d captions of %d images for '%s'", len(dataset_dicts), len(captioned), name)
    return dataset_dicts
