"""``ovseg_shapes``: a small, deterministic, procedurally generated semantic-segmentation set.

It exists so that the quickstart and the tests can train and evaluate end to end with no
download. Eight classes (names in ``ovseg_d2/data/class_names/ovseg_shapes.json``), each with
its own colour/texture combination, so that a small ViT with 8x8 patches can tell them apart
from local appearance alone; the shapes are an extra, global cue:

====  ==================  =====================================================
id    name                appearance
====  ==================  =====================================================
0     sand background     beige with grainy per-pixel noise
1     water background    blue with light, wavy horizontal stripes
2     red circle          flat red disk
3     green triangle      flat green triangle
4     striped square      black/white diagonal stripes
5     checkered circle    orange/near-black checkerboard disk
6     dotted square       teal with a grid of yellow dots
7     purple star         flat purple five-pointed star
====  ==================  =====================================================

Each image has one background (0 or 1) and 1 to 4 shapes of random size, position and
rotation; shapes may overlap (later ones are drawn on top). Labels hold the class index per
pixel, and the ignore value 255 on a 2-px band along every boundary between two labels (one
pixel on each side), like VOC's object boundaries.

Every sample ``(split, index)`` is rendered from its own
``numpy.random.default_rng(seed_for(split, index))``, so output does not depend on the order of
generation and is bit-reproducible.

On-disk layout under ``$DETECTRON2_DATASETS/ovseg_shapes/``::

    images/{train,val}/000000.png                 128x128 RGB
    annotations_detectron2/{train,val}/000000.png 128x128 uint8, class index / 255
    classes.json                                  the class-name list
    generation_{train,val}.json                   marker: generator fingerprint, complete or not

The set writes itself on first use (the registered loader calls :func:`generate_shapes_dataset`)
or with ``python -m ovseg_d2.data.datasets.builtin_shapes [--root DIR]``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ..class_names import load_class_names
from .register_sem_seg import datasets_root, register_sem_seg_dataset

__all__ = [
    "CLASS_NAMES_FILE",
    "DATASET_DIRNAME",
    "SPLIT_SIZES",
    "BASE_SEED",
    "IMAGE_SIZE",
    "IGNORE_LABEL",
    "seed_for",
    "render_shapes_sample",
    "present_classes",
    "shape_split_paths",
    "generate_shapes_dataset",
    "register_builtin_shapes",
    "dataset_name",
    "region_view_name",
    "caption_view_name",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- set definition
#: Name of the package class-name file (``ovseg_d2/data/class_names/<name>.json``).
CLASS_NAMES_FILE = "ovseg_shapes"
#: Folder of the set under ``datasets_root()``.
DATASET_DIRNAME = "ovseg_shapes"
#: Number of images per split.
SPLIT_SIZES = {"train": 240, "val": 48}
#: Seed shared by every sample; each sample mixes in its split and index (see :func:`seed_for`).
BASE_SEED = 20_240_817
#: Stable per-split seed component (never ``hash(str)``, which is randomised per process).
_SPLIT_SEED_CODES = {"train": 0, "val": 1}
#: Images are square, this many pixels a side.
IMAGE_SIZE = 128
#: Label value of the boundary band (not trained on, not evaluated).
IGNORE_LABEL = 255
#: Bump when the rendering changes: a set on disk with another fingerprint is regenerated.
GENERATOR_VERSION = 1

IMAGE_EXT = ".png"
LABEL_EXT = ".png"
IMAGES_DIRNAME = "images"
LABELS_DIRNAME = "annotations_detectron2"
CLASSES_JSON = "classes.json"
PREPARE_HINT = "generated automatically on first use (ovseg_d2/data/datasets/builtin_shapes.py)"
_FILE_STEM_DIGITS = 6
_OWN_OUTPUT_NAME = re.compile(r"^\d{%d}\.png$" % _FILE_STEM_DIGITS)
_TEMP_SUFFIX = ".tmp"
_LOCK_FILENAME = ".generate.lock"

# ---------------------------------------------------------------- class ids and rendering constants
SAND, WATER, RED_CIRCLE, GREEN_TRIANGLE, STRIPED_SQUARE, CHECKERED_CIRCLE, DOTTED_SQUARE, PURPLE_STAR = range(8)
NUM_CLASSES = 8
BACKGROUND_CLASSES = (SAND, WATER)
SHAPE_CLASSES = (RED_CIRCLE, GREEN_TRIANGLE, STRIPED_SQUARE, CHECKERED_CIRCLE, DOTTED_SQUARE, PURPLE_STAR)

MIN_SHAPES, MAX_SHAPES = 1, 4
#: Shape size ("radius": circle radius, half-diagonal scale of the polygons), in pixels.
MIN_SHAPE_RADIUS, MAX_SHAPE_RADIUS = 12.0, 32.0
#: Shape centres lie in this fraction of the image, so shapes may run off the edge a little.
CENTRE_MARGIN_FRACTION = 0.1
#: Polygon size relative to the drawn radius, chosen so the shapes have similar areas.
SQUARE_HALF_DIAGONAL_SCALE = 1.2
TRIANGLE_CIRCUMRADIUS_SCALE = 1.3
STAR_OUTER_SCALE = 1.35
STAR_INNER_RATIO = 0.45
STAR_POINTS = 5
#: Std of the Gaussian sensor noise added to every pixel (0-255 scale).
SENSOR_NOISE_STD = 4.0

SAND_RGB = (194, 178, 128)
SAND_GRAIN_AMPLITUDE = 28.0
WATER_RGB = (35, 95, 190)
WATER_CREST_BRIGHTENING = (45.0, 50.0, 40.0)
WATER_STRIPE_PERIOD = 8.0
WATER_WAVE_AMPLITUDE = 3.0
WATER_WAVE_LENGTH = 32.0
RED_RGB = (215, 35, 35)
GREEN_RGB = (45, 170, 70)
STRIPE_LIGHT_RGB, STRIPE_DARK_RGB = (240, 240, 240), (25, 25, 25)
STRIPE_PERIOD = 6
CHECKER_LIGHT_RGB, CHECKER_DARK_RGB = (245, 140, 20), (40, 25, 10)
CHECKER_CELL = 4
DOT_BASE_RGB, DOT_RGB = (0, 128, 128), (250, 230, 60)
DOT_SPACING = 6
DOT_RADIUS = 1.6
PURPLE_RGB = (135, 45, 185)


def seed_for(split: str, index: int) -> list[int]:
    """Seed of sample ``index`` of ``split``, for ``numpy.random.default_rng``.

    A list of integers (mixed by numpy's ``SeedSequence``), so every sample has an
    independent stream whatever order samples are generated in.
    """
    if split not in _SPLIT_SEED_CODES:
        raise ValueError(f"Unknown split {split!r}; known: {sorted(_SPLIT_SEED_CODES)}")
    return [BASE_SEED, _SPLIT_SEED_CODES[split], int(index)]


# ---------------------------------------------------------------- textures: (rng, ys, xs) -> (H, W, 3) float
# ys, xs: (H, W) float pixel-centre coordinates. Each texture draws its own random phase from rng.
Texture = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


def _flat(rgb: tuple[int, int, int]) -> Texture:
    def texture(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(rgb, dtype=np.float64), ys.shape + (3,)).copy()

    return texture


def _two_tone(mask: np.ndarray, light: tuple[int, int, int], dark: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 3): ``light`` where ``mask`` else ``dark``."""
    return np.where(mask[..., None], np.asarray(light, np.float64), np.asarray(dark, np.float64))


def _sand(rng, ys, xs):
    grain = rng.uniform(-SAND_GRAIN_AMPLITUDE, SAND_GRAIN_AMPLITUDE, size=ys.shape)
    return np.asarray(SAND_RGB, np.float64) + grain[..., None]


def _water(rng, ys, xs):
    stripe_phase, wave_phase = rng.uniform(0.0, 2 * np.pi, size=2)
    warped_y = ys + WATER_WAVE_AMPLITUDE * np.sin(2 * np.pi * xs / WATER_WAVE_LENGTH + wave_phase)
    crest = 0.5 * (1.0 + np.sin(2 * np.pi * warped_y / WATER_STRIPE_PERIOD + stripe_phase))  # in [0, 1]
    return np.asarray(WATER_RGB, np.float64) + crest[..., None] * np.asarray(WATER_CREST_BRIGHTENING)


def _stripes(rng, ys, xs):
    offset = rng.integers(0, STRIPE_PERIOD)
    diagonal = (np.floor(xs) + np.floor(ys) + offset) % STRIPE_PERIOD
    return _two_tone(diagonal < STRIPE_PERIOD / 2, STRIPE_LIGHT_RGB, STRIPE_DARK_RGB)


def _checker(rng, ys, xs):
    oy, ox = rng.integers(0, 2 * CHECKER_CELL, size=2)
    cells = (np.floor((ys + oy) / CHECKER_CELL) + np.floor((xs + ox) / CHECKER_CELL)) % 2
    return _two_tone(cells == 0, CHECKER_LIGHT_RGB, CHECKER_DARK_RGB)


def _dots(rng, ys, xs):
    oy, ox = rng.uniform(0.0, DOT_SPACING, size=2)
    dy = (ys + oy) % DOT_SPACING - DOT_SPACING / 2
    dx = (xs + ox) % DOT_SPACING - DOT_SPACING / 2
    return _two_tone(dy**2 + dx**2 <= DOT_RADIUS**2, DOT_RGB, DOT_BASE_RGB)


_TEXTURES: dict[int, Texture] = {
    SAND: _sand,
    WATER: _water,
    RED_CIRCLE: _flat(RED_RGB),
    GREEN_TRIANGLE: _flat(GREEN_RGB),
    STRIPED_SQUARE: _stripes,
    CHECKERED_CIRCLE: _checker,
    DOTTED_SQUARE: _dots,
    PURPLE_STAR: _flat(PURPLE_RGB),
}


# ---------------------------------------------------------------- shape masks: -> (H, W) bool
def _disk(ys, xs, cy, cx, radius, angle):
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2


def _polygon_mask(ys: np.ndarray, xs: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of every pixel centre; ``vertices`` (K, 2) as (y, x)."""
    inside = np.zeros(ys.shape, dtype=bool)
    for (y1, x1), (y2, x2) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if y1 == y2:
            continue  # a horizontal edge never crosses a horizontal ray
        straddles = (y1 > ys) != (y2 > ys)
        x_cross = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)
        inside ^= straddles & (xs < x_cross)
    return inside


def _regular_vertices(cy, cx, radii, angle) -> np.ndarray:
    """(K, 2) vertices (y, x) at the given radii, evenly spaced in angle starting at ``angle``."""
    radii = np.asarray(radii, dtype=np.float64)
    thetas = angle + 2 * np.pi * np.arange(len(radii)) / len(radii)
    return np.stack([cy + radii * np.sin(thetas), cx + radii * np.cos(thetas)], axis=1)


def _square(ys, xs, cy, cx, radius, angle):
    return _polygon_mask(ys, xs, _regular_vertices(cy, cx, [SQUARE_HALF_DIAGONAL_SCALE * radius] * 4, angle))


def _triangle(ys, xs, cy, cx, radius, angle):
    return _polygon_mask(ys, xs, _regular_vertices(cy, cx, [TRIANGLE_CIRCUMRADIUS_SCALE * radius] * 3, angle))


def _star(ys, xs, cy, cx, radius, angle):
    outer = STAR_OUTER_SCALE * radius
    radii = [outer, STAR_INNER_RATIO * outer] * STAR_POINTS
    return _polygon_mask(ys, xs, _regular_vertices(cy, cx, radii, angle))


_SHAPE_MASKS = {
    RED_CIRCLE: _disk,
    GREEN_TRIANGLE: _triangle,
    STRIPED_SQUARE: _square,
    CHECKERED_CIRCLE: _disk,
    DOTTED_SQUARE: _square,
    PURPLE_STAR: _star,
}


def _boundary_band(label: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another label (a 2-px band along each border)."""
    band = np.zeros(label.shape, dtype=bool)
    vertical_change = label[1:, :] != label[:-1, :]
    horizontal_change = label[:, 1:] != label[:, :-1]
    band[1:, :] |= vertical_change
    band[:-1, :] |= vertical_change
    band[:, 1:] |= horizontal_change
    band[:, :-1] |= horizontal_change
    return band


def render_shapes_sample(split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Render sample ``index`` of ``split`` in memory.

    Returns:
        image: (IMAGE_SIZE, IMAGE_SIZE, 3) uint8 RGB.
        label: (IMAGE_SIZE, IMAGE_SIZE) uint8, class index per pixel, IGNORE_LABEL on boundaries.
    """
    rng = np.random.default_rng(seed_for(split, index))
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64) + 0.5  # pixel centres

    background = BACKGROUND_CLASSES[rng.integers(len(BACKGROUND_CLASSES))]
    image = _TEXTURES[background](rng, ys, xs)
    label = np.full((IMAGE_SIZE, IMAGE_SIZE), background, dtype=np.uint8)

    low, high = CENTRE_MARGIN_FRACTION * IMAGE_SIZE, (1 - CENTRE_MARGIN_FRACTION) * IMAGE_SIZE
    for _ in range(rng.integers(MIN_SHAPES, MAX_SHAPES + 1)):
        class_id = SHAPE_CLASSES[rng.integers(len(SHAPE_CLASSES))]
        radius = rng.uniform(MIN_SHAPE_RADIUS, MAX_SHAPE_RADIUS)
        cy, cx = rng.uniform(low, high, size=2)
        angle = rng.uniform(0.0, 2 * np.pi)
        mask = _SHAPE_MASKS[class_id](ys, xs, cy, cx, radius, angle)
        image[mask] = _TEXTURES[class_id](rng, ys, xs)[mask]
        label[mask] = class_id

    image += rng.normal(0.0, SENSOR_NOISE_STD, size=image.shape)
    label[_boundary_band(label)] = IGNORE_LABEL
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def present_classes(label: np.ndarray, ignore_label: int = IGNORE_LABEL) -> list[int]:
    """Sorted class ids that occur in ``label`` (any shape (H, W) integer array), ignore excluded.

    Meant for building captions: map the ids through ``stuff_classes`` to get the names of what
    an image shows.
    """
    return [int(c) for c in np.unique(label) if c != ignore_label]


# ---------------------------------------------------------------- writing to disk
def shape_split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(image folder, label folder) of ``split`` inside the set's folder ``root``."""
    return Path(root) / IMAGES_DIRNAME / split, Path(root) / LABELS_DIRNAME / split


def _file_name(index: int) -> str:
    return f"{index:0{_FILE_STEM_DIGITS}d}{IMAGE_EXT}"


def _fingerprint(split: str, class_names: list[str]) -> str:
    """Hash of everything that determines a split's files; a marker with another one is stale."""
    definition = {
        "generator_version": GENERATOR_VERSION,
        "base_seed": BASE_SEED,
        "split": split,
        "num_images": SPLIT_SIZES[split],
        "image_size": IMAGE_SIZE,
        "ignore_label": IGNORE_LABEL,
        "class_names": class_names,
    }
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


def _marker_path(root: Path, split: str) -> Path:
    return Path(root) / f"generation_{split}.json"


def _read_marker(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden temp file next to ``path``, then rename it over ``path``.

    Readers never see a half-written file; an interrupted write leaves only a hidden
    ``.<name>.*.tmp`` file, which the next generation removes.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _is_own_temp_file(name: str) -> bool:
    """Temp files left by :func:`_write_atomically` for one of the set's own outputs."""
    if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)):
        return False
    target = name[1:].split(".", 2)
    return len(target) == 3 and _OWN_OUTPUT_NAME.match(f"{target[0]}.{target[1]}") is not None


def _own_files(folder: Path, predicate: Callable[[str], bool]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(folder / name for name in os.listdir(folder) if predicate(name))


@contextlib.contextmanager
def _generation_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on the set's folder, so concurrent processes (e.g. one per GPU) don't race."""
    try:
        import fcntl
    except ImportError:  # not POSIX: generation is still atomic per file, just not serialised
        yield
        return
    with open(Path(root) / _LOCK_FILENAME, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _split_needs_work(root: Path, split: str, fingerprint: str) -> bool:
    marker = _read_marker(_marker_path(root, split))
    if marker.get("fingerprint") != fingerprint or not marker.get("complete"):
        return True
    image_dir, label_dir = shape_split_paths(root, split)
    names = [_file_name(i) for i in range(SPLIT_SIZES[split])]
    if not all((image_dir / n).is_file() and (label_dir / n).is_file() for n in names):
        return True
    return bool(_own_files(image_dir, _is_own_temp_file) or _own_files(label_dir, _is_own_temp_file))


def generate_shapes_dataset(root: Path, split: str) -> Path:
    """Make sure ``split`` of the set exists, complete and current, in the set's folder ``root``.

    ``root`` is the set's own folder (``datasets_root() / "ovseg_shapes"`` when registered).

    * Complete and current (marker fingerprint matches, every file present): nothing is written.
    * Marker current but files missing (interrupted run, deleted file): only those are rendered.
    * No marker or an older fingerprint: the split's own outputs (``NNNNNN.png`` in its two
      folders) are removed and all samples are rendered again.

    Every file is written atomically; stale temp files of the set are removed. Files a user put
    in these folders under other names are left alone.

    Returns:
        ``root``.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"Unknown split {split!r}; known: {sorted(SPLIT_SIZES)}")
    root = Path(root)
    class_names = load_class_names(CLASS_NAMES_FILE)
    if len(class_names) != NUM_CLASSES:
        raise ValueError(f"{CLASS_NAMES_FILE}.json lists {len(class_names)} names, the generator draws {NUM_CLASSES}")
    fingerprint = _fingerprint(split, class_names)
    classes_json = (json.dumps(class_names, indent=2) + "\n").encode()
    classes_path = root / CLASSES_JSON

    def classes_json_current() -> bool:
        return classes_path.is_file() and classes_path.read_bytes() == classes_json

    if not _split_needs_work(root, split, fingerprint) and classes_json_current():
        return root

    image_dir, label_dir = shape_split_paths(root, split)
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    with _generation_lock(root):
        if not classes_json_current():
            _write_atomically(classes_path, classes_json)
        if not _split_needs_work(root, split, fingerprint):  # another process finished meanwhile
            return root
        for stale in _own_files(image_dir, _is_own_temp_file) + _own_files(label_dir, _is_own_temp_file):
            stale.unlink()
        marker_path = _marker_path(root, split)
        if _read_marker(marker_path).get("fingerprint") != fingerprint:
            # Files from another generator version can't be told apart from ours: start over.
            for old in _own_files(image_dir, _OWN_OUTPUT_NAME.match) + _own_files(label_dir, _OWN_OUTPUT_NAME.match):
                old.unlink()
            _write_atomically(marker_path, json.dumps({"fingerprint": fingerprint, "complete": False}).encode())

        written = 0
        for index in range(SPLIT_SIZES[split]):
            name = _file_name(index)
            if (image_dir / name).is_file() and (label_dir / name).is_file():
                continue
            image, label = render_shapes_sample(split, index)
            _write_atomically(label_dir / name, _png_bytes(label))
            _write_atomically(image_dir / name, _png_bytes(image))
            written += 1
        marker = {
            "fingerprint": fingerprint,
            "complete": True,
            "generator_version": GENERATOR_VERSION,
            "num_images": SPLIT_SIZES[split],
        }
        if _read_marker(marker_path) != marker:
            _write_atomically(marker_path, json.dumps(marker, indent=2).encode())
    logger.info("ovseg_shapes: wrote %d %s samples to %s", written, split, root)
    return root


# ---------------------------------------------------------------- registration
def dataset_name(split: str) -> str:
    """Registered name of ``split``, e.g. ``"ovseg_shapes_train_sem_seg"``."""
    return f"ovseg_shapes_{split}_sem_seg"


def region_view_name(split: str) -> str:
    """Registered name of ``split``'s region view, e.g. ``"ovseg_shapes_val_regions"``."""
    return f"ovseg_shapes_{split}_regions"


def caption_view_name(split: str) -> str:
    """Registered name of ``split``'s caption view, e.g. ``"ovseg_shapes_train_captions"``."""
    return f"ovseg_shapes_{split}_captions"


def register_builtin_shapes() -> None:
    """Register ``ovseg_shapes_{train,val}_sem_seg`` under ``datasets_root()/ovseg_shapes``, their
    region views ``ovseg_shapes_{train,val}_regions`` (region classification: every shape is a
    thing segment, the background a stuff segment) and their caption views
    ``ovseg_shapes_{train,val}_captions`` (Talk2DINO: captions such as "a photo of a red circle
    and a striped square" written from the classes in each label map, see sem_seg_captions.py).

    Touches no file; the loader generates the split at first use.
    """
    from .sem_seg_captions import register_sem_seg_caption_view
    from .sem_seg_regions import register_sem_seg_region_view

    root = datasets_root() / DATASET_DIRNAME
    class_names = load_class_names(CLASS_NAMES_FILE)
    for split in SPLIT_SIZES:
        image_dir, label_dir = shape_split_paths(root, split)
        register_sem_seg_dataset(
            dataset_name(split),
            image_root=str(image_dir),
            gt_root=str(label_dir),
            class_names=class_names,
            ignore_label=IGNORE_LABEL,
            image_ext=IMAGE_EXT,
            gt_ext=LABEL_EXT,
            evaluator_type="ovseg_sem_seg",
            prepare_hint=PREPARE_HINT,
            ensure_ready=functools.partial(generate_shapes_dataset, root, split),
            class_names_file=f"{CLASS_NAMES_FILE}.json",
        )
        register_sem_seg_region_view(
            region_view_name(split),
            dataset_name(split),
            class_names=class_names,
            thing_class_ids=SHAPE_CLASSES,
            ignore_label=IGNORE_LABEL,
            extra_metadata={"class_names_file": f"{CLASS_NAMES_FILE}.json"},
        )
        register_sem_seg_caption_view(
            caption_view_name(split),
            dataset_name(split),
            class_names=class_names,
            background_class_ids=BACKGROUND_CLASSES,
            ignore_label=IGNORE_LABEL,
            extra_metadata={"class_names_file": f"{CLASS_NAMES_FILE}.json"},
        )


def main(argv: Optional[list[str]] = None) -> None:
    """CLI: generate both splits (a no-op for splits already complete)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="the set's folder to write into (default: $DETECTRON2_DATASETS/ovseg_shapes, or ./datasets/ovseg_shapes)",
    )
    args = parser.parse_args(argv)
    root = args.root if args.root is not None else datasets_root() / DATASET_DIRNAME
    for split in SPLIT_SIZES:
        generate_shapes_dataset(root, split)
        print(f"{split}: {SPLIT_SIZES[split]} images in {root}")


if __name__ == "__main__":
    main()
