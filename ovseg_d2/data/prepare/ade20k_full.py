"""Prepare ADE20K-847 (A-847) images and labels in CAT-Seg's layout from the ADE20K 2021 release.

Input (raw, never written to), under ``--root`` (default ``$DETECTRON2_DATASETS`` or ./datasets),
as unzipped from the ``ADE20K_2021_17_01`` release::

    ADE20K_2021_17_01/index_ade20k.pkl                             the index: "folder", "filename" lists
    <folder>/<name>.jpg, <folder>/<name>_seg.png                   per image, e.g. folder =
                                                                   ADE20K_2021_17_01/images/ADE/validation/...

``folder`` entries of the index are relative to the data root. An image belongs to the
validation split when its file name is ``ADE_val_*``, to training otherwise (CAT-Seg's rule).

Output, per image, with the image's file name::

    ADE20K_2021_17_01/images_detectron2/<split>/<name>.jpg        RGB JPEG
    ADE20K_2021_17_01/annotations_detectron2/<split>/<name>.tif   16-bit TIFF, 0..846, 65535 ignore

What the conversion does, matching the reference (the ``prepare_ade20k_full.py`` that CAT-Seg's
users run) so that files prepared here equal those prepared for CAT-Seg:

* class value per pixel from the ``_seg.png`` colours: ``R // 10 * 256 + G`` (the release's
  encoding; B holds instance ids and is not used);
* class value -> training id through the 847-entry table of :mod:`.ade20k_full_classes`; every
  other value (the 2,841 rarer classes, and 0 = unlabeled) -> 65535;
* images whose short side exceeds 512 px are shrunk to exactly 512 px on the short side, the
  long side ``round(long / short * 512)``; the image with OpenCV's ``INTER_LINEAR``, the label
  with ``INTER_NEAREST`` (OpenCV, not PIL: PIL's bilinear filter antialiases and its nearest
  neighbour samples other pixels, so its output would differ from the reference files);
* pixels are taken as stored (no EXIF rotation), as the ``_seg.png`` annotations are;
* every image is re-encoded as JPEG with PIL's default quality (75), like the reference; grayscale,
  palette, CMYK and RGBA images become RGB (the alpha channel is dropped).

An unreadable file, a ``_seg.png`` that is not an 8-bit colour image, or an image whose size
differs from its ``_seg.png`` stops the run with the file's name.

Trust: ``index_ade20k.pkl`` is a Python pickle, and unpickling an untrusted file can run
arbitrary code. It is loaded with a restricted unpickler that only builds plain containers,
strings, numbers and numpy arrays; anything else stops the run. ``--trust-index-pickle`` uses
plain ``pickle.load`` instead, for the file you downloaded yourself from the official site.

Usage: ``python datasets/prepare_ade20k_full.py [--root DIR] [--splits validation training]
[--workers N] [--trust-index-pickle]`` (default: validation only, the A-847 benchmark; CAT-Seg
prepares only that split too). Finished files are skipped on a re-run; every file is written
atomically.
"""
from __future__ import annotations

import functools
import pickle
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..datasets.ade20k import (
    ADE20K_FULL_DIRNAME,
    ADE20K_FULL_DOWNLOAD_HINT,
    ADE20K_FULL_IGNORE_LABEL,
    ADE20K_FULL_IMAGE_EXT,
    ADE20K_FULL_LABEL_EXT,
    ADE20K_FULL_SPLITS,
    ade20k_full_paths,
)
from .ade20k_full_classes import ADE20K_847_CLASSES
from .common import (
    _open_checked,
    add_splits_argument,
    base_parser,
    check_outputs_do_not_touch_inputs,
    ConversionJob,
    CorruptInputError,
    main_guard,
    PreparationError,
    resolve_root,
    run_jobs,
    save_image,
    save_label,
    verify_count,
    warn_if_not_official_count,
)

__all__ = [
    "main",
    "prepare_split",
    "load_index",
    "split_of",
    "decode_class_values",
    "class_value_to_train_id_lut",
    "reference_resized_shape",
    "INDEX_FILENAME",
    "MAX_SHORT_SIDE",
    "REFERENCE_JPEG_QUALITY",
]


#: The release's index, in its top folder.
INDEX_FILENAME = "index_ade20k.pkl"
#: Index keys used: parallel lists of folders (relative to the data root) and file names.
INDEX_FOLDER_KEY, INDEX_FILENAME_KEY = "folder", "filename"
RAW_IMAGE_SUFFIX = ".jpg"
#: The class/instance map of ``<name>.jpg`` is ``<name>_seg.png`` in the same folder.
SEG_SUFFIX = "_seg.png"
#: ``ADE_val_00000001.jpg``: the second ``_``-separated field names the split.
_FILENAME_SPLIT_FIELD = 1
_VALIDATION_TAG = "val"
#: Class value = R // RED_DIVISOR * CLASS_VALUE_BASE + G.
RED_DIVISOR = 10
CLASS_VALUE_BASE = 256
#: Largest class value the encoding can produce (R = 255, G = 255).
MAX_CLASS_VALUE = (255 // RED_DIVISOR) * CLASS_VALUE_BASE + 255
#: Images with a longer short side are shrunk to this short side.
MAX_SHORT_SIDE = 512
#: PIL's default JPEG quality, which the reference preparation saves with.
REFERENCE_JPEG_QUALITY = 75
#: Images per split in the official release (validation only: the benchmark).
OFFICIAL_COUNTS = {"validation": 2_000}
#: Listing more missing files than this in an error helps nobody.
_MAX_LISTED = 5

#: The only globals the restricted unpickler resolves: what a pickle of dicts, lists, strings,
#: numbers and numpy arrays / scalars refers to (numpy 1.x and 2.x module names, all protocols).
_SAFE_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
)


# ---------------------------------------------------------------- the index
class UnsafePickleError(PreparationError):
    """The index pickle refers to something other than plain data; it was not unpickled."""


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles containers, strings, numbers and numpy arrays; refuses every other global."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_PICKLE_GLOBALS:
            raise UnsafePickleError(
                f"{self._path} refers to {module}.{name}, which is not plain data, so it was not unpickled "
                "(unpickling can run code). If this is the index_ade20k.pkl you downloaded yourself from the "
                "official ADE20K site, re-run with --trust-index-pickle; otherwise re-download it."
            )
        with warnings.catch_warnings():  # numpy 2 warns when numpy-1 pickles name numpy.core
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def load_index(path: Path, *, trust_pickle: bool = False) -> tuple[list[str], list[str]]:
    """The release's (folders, file names), in index order.

    Args:
        path: ``index_ade20k.pkl``.
        trust_pickle: use plain ``pickle.load`` (runs whatever the file says) instead of the
            restricted unpickler.

    Raises:
        PreparationError: the file is missing, unreadable, not plain data (unless trusted), or
            lacks the ``folder`` / ``filename`` lists.
    """
    path = Path(path)
    if not path.is_file():
        raise PreparationError(
            f"the ADE20K index {path} does not exist; {ADE20K_FULL_DOWNLOAD_HINT} (or pass --root)."
        )
    try:
        with open(path, "rb") as handle:
            index = pickle.load(handle) if trust_pickle else _DataOnlyUnpickler(handle, path).load()
    except PreparationError:
        raise
    except Exception as err:
        raise CorruptInputError(f"cannot read {path}: {type(err).__name__}: {err}. Re-download the ADE20K release.") from err
    if not isinstance(index, dict) or INDEX_FOLDER_KEY not in index or INDEX_FILENAME_KEY not in index:
        found = sorted(index)[:10] if isinstance(index, dict) else type(index).__name__
        raise CorruptInputError(
            f"{path} is not the ADE20K index: expected a dict with '{INDEX_FOLDER_KEY}' and "
            f"'{INDEX_FILENAME_KEY}' lists, found {found}."
        )
    folders, filenames = [str(f) for f in index[INDEX_FOLDER_KEY]], [str(f) for f in index[INDEX_FILENAME_KEY]]
    if len(folders) != len(filenames):
        raise CorruptInputError(f"{path}: {len(folders)} folders but {len(filenames)} file names.")
    return folders, filenames


def split_of(filename: str) -> str:
    """``"validation"`` for ``ADE_val_*`` files, ``"training"`` for all others (CAT-Seg's rule)."""
    fields = filename.split("_")
    is_val = len(fields) > _FILENAME_SPLIT_FIELD and fields[_FILENAME_SPLIT_FIELD] == _VALIDATION_TAG
    return "validation" if is_val else "training"


# ---------------------------------------------------------------- per-image conversion
def decode_class_values(seg: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, >=2) uint8 ``_seg.png`` pixels -> (H, W) int32 class values ``R // 10 * 256 + G``.

    Raises:
        CorruptInputError: not a colour image; names ``path``.
    """
    if seg.ndim != 3 or seg.shape[2] < 2 or seg.dtype != np.uint8:
        raise CorruptInputError(
            f"{path} is not an ADE20K class/instance map (8-bit RGB expected, got shape {seg.shape}, {seg.dtype}). "
            "Re-download or re-extract this file."
        )
    red, green = seg[..., 0].astype(np.int32), seg[..., 1].astype(np.int32)
    return red // RED_DIVISOR * CLASS_VALUE_BASE + green


@functools.lru_cache(maxsize=1)
def class_value_to_train_id_lut() -> np.ndarray:
    """(MAX_CLASS_VALUE + 1,) uint16: class value -> A-847 training id, 65535 for all others."""
    lut = np.full(MAX_CLASS_VALUE + 1, ADE20K_FULL_IGNORE_LABEL, dtype=np.uint16)
    for train_id, (full_id, _name) in enumerate(ADE20K_847_CLASSES):
        lut[full_id] = train_id
    return lut


def reference_resized_shape(height: int, width: int, max_short_side: int = MAX_SHORT_SIDE) -> Optional[tuple[int, int]]:
    """(new height, new width) as the reference computes it, or None if the short side fits.

    The short side becomes exactly ``max_short_side``; the long side is
    ``round(long / short * max_short_side)`` (Python's round: halves to even).
    """
    if width >= height > max_short_side:
        return max_short_side, round(width / float(height) * max_short_side)
    if height >= width > max_short_side:
        return round(height / float(width) * max_short_side), max_short_side
    return None


def _read_rgb_as_stored(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any image mode, pixels in stored order (no EXIF rotation)."""
    with _open_checked(path) as image:
        return np.asarray(image.convert("RGB"))


def _read_seg(path: Path) -> np.ndarray:
    with _open_checked(path) as image:
        return np.asarray(image)


def _convert_job(job: ConversionJob) -> None:
    """``run_jobs`` worker: (image, _seg.png) -> (JPEG, 16-bit TIFF label)."""
    import cv2  # imported here: only this converter needs OpenCV

    cv2.setNumThreads(1)  # the process pool already uses every core
    (image_path, seg_path), (image_out, label_out) = job.inputs, job.outputs
    image = _read_rgb_as_stored(image_path)
    seg = _read_seg(seg_path)
    if seg.shape[:2] != image.shape[:2]:
        raise CorruptInputError(
            f"{image_path} is {image.shape[1]}x{image.shape[0]} px but its class map {seg_path} is "
            f"{seg.shape[1]}x{seg.shape[0]} px. Re-download or re-extract these files."
        )
    label = class_value_to_train_id_lut()[decode_class_values(seg, seg_path)]
    new_shape = reference_resized_shape(*image.shape[:2])
    if new_shape is not None:
        size = (new_shape[1], new_shape[0])  # OpenCV takes (width, height)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    save_label(np.ascontiguousarray(label, dtype=np.uint16), label_out)
    save_image(image, image_out, quality=REFERENCE_JPEG_QUALITY)


# ---------------------------------------------------------------- one split
def _jobs_for_split(root: Path, folders: list[str], filenames: list[str], split: str, index_path: Path) -> list[ConversionJob]:
    """One job per index entry of ``split``; raises if an entry is not a .jpg or a name repeats."""
    image_dir, label_dir = ade20k_full_paths(root, split)
    jobs, seen = [], {}
    for position, (folder, filename) in enumerate(zip(folders, filenames)):
        if split_of(filename) != split:
            continue
        if not filename.endswith(RAW_IMAGE_SUFFIX) or "/" in filename:
            raise CorruptInputError(
                f"{index_path}: entry {position} ({folder}/{filename}) is not a '{RAW_IMAGE_SUFFIX}' file name; "
                "is this the ADE20K_2021_17_01 index?"
            )
        if filename in seen:
            raise CorruptInputError(
                f"{index_path}: file name {filename} appears twice ({seen[filename]} and {folder}); "
                "outputs are named after it, so it must be unique."
            )
        seen[filename] = folder
        stem = filename[: -len(RAW_IMAGE_SUFFIX)]
        source = Path(root) / folder / filename
        jobs.append(
            ConversionJob(
                inputs=(source, source.with_name(stem + SEG_SUFFIX)),
                outputs=(image_dir / filename, label_dir / (stem + ADE20K_FULL_LABEL_EXT)),
            )
        )
    return jobs


def _check_inputs_exist(jobs: list[ConversionJob], root: Path, split: str) -> None:
    missing = [str(p) for job in jobs for p in job.inputs if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise PreparationError(
            f"ADE20K-847 {split}: {len(missing)} files listed in the index are missing: {shown}{more}. "
            f"The index's folders are read relative to the data root {root}; unzip the whole "
            f"ADE20K_2021_17_01 release there."
        )


def prepare_split(
    root: Path, split: str, *, index: tuple[list[str], list[str]], index_path: Path, workers: Optional[int] = None
) -> int:
    """Convert the images of ``split`` listed in ``index`` (from :func:`load_index`); returns their number."""
    folders, filenames = index
    jobs = _jobs_for_split(root, folders, filenames, split, index_path)
    if not jobs:
        raise PreparationError(f"{index_path} lists no {split} image (file names ADE_val_* are validation, others training).")
    _check_inputs_exist(jobs, root, split)
    warn_if_not_official_count(f"ADE20K-847 {split} images in the index", len(jobs), OFFICIAL_COUNTS.get(split))
    image_dir, label_dir = ade20k_full_paths(root, split)
    raw_folders = {p.parent for job in jobs for p in job.inputs}
    check_outputs_do_not_touch_inputs([image_dir, label_dir], raw_folders)

    stats = run_jobs(jobs, _convert_job, description=f"ADE20K-847 {split}", workers=workers)
    verify_count(image_dir, ADE20K_FULL_IMAGE_EXT, len(jobs), f"ADE20K-847 {split} images")
    verify_count(label_dir, ADE20K_FULL_LABEL_EXT, len(jobs), f"ADE20K-847 {split} labels")
    print(
        f"ADE20K-847 {split}: {stats.converted} converted, {stats.skipped} already done; "
        f"images in {image_dir}, labels in {label_dir}",
        flush=True,
    )
    return len(jobs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``datasets/prepare_ade20k_full.py``); returns the exit status."""
    parser = base_parser(__doc__.split("\n\n")[0])
    add_splits_argument(parser, ADE20K_FULL_SPLITS, default=["validation"])
    parser.add_argument(
        "--trust-index-pickle",
        action="store_true",
        help="load index_ade20k.pkl with plain pickle (only for a file you downloaded yourself from the official site)",
    )
    args = parser.parse_args(argv)
    root = resolve_root(args)

    def run() -> None:
        index_path = Path(root) / ADE20K_FULL_DIRNAME / INDEX_FILENAME
        index = load_index(index_path, trust_pickle=args.trust_index_pickle)
        for split in args.splits:
            prepare_split(root, split, index=index, index_path=index_path, workers=args.workers)

    return main_guard(run)
