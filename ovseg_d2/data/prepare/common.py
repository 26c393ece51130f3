"""Shared machinery of the ``datasets/prepare_*.py`` converters.

Every converter turns an official raw release into the registered layout (an image folder
and a folder of single-channel label files) with the same guarantees:

* a progress bar (tqdm) and all cores (a process pool);
* resumable: a job whose outputs all exist is skipped, and each output is written to a
  temporary file in its destination folder then renamed into place, so an interrupted run
  never leaves a half-written file under its final name;
* a corrupt input stops the run with a message naming the file (:class:`CorruptInputError`);
* counts are verified at the end (:func:`verify_count`);
* raw data is never overwritten: outputs may not coincide with an input file or folder
  (:func:`check_outputs_do_not_touch_inputs`).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

__all__ = [
    "ConversionJob",
    "CorruptInputError",
    "PreparationError",
    "run_jobs",
    "verify_count",
    "check_outputs_do_not_touch_inputs",
    "atomic_save",
    "save_label",
    "save_image",
    "read_rgb",
    "read_label",
    "resize_short_side",
    "default_root",
    "base_parser",
    "main_guard",
    "add_splits_argument",
    "resolve_root",
    "run_splits",
    "warn_if_not_official_count",
]

logger = logging.getLogger(__name__)


class PreparationError(RuntimeError):
    """A preparation step cannot go on; the message says why and what to do."""


class CorruptInputError(PreparationError):
    """An input file of the raw release cannot be read or has unexpected content."""


@dataclass(frozen=True)
class ConversionJob:
    """One unit of work: read ``inputs``, write ``outputs`` (all or nothing).

    ``payload`` carries whatever else the converter needs (e.g. a class mapping key); it must
    be picklable for the process pool.
    """

    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]
    payload: object = None

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs)


@dataclass
class RunStats:
    total: int = 0
    skipped: int = 0
    converted: int = 0
    failures: list[str] = field(default_factory=list)


def default_root() -> Path:
    """``$DETECTRON2_DATASETS`` or ``./datasets``."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def _temporary_path(path: Path) -> Path:
    """A unique temporary name in ``path``'s folder that no reader would mistake for output."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``.

    The temporary file sits in the same folder (same file system, so the rename is atomic)
    and is removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_label(label: np.ndarray, path: Path) -> None:
    """Save a single-channel label map atomically: uint8 or uint16 (PNG or TIFF by suffix)."""
    if label.ndim != 2:
        raise ValueError(f"label for {path} must be 2-D, got shape {label.shape}")
    if label.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"label for {path} must be uint8 or uint16, got {label.dtype}")
    file_format = "TIFF" if Path(path).suffix.lower() in (".tif", ".tiff") else "PNG"
    atomic_save(path, lambda tmp: Image.fromarray(label).save(tmp, format=file_format))


def save_image(image: np.ndarray, path: Path, *, quality: int = 95) -> None:
    """Save an RGB uint8 image atomically (JPEG or PNG by suffix)."""
    suffix = Path(path).suffix.lower()
    file_format = "JPEG" if suffix in (".jpg", ".jpeg") else "PNG"
    options = {"quality": quality} if file_format == "JPEG" else {}
    atomic_save(path, lambda tmp: Image.fromarray(image).save(tmp, format=file_format, **options))


def _open_checked(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
        return image
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CorruptInputError(f"cannot read {path}: {err}. Re-download or re-extract this file.") from err


def read_rgb(path: Path) -> np.ndarray:
    """Any image (grayscale, palette, RGBA, 16-bit) -> H x W x 3 uint8 RGB, EXIF-rotated."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(_open_checked(path))
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        array = np.clip(array / max(array.max(), 1) * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_label(path: Path) -> np.ndarray:
    """A label image as a 2-D integer array, without palette conversion or dtype overflow."""
    image = _open_checked(path)
    array = np.asarray(image)
    if array.ndim != 2:
        raise CorruptInputError(f"{path} is not a single-channel label image (shape {array.shape})")
    return array.astype(np.int64)


def resize_short_side(array: np.ndarray, short_side: int, *, nearest: bool) -> np.ndarray:
    """Shrink so that the short side is at most ``short_side`` (never enlarges).

    Images use bilinear, labels nearest-neighbour; uint16 labels keep their dtype.
    """
    h, w = array.shape[:2]
    if min(h, w) <= short_side:
        return array
    scale = short_side / min(h, w)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize(size, resample=resample))


def check_outputs_do_not_touch_inputs(output_dirs: Iterable[Path], input_dirs: Iterable[Path]) -> None:
    """Refuse output folders that are, or lie inside, a raw input folder (raw data is never overwritten)."""
    inputs = [Path(p).resolve() for p in input_dirs]
    for out in output_dirs:
        out = Path(out).resolve()
        for raw in inputs:
            if out == raw or raw in out.parents:
                raise PreparationError(
                    f"output folder {out} is inside the raw input folder {raw}; the raw release is never "
                    "written to. Choose another output location."
                )


def _run_one(args):
    convert, job = args
    try:
        convert(job)
        return None
    except CorruptInputError as err:
        return str(err)
    except FileNotFoundError as err:
        return f"missing input: {err}"
    except Exception as err:  # an unreadable or malformed input: name it
        names = ", ".join(str(p) for p in job.inputs)
        return f"failed on {names}: {type(err).__name__}: {err}"


def run_jobs(
    jobs: Sequence[ConversionJob],
    convert: Callable[[ConversionJob], None],
    *,
    description: str,
    workers: Optional[int] = None,
) -> RunStats:
    """Run ``convert`` on every unfinished job with a progress bar, on all cores.

    ``convert`` must be a module-level function (it is pickled into worker processes) and
    must write its outputs with :func:`save_label` / :func:`save_image` / :func:`atomic_save`.
    Raises :class:`CorruptInputError` naming the first failing input(s) after the pool drains.
    """
    stats = RunStats(total=len(jobs))
    todo = [job for job in jobs if not job.done()]
    stats.skipped = len(jobs) - len(todo)
    if stats.skipped:
        logger.info("%s: %d of %d already converted, skipping them", description, stats.skipped, len(jobs))
    workers = workers or os.cpu_count() or 1
    progress = tqdm(total=len(todo), desc=description, unit="file")
    try:
        if workers == 1 or len(todo) <= 1:
            results = (_run_one((convert, job)) for job in todo)
            for error in results:
                _record(stats, error, progress)
        else:
            # "spawn", not fork: forking a process whose threads (OpenMP, OpenCV, torch) may hold
            # locks can deadlock the children, e.g. when the prepare code runs inside a test
            # session or after the caller used cv2.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                for error in pool.map(_run_one, [(convert, job) for job in todo], chunksize=8):
                    _record(stats, error, progress)
    finally:
        progress.close()
    if stats.failures:
        shown = "\n  ".join(stats.failures[:10])
        more = f"\n  ... and {len(stats.failures) - 10} more" if len(stats.failures) > 10 else ""
        raise CorruptInputError(
            f"{description}: {len(stats.failures)} input(s) could not be converted:\n  {shown}{more}\n"
            "Fix or re-download them and run the script again; finished files are kept and skipped."
        )
    return stats


def _record(stats: RunStats, error: Optional[str], progress) -> None:
    if error is None:
        stats.converted += 1
    else:
        stats.failures.append(error)
    progress.update(1)


def verify_count(directory: Path, suffix: str, expected: int, what: str) -> None:
    """Check that ``directory`` holds exactly ``expected`` files ending in ``suffix``."""
    found = len([p for p in Path(directory).glob(f"*{suffix}") if not p.name.startswith(".")])
    if found != expected:
        raise PreparationError(
            f"{what}: expected {expected} '{suffix}' files in {directory}, found {found}. "
            "Re-run the script to complete it; if the raw release is incomplete, re-download it."
        )


def warn_if_not_official_count(what: str, found: int, expected: Optional[int]) -> None:
    """A partial download still converts, but say so on the console: its results are not
    comparable with published numbers. ``expected`` None: no official count is known."""
    if expected is None or found == expected:
        return
    message = (
        f"{what}: {found} found, the official release has {expected}; "
        "results on it are not comparable with published numbers."
    )
    print(f"warning: {message}", flush=True)


def base_parser(description: str) -> argparse.ArgumentParser:
    """``--root`` (default ``$DETECTRON2_DATASETS`` or ./datasets) and ``--workers``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", type=Path, default=None, help="data root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    return parser


def add_splits_argument(parser: argparse.ArgumentParser, splits: Sequence[str], default: Optional[Sequence[str]] = None) -> None:
    """``--splits`` with the given choices (default: all of them)."""
    default = list(default if default is not None else splits)
    which = "all" if default == list(splits) else ", ".join(default)
    parser.add_argument("--splits", nargs="+", choices=list(splits), default=default, help=f"splits to convert (default: {which})")


def resolve_root(args: argparse.Namespace) -> Path:
    """``--root`` or, when not given, ``$DETECTRON2_DATASETS`` / ./datasets."""
    return args.root if args.root is not None else default_root()


def run_splits(args: argparse.Namespace, prepare_split: Callable[..., int], **kwargs) -> int:
    """Call ``prepare_split(root, split, workers=..., **kwargs)`` for every ``--splits`` entry,
    under :func:`main_guard`; returns the exit status."""
    root = resolve_root(args)

    def run() -> None:
        for split in args.splits:
            prepare_split(root, split, workers=args.workers, **kwargs)

    return main_guard(run)


def main_guard(run: Callable[[], None]) -> int:
    """Run a converter's main body; print a preparation error's message instead of a traceback."""
    try:
        run()
    except PreparationError as err:
        print(f"error: {err}", flush=True)
        return 1
    return 0
