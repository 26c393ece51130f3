"""Register a semantic-segmentation data set (image folder + label folder) with detectron2.

Every registrar in ``ovseg_d2.data.datasets`` goes through :func:`register_sem_seg_dataset`, so
all data sets share the same behaviour:

* registering is free: nothing on disk is touched until ``DatasetCatalog.get(name)`` runs the
  loader, so registering benchmarks the user has not downloaded costs nothing and never fails;
* a missing or incomplete data set fails at first use with a :class:`FileNotFoundError` that
  names the expected folders, ``$DETECTRON2_DATASETS`` and how to prepare the data, instead of a
  stack trace from deep inside a loader;
* image sizes are read from file headers (no pixel decoding), so listing is cheap;
* the set is either every image of the image folder (``list_by="images"``, the default: each
  image needs a label) or every label file of the label folder (``list_by="labels"``: each label
  needs an image). The second serves benchmarks whose image folder is a whole release shared by
  several splits, e.g. ``VOCdevkit/VOC2012/JPEGImages`` (17k images, 1,449 labelled for val).

A dataset dict produced by the loader looks like::

    {"file_name": ".../images/val/000000.png",
     "sem_seg_file_name": ".../annotations_detectron2/val/000000.png",
     "height": 128, "width": 128, "image_id": "000000"}
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

from PIL import Image

__all__ = ["datasets_root", "register_sem_seg_dataset", "register_lazy_dataset", "load_sem_seg_dicts", "DATASETS_ROOT_ENV"]

logger = logging.getLogger(__name__)

#: Environment variable naming the folder that holds every data set (detectron2's convention).
DATASETS_ROOT_ENV = "DETECTRON2_DATASETS"
#: Used when ``$DETECTRON2_DATASETS`` is unset, relative to the current working directory.
DEFAULT_DATASETS_ROOT = "datasets"
#: EXIF tag holding the orientation; values 5-8 mean the stored image is transposed.
_EXIF_ORIENTATION_TAG = 0x0112
_EXIF_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
#: How many missing label paths an error message lists before summarising the rest.
_MAX_LISTED_MISSING = 5
#: ``list_by`` values: which folder decides the set (the other must hold a partner per file).
LIST_BY_IMAGES = "images"
LIST_BY_LABELS = "labels"
_LIST_BY_CHOICES = (LIST_BY_IMAGES, LIST_BY_LABELS)


def datasets_root() -> Path:
    """Folder holding all data sets: ``$DETECTRON2_DATASETS``, else ``./datasets``.

    Read at every call (not at import), so setting the variable after ``import ovseg_d2`` works.
    """
    return Path(os.environ.get(DATASETS_ROOT_ENV) or DEFAULT_DATASETS_ROOT)


def _missing_data_error(
    name: str,
    problem: str,
    image_root: str,
    gt_root: str,
    image_ext: str,
    gt_ext: str,
    prepare_hint: str,
    list_by: str = LIST_BY_IMAGES,
) -> FileNotFoundError:
    """The one error every loader raises when data is absent: what, where, and how to fix it."""
    env_value = os.environ.get(DATASETS_ROOT_ENV)
    env_text = f"{DATASETS_ROOT_ENV}={env_value}" if env_value else f"{DATASETS_ROOT_ENV} is unset, so ./{DEFAULT_DATASETS_ROOT} is used"
    pairing = (
        "one per image, same file stem"
        if list_by == LIST_BY_IMAGES
        else "they define the set; each needs an image with the same file stem"
    )
    return FileNotFoundError(
        f"Data set '{name}' is not ready: {problem}\n"
        f"  expected images: {image_root}/*{image_ext}\n"
        f"  expected labels: {gt_root}/*{gt_ext} ({pairing})\n"
        f"  data sets are looked up under $DETECTRON2_DATASETS ({env_text})\n"
        f"  to prepare it: {prepare_hint}"
    )


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as ``detection_utils.read_image`` will return it.

    Only the header is parsed (PIL opens lazily); EXIF orientations that transpose the image
    swap height and width, matching the EXIF-aware reader used by the mapper.
    """
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    if orientation in _EXIF_TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return height, width


def _list_files(folder: Path, ext: str) -> list[Path]:
    """Visible files in ``folder`` (not recursive) whose name ends with ``ext``, sorted by stem."""
    return sorted(
        (p for p in folder.iterdir() if p.name.endswith(ext) and not p.name.startswith(".") and p.is_file()),
        key=lambda p: p.name[: -len(ext)],
    )


def load_sem_seg_dicts(
    name: str,
    *,
    image_root: str,
    gt_root: str,
    image_ext: str,
    gt_ext: str,
    prepare_hint: str,
    list_by: str = LIST_BY_IMAGES,
) -> list[dict[str, Any]]:
    """List a data set's images and their label files as detectron2 dataset dicts.

    Images are matched to labels by file stem (``<image_root>/x<image_ext>`` with
    ``<gt_root>/x<gt_ext>``); the list is sorted by stem. ``list_by="images"`` takes every image
    of ``image_root``; ``list_by="labels"`` takes every label file of ``gt_root`` (for image
    folders shared by several splits).

    Raises:
        FileNotFoundError: a folder is missing, the listing folder holds no file, or a listed
            file has no partner (an image without label, or a label without image).
    """
    if list_by not in _LIST_BY_CHOICES:
        raise ValueError(f"list_by must be one of {_LIST_BY_CHOICES}, got {list_by!r}")

    def fail(problem: str) -> FileNotFoundError:
        return _missing_data_error(name, problem, image_root, gt_root, image_ext, gt_ext, prepare_hint, list_by)

    image_dir, gt_dir = Path(image_root), Path(gt_root)
    for folder, what in ((image_dir, "image"), (gt_dir, "label")):
        if not folder.is_dir():
            raise fail(f"the {what} folder {folder} does not exist.")

    if list_by == LIST_BY_IMAGES:
        listed_dir, listed_ext, partner_dir, partner_ext = image_dir, image_ext, gt_dir, gt_ext
        listed_what, partner_what = "images", "label file"
    else:
        listed_dir, listed_ext, partner_dir, partner_ext = gt_dir, gt_ext, image_dir, image_ext
        listed_what, partner_what = "label files", "image"
    listed = _list_files(listed_dir, listed_ext)
    if not listed:
        raise fail(f"no '*{listed_ext}' file in {listed_dir}.")
    stems = [path.name[: -len(listed_ext)] for path in listed]
    partners = [partner_dir / (stem + partner_ext) for stem in stems]
    missing = [str(p) for p in partners if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED_MISSING])
        more = f" and {len(missing) - _MAX_LISTED_MISSING} more" if len(missing) > _MAX_LISTED_MISSING else ""
        raise fail(f"{len(missing)} of {len(listed)} {listed_what} have no {partner_what}: {shown}{more}.")
    if list_by == LIST_BY_IMAGES:
        images, label_paths = listed, partners
    else:
        images, label_paths = partners, listed

    dataset_dicts = []
    for image_path, label_path in zip(images, label_paths):
        height, width = _image_size(image_path)
        dataset_dicts.append(
            {
                "file_name": str(image_path),
                "sem_seg_file_name": str(label_path),
                "height": height,
                "width": width,
                "image_id": image_path.name[: -len(image_ext)],
            }
        )
    logger.info("Loaded %d images with labels for '%s' from %s", len(dataset_dicts), name, image_dir)
    return dataset_dicts


def _make_loader(name: str, ensure_ready: Optional[Callable[[], None]], **list_kwargs) -> Callable[[], list]:
    """The zero-argument function detectron2's ``DatasetCatalog`` calls at first use."""

    def load() -> list[dict[str, Any]]:
        if ensure_ready is not None:
            ensure_ready()
        return load_sem_seg_dicts(name, **list_kwargs)

    return load


def register_sem_seg_dataset(
    name: str,
    *,
    image_root: str,
    gt_root: str,
    class_names: list[str],
    ignore_label: int,
    image_ext: str,
    gt_ext: str,
    evaluator_type: str = "ovseg_sem_seg",
    prepare_hint: str,
    background_by_threshold: bool = False,
    ensure_ready: Optional[Callable[[], None]] = None,
    list_by: str = LIST_BY_IMAGES,
    **extra_metadata: Any,
) -> None:
    """Register ``name`` in detectron2's ``DatasetCatalog`` and fill its ``MetadataCatalog`` entry.

    Touches no file: the folders are only read when ``DatasetCatalog.get(name)`` runs the loader,
    which first calls ``ensure_ready()`` (if given; e.g. to generate a synthetic set) and then
    lists the files with :func:`load_sem_seg_dicts`.

    Args:
        name: data set name, e.g. ``"ade20k_150_val_sem_seg"``.
        image_root, gt_root: folders of images and of single-channel label files.
        class_names: names in label-value order; stored as ``stuff_classes``.
        ignore_label: label value that is not evaluated or trained on (255, or 65535 for 16-bit).
        image_ext, gt_ext: file-name endings, e.g. ``".jpg"`` / ``".png"`` / ``".tif"``.
        evaluator_type: stored as metadata; picks the evaluator.
        prepare_hint: how to obtain the data (a prepare-script command), shown in errors.
        background_by_threshold: background is predicted by a score threshold, not by a text
            prompt (Talk2DINO's V21/C60/Object protocol).
        ensure_ready: called once per load before listing files.
        list_by: ``"images"`` (every image of ``image_root`` has a label) or ``"labels"`` (every
            label file of ``gt_root`` has an image; ``image_root`` may hold more images).
        extra_metadata: further ``MetadataCatalog`` attributes.

    Registering a name again with the same metadata is a no-op (safe on re-import / repeated
    ``register_all()``); with different metadata (e.g. ``$DETECTRON2_DATASETS`` changed) the old
    entry is replaced and a warning is logged.
    """

    if list_by not in _LIST_BY_CHOICES:
        raise ValueError(f"list_by must be one of {_LIST_BY_CHOICES}, got {list_by!r}")
    image_root, gt_root = str(image_root), str(gt_root)
    metadata = dict(
        stuff_classes=list(class_names),
        ignore_label=int(ignore_label),
        evaluator_type=evaluator_type,
        image_root=image_root,
        sem_seg_root=gt_root,
        image_ext=image_ext,
        gt_ext=gt_ext,
        background_by_threshold=bool(background_by_threshold),
        prepare_hint=prepare_hint,
        **extra_metadata,
    )
    loader = _make_loader(
        name,
        ensure_ready,
        image_root=image_root,
        gt_root=gt_root,
        image_ext=image_ext,
        gt_ext=gt_ext,
        prepare_hint=prepare_hint,
        list_by=list_by,
    )
    register_lazy_dataset(name, loader, metadata)


def register_lazy_dataset(name: str, load: Callable[[], list], metadata: dict[str, Any]) -> None:
    """Register ``load`` (called only at first use) under ``name`` with ``metadata``.

    Registering a name again with the same metadata is a no-op (safe on re-import / repeated
    ``register_all()``); with different metadata (e.g. ``$DETECTRON2_DATASETS`` changed) the old
    entry is replaced and a warning is logged. Every registrar goes through here.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        existing = MetadataCatalog.get(name).as_dict()
        differing = sorted(k for k, v in metadata.items() if existing.get(k, object()) != v)
        if not differing:
            return
        logger.warning("Re-registering data set '%s' with changed metadata: %s", name, ", ".join(differing))
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(**metadata)
