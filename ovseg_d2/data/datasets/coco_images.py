"""A plain COCO image list (no labels) as detectron2 dataset dicts: CLIPSelf's training images.

CLIPSelf distils on COCO train2017 images alone; the image list comes from the ``images`` array
of ``instances_train2017.json``, which is read without parsing the 448 MB of instance masks
(see :func:`.coco_files.read_top_level_list`)::

    {"file_name": ".../coco/train2017/000000000009.jpg", "image_id": 9, "height": 480, "width": 640}

Dicts are sorted by image_id. Image sizes come from the JSON.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .coco_files import check_files_present, missing_data_error, read_top_level_list, require_file, require_folder

__all__ = ["load_coco_image_list"]

logger = logging.getLogger(__name__)

_IMAGE_FIELDS = ("id", "file_name", "height", "width")


def load_coco_image_list(name: str, *, image_root: str, json_file: str, prepare_hint: str) -> list[dict[str, Any]]:
    """List the images of a COCO annotation file as dicts (format in the module doc).

    Raises:
        FileNotFoundError: the JSON, the image folder or a listed image is missing.
        ValueError: the JSON is malformed.
    """
    image_dir, json_path = Path(image_root), Path(json_file)
    expected = {"images": f"{image_dir}/*.jpg", "image list": json_path}
    require_file(json_path, "annotation file", name, expected, prepare_hint)
    require_folder(image_dir, "image", name, expected, prepare_hint)
    images = read_top_level_list(json_path, "images", required_fields=_IMAGE_FIELDS)
    if not images:
        raise missing_data_error(name, f"{json_path} lists no image.", expected, prepare_hint)
    dataset_dicts = [
        {
            "file_name": str(image_dir / image["file_name"]),
            "image_id": int(image["id"]),
            "height": int(image["height"]),
            "width": int(image["width"]),
        }
        for image in sorted(images, key=lambda image: int(image["id"]))
    ]
    check_files_present(image_dir, (image["file_name"] for image in images), "listed images", name, expected, prepare_hint)
    logger.info("Listed %d images for '%s' from %s", len(dataset_dicts), name, json_path)
    return dataset_dicts
