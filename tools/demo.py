#!/usr/bin/env python
"""Segment images with your own class names: overlay PNG with a legend, label PNG, JSON.

    python tools/demo.py --config-file CONFIG --input a.jpg b.png dir/ \\
        --vocabulary "cat, kitten; dog; grass" [--vocabulary-file names.txt] --output out/ \\
        [--opts MODEL.WEIGHTS model.pth ...]

Vocabulary: in ``--vocabulary`` classes are separated by ";" and the synonyms of one class by
","; in ``--vocabulary-file`` each line is one class (synonyms "a, b" or "a; b"; blank lines
and lines starting with "#" are skipped). Synonyms are used as the method's rule says
(``MODEL.TEXT.SYNONYMS``). An empty vocabulary or a class named twice stops the demo (status 2).

Per image ``<name>`` (a file given directly, or a file under a given folder, keeping its
relative path) it writes ``out/<name>_overlay.png`` (detectron2 ``Visualizer``, legend with
pixel shares), ``out/<name>_labels.png`` (class index per pixel at the input resolution; uint8,
or uint16 for more than 256 classes; 0 is "background" when background is scored by threshold)
and ``out/<name>.json`` (vocabulary, per-class pixel fractions, sizes, settings).

Images: EXIF orientation, grayscale, palette, alpha (composited onto white) and 16-bit files are
read correctly. Very large images: the model always works at the config's test resolution
(``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``). ``--scores-at input`` has the model return the
T x H x W scores at the input resolution; ``--scores-at working`` keeps them at the working
resolution and upsamples the labels band by band (memory grows with H x W, not T x H x W);
``auto`` (default) picks ``working`` when the input-resolution scores would exceed
``--score-memory-mb``. The overlay is drawn at most ``--overlay-max-size`` pixels on its long
side; files over ``--max-image-pixels`` are refused with a message.

Safety: every file the demo writes is marked (a PNG text chunk ``ovseg_d2_demo``, a JSON key
``"generator"``). Marked PNGs found in an input folder are skipped (so ``--output`` may be the
input folder, and a second run does not segment the first run's pictures). A file that is not
the demo's own is never replaced, even with ``--overwrite`` (which replaces the demo's own
earlier outputs only), and an output that would land on an input is refused.

A missing or unreadable input, or one whose outputs would overwrite an input or an existing
file, gets a message naming the problem and the fix and is skipped; the other images are still
processed and the exit status is 1. Usage errors (empty vocabulary, a class named twice, a bad
config) stop the demo before any image is read, with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies and registration first)

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
OUTPUT_SUFFIXES = {"overlay": "_overlay.png", "labels": "_labels.png", "json": ".json"}
UINT8_MAX_CLASSES = 256
BYTES_PER_MB = 2**20
#: PNG text chunk / JSON key marking the files this demo writes
OUTPUT_MARK_KEY = "ovseg_d2_demo"
GENERATOR = "ovseg_d2 tools/demo.py"
SCORES_AT = ("auto", "input", "working")


class UsageError(Exception):
    """A problem with the command line that stops the whole run (exit status 2)."""


@dataclass
class Job:
    """One image to process and where its outputs go."""

    path: str
    outputs: dict
    error: Optional[str] = None


def read_vocabulary(arguments: list[str], files: list[str]) -> list[str]:
    """Class names from ``--vocabulary`` strings (";" between classes) and files (one per line)."""
    names = [part.strip() for argument in arguments for part in argument.split(";")]
    for file in files:
        try:
            with open(file, encoding="utf-8") as f:
                names += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        except OSError as e:
            raise UsageError(f"cannot read the vocabulary file {file}: {e.strerror or e}") from e
    names = [n for n in names if n]
    if not names:
        raise UsageError("the vocabulary is empty: give class names with --vocabulary \"cat, kitten; dog\" or --vocabulary-file names.txt")
    return names


def is_demo_output(path: str) -> bool:
    """Whether ``path`` is a file this demo wrote (a marked PNG or JSON)."""
    try:
        if path.lower().endswith(".json"):
            with open(path, encoding="utf-8") as f:
                return json.load(f).get("generator") == GENERATOR
        from PIL import Image

        with Image.open(path) as image:  # text chunks before the image data: no decoding
            return image.format == "PNG" and OUTPUT_MARK_KEY in image.info
    except (OSError, ValueError, AttributeError):
        return False


def collect_inputs(inputs: list[str], output_dir: str) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """([(image path, output base name relative to the output dir)], [messages for bad inputs],
    [skipped files: the demo's own outputs]).

    Folders are searched recursively for image files, skipping the output folder below them and
    the PNGs this demo wrote. An image named twice (directly or through folders) is kept once."""
    found, problems, skipped = [], [], []
    seen: set[str] = set()
    output_real = os.path.realpath(output_dir)

    def add(path: str, base: str) -> None:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        if path.lower().endswith(".png") and is_demo_output(path):
            skipped.append(path)
            return
        found.append((path, base))

    for item in inputs:
        if os.path.isdir(item):
            files = []
            for root, dirs, names in os.walk(item):
                dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) != output_real)
                files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
            if not files:
                problems.append(f"{item}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)}); check the path")
            for path in files:
                add(path, os.path.splitext(os.path.relpath(path, item))[0])
        elif os.path.exists(item):
            add(item, os.path.splitext(os.path.basename(item))[0])
        else:
            problems.append(f"{item}: no such file or folder; check the path")
    return found, problems, skipped


def plan_jobs(found: list[tuple[str, str]], output_dir: str, overwrite: bool) -> list[Job]:
    """Output paths per image; an image whose outputs would overwrite an input, another image's
    outputs, a file the demo did not write, or (without ``overwrite``) an existing file gets an
    error instead."""
    input_paths = {os.path.realpath(path) for path, _ in found}
    claimed: dict[str, str] = {}
    jobs = []
    for path, base in found:
        outputs = {kind: os.path.join(output_dir, base + suffix) for kind, suffix in OUTPUT_SUFFIXES.items()}
        job = Job(path, outputs)
        real_outputs = [os.path.realpath(p) for p in outputs.values()]
        clobbered_inputs = [p for p in real_outputs if p in input_paths]
        taken = [claimed[p] for p in real_outputs if p in claimed]
        existing = [p for p in outputs.values() if os.path.lexists(p)]
        foreign = [p for p in existing if os.path.islink(p) or not os.path.isfile(p) or not is_demo_output(p)]
        if clobbered_inputs:
            job.error = f"its output {clobbered_inputs[0]} is an input image; choose another --output folder"
        elif taken:
            job.error = f"its outputs would be the same files as those of {taken[0]}; rename one or run them separately"
        elif foreign:
            job.error = f"{foreign[0]} exists and was not written by this demo, so it is never replaced; move it or choose another --output"
        elif existing and not overwrite:
            job.error = f"output {existing[0]} already exists (from an earlier run); pass --overwrite to replace it or choose another --output"
        else:
            for p in real_outputs:
                claimed[p] = path
        jobs.append(job)
    return jobs


def write_outputs(job: Job, image_rgb, result: dict, names: list[str], settings: dict, overlay_max_size: int) -> None:
    """The overlay PNG, label PNG and JSON of one image. ``names``: the classes as given (with
    "background" first when it is scored by threshold), one per label value; they are unique
    even where display names (first synonyms) coincide, e.g. "cat" and "cat, kitten" under the
    "mean" synonym rule."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from ovseg_d2.checkpoint import atomic_write
    from ovseg_d2.visualization import draw_segmentation_overlay, pixel_fractions

    dtype = np.uint8 if len(names) <= UINT8_MAX_CLASSES else np.uint16
    labels = result["labels"].cpu().numpy().astype(dtype)  # 1-2 bytes per pixel from here on
    background_index = 0 if "background" in result else None
    overlay = draw_segmentation_overlay(image_rgb, labels, names, background_index=background_index, max_size=overlay_max_size)
    fractions = pixel_fractions(labels, len(names))
    summary = {
        "generator": GENERATOR,
        "input": os.path.abspath(job.path),
        "height": int(labels.shape[0]),
        "width": int(labels.shape[1]),
        "vocabulary": names,  # label value k is names[k]
        "display_names": result["vocabulary"],
        "synonyms": result["synonyms"],
        "background_by_threshold": background_index is not None,
        "pixel_fractions": {name: float(f) for name, f in zip(names, fractions)},  # sums to 1
        "labels_png": os.path.basename(job.outputs["labels"]),
        "overlay_png": os.path.basename(job.outputs["overlay"]),
        **settings,
    }
    os.makedirs(os.path.dirname(os.path.abspath(job.outputs["json"])), exist_ok=True)

    def marked(kind: str) -> PngInfo:
        info = PngInfo()
        info.add_text(OUTPUT_MARK_KEY, kind)
        info.add_text("Software", GENERATOR)
        return info

    atomic_write(job.outputs["labels"], lambda f: Image.fromarray(labels).save(f, format="PNG", pnginfo=marked("labels")))
    atomic_write(job.outputs["overlay"], lambda f: Image.fromarray(overlay).save(f, format="PNG", optimize=True, pnginfo=marked("overlay")))
    atomic_write(job.outputs["json"], lambda f: f.write((json.dumps(summary, indent=2) + "\n").encode()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config-file", required=True, help="an ovseg_d2 config (e.g. configs/quickstart/baseline_maskclip_tiny.yaml)")
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders (searched recursively)")
    parser.add_argument("--vocabulary", nargs="*", default=[], help='class names: "cat, kitten; dog; grass" (";" between classes, "," between synonyms)')
    parser.add_argument("--vocabulary-file", action="append", default=[], help="a text file with one class per line")
    parser.add_argument("--output", required=True, help="folder for the outputs (created if needed)")
    parser.add_argument("--overwrite", action="store_true", help="replace this demo's own earlier outputs (inputs and other files are never overwritten)")
    parser.add_argument("--background", choices=["auto", "on", "off"], default="auto", help="score a 'background' class by threshold: auto = the method's default")
    parser.add_argument("--device", default=None, help="overrides MODEL.DEVICE (cpu, cuda, cuda:1)")
    parser.add_argument("--precision", default=None, choices=["float32", "bfloat16", "float16"], help="overrides TEST.PRECISION")
    parser.add_argument("--scores-at", choices=SCORES_AT, default="auto", help="resolution of the model's scores: input, working (labels upsampled band by band), or auto (working above --score-memory-mb)")
    parser.add_argument("--score-memory-mb", type=float, default=1024, help="--scores-at auto: above this size of the T x H x W input-resolution scores, use the working resolution")
    parser.add_argument("--overlay-max-size", type=int, default=1600, help="long side of the overlay image at most")
    parser.add_argument("--max-image-pixels", type=int, default=250_000_000, help="refuse larger images (decompression-bomb guard)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from detectron2.config import get_cfg
    from detectron2.utils.logger import setup_logger
    from PIL import Image
    from tqdm import tqdm

    from ovseg_d2 import OpenVocabPredictor, add_ovseg_config
    from ovseg_d2.data.image_loading import read_image_rgb
    from ovseg_d2.modeling.text import parse_vocabulary

    setup_logger(name="ovseg_d2")
    logging.getLogger("ovseg_d2").setLevel(logging.WARNING)

    def fail(message: str) -> None:
        tqdm.write(f"[demo] error: {message}", file=sys.stderr)

    try:
        cfg = get_cfg()
        add_ovseg_config(cfg)
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        vocabulary = read_vocabulary(args.vocabulary, args.vocabulary_file)
        parse_vocabulary(vocabulary, cfg.MODEL.TEXT.SYNONYMS)  # empty names and duplicates: before the model is built
    except (UsageError, ValueError, KeyError, OSError, AssertionError) as e:  # AssertionError: an odd number of --opts
        print(f"[demo] error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        print(f"[demo] error: --output {args.output} is a file; give a folder (it is created if needed)", file=sys.stderr)
        return EXIT_USAGE
    found, problems, skipped = collect_inputs(args.input, args.output)
    for problem in problems:
        fail(problem)
    jobs = plan_jobs(found, args.output, args.overwrite)
    background = {"auto": None, "on": True, "off": False}[args.background]
    try:
        predictor = OpenVocabPredictor(cfg, device=args.device, precision=args.precision)
        names = predictor.parse_vocabulary(vocabulary, background)[0]
    except (ValueError, KeyError, OSError) as e:  # bad settings, unknown registry names, unreadable MODEL.WEIGHTS
        print(f"[demo] error: cannot build the model from {args.config_file}: {e}", file=sys.stderr)
        return EXIT_USAGE
    Image.MAX_IMAGE_PIXELS = None  # checked below, with a message naming the option
    settings = {"config_file": args.config_file, "weights": cfg.MODEL.WEIGHTS, "meta_architecture": cfg.MODEL.META_ARCHITECTURE, "precision": predictor.precision}
    failed = len(problems)
    written = 0
    for job in tqdm(jobs, desc="images", unit="image", file=sys.stderr):
        if job.error:
            fail(f"{job.path}: {job.error}")
            failed += 1
            continue
        try:
            with Image.open(job.path) as header:
                pixels = header.size[0] * header.size[1]
        except OSError:
            pixels = 0  # PIL cannot open it: read_image_rgb tries OpenCV, or says why it cannot
        if pixels > args.max_image_pixels:
            fail(f"{job.path}: {pixels / 1e6:.0f} megapixels is over --max-image-pixels {args.max_image_pixels}; raise it if the image is trusted")
            failed += 1
            continue
        try:
            image_rgb = read_image_rgb(job.path)
        except (OSError, ValueError, MemoryError) as e:
            fail(f"{job.path}: {e}")
            failed += 1
            continue
        score_bytes = 4 * len(names) * image_rgb.shape[0] * image_rgb.shape[1]
        scores_at = args.scores_at
        if scores_at == "auto":
            scores_at = "input" if score_bytes <= args.score_memory_mb * BYTES_PER_MB else "working"
        array = image_rgb[..., ::-1].copy() if predictor.input_format == "BGR" else image_rgb
        try:
            result = predictor(array, vocabulary, background=background, scores_at=scores_at)
        except (RuntimeError, MemoryError) as e:  # e.g. out of memory on one huge image: the others still run
            fail(f"{job.path}: prediction failed: {e or type(e).__name__}; try --scores-at working or a smaller INPUT.MAX_SIZE_TEST")
            failed += 1
            continue
        try:
            write_outputs(job, image_rgb, result, names, {**settings, "scores_at": scores_at}, args.overlay_max_size)
        except (OSError, MemoryError) as e:
            fail(f"{job.path}: cannot write its outputs: {e or type(e).__name__}")
            failed += 1
            continue
        written += 1
    note = f", {len(skipped)} of this demo's own output PNGs skipped" if skipped else ""
    print(f"[demo] {written} image(s) written to {args.output}{note}" + (f", {failed} failed (see the messages above)" if failed else ""), file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
