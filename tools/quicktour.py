#!/usr/bin/env python
"""``make quicktour``: the quickstart baseline segments a built-in image with your words.

    python tools/quicktour.py [--weights model_final.pth] [--vocabulary "red circle; ..."]

1. The model: ``--weights``, else the newest ``model_final.pth`` of an earlier ``make
   quickstart`` (``output/quickstart/baseline_maskclip_tiny/*/``), else a fresh quickstart
   training run into a new time-stamped folder there (about a minute on 2 CPU cores).
2. The image: of the built-in ``ovseg_shapes`` validation images (generated on first use under
   ``$DETECTRON2_DATASETS``, default ``./datasets``), the one whose ground truth shows the most
   classes (first such index).
3. ``tools/demo.py`` with the vocabulary, into a new time-stamped folder
   ``output/quicktour/<time>/`` (nothing earlier is touched): ``<image>_overlay.png`` (the
   picture: segmentation over the image, legend with pixel shares), ``<image>_labels.png`` and
   ``<image>.json``; plus ``quicktour_small.png``, the picture with a 256-colour palette (about
   25 KB: the copy shown in the README, ``docs/quicktour_overlay.png``).

Prints the demo command it ran and the path of the picture.
"""
from __future__ import annotations

import argparse
import glob
import os
import shlex
import subprocess
import sys
import time

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = "configs/quickstart/baseline_maskclip_tiny.yaml"
SMALL_COLOURS = 256
QUICKSTART_OUTPUTS = "output/quickstart/baseline_maskclip_tiny"
# the quickstart's class names (the tiny model learnt these words), synonyms after a comma
DEFAULT_VOCABULARY = (
    "red circle; green triangle; striped square; checkered circle; dotted square; purple star; "
    "sand background, sand; water background, water"
)


def newest_weights(folder: str) -> str | None:
    found = glob.glob(os.path.join(folder, "*", "model_final.pth"))
    return max(found, key=os.path.getmtime) if found else None


def train_quickstart(python: str) -> str:
    out = os.path.join(QUICKSTART_OUTPUTS, time.strftime("%Y%m%d-%H%M%S"))
    command = [python, "tools/train_net.py", "--config-file", CONFIG, "OUTPUT_DIR", out]
    print(f"[quicktour] no trained quickstart model yet: training one\n  {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    weights = os.path.join(out, "model_final.pth")
    if not os.path.isfile(weights):
        raise SystemExit(f"[quicktour] error: training finished without {weights}; see the log above")
    return weights


def richest_val_image() -> str:
    """Path of the built-in val image whose ground truth shows the most classes (generated if needed)."""
    from ovseg_d2.data.datasets.builtin_shapes import (
        DATASET_DIRNAME, SPLIT_SIZES, generate_shapes_dataset, present_classes, render_shapes_sample, shape_split_paths,
    )
    from ovseg_d2.data.datasets.register_sem_seg import datasets_root

    root = datasets_root() / DATASET_DIRNAME
    generate_shapes_dataset(root, "val")  # a no-op when the split is complete
    counts = [len(present_classes(render_shapes_sample("val", i)[1])) for i in range(SPLIT_SIZES["val"])]
    index = counts.index(max(counts))
    return str(shape_split_paths(root, "val")[0] / f"{index:06d}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="", help="a trained quickstart model (default: the newest, else train one)")
    parser.add_argument("--vocabulary", default=DEFAULT_VOCABULARY, help='classes: "a; b, synonym; c"')
    parser.add_argument("--output", default="", help="output folder (default: a new output/quicktour/<time>)")
    args = parser.parse_args()
    os.chdir(ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    weights = args.weights or newest_weights(QUICKSTART_OUTPUTS) or train_quickstart(sys.executable)
    print(f"[quicktour] model: {weights}", flush=True)
    image = richest_val_image()
    output = args.output or os.path.join("output", "quicktour", time.strftime("%Y%m%d-%H%M%S"))
    command = [sys.executable, "tools/demo.py", "--config-file", CONFIG, "--input", image, "--vocabulary", args.vocabulary,
               "--output", output, "--opts", "MODEL.WEIGHTS", weights]
    print(f"[quicktour] {shlex.join(command)}", flush=True)
    status = subprocess.call(command)
    if status != 0:
        return status
    stem = os.path.splitext(os.path.basename(image))[0]
    picture = os.path.join(output, stem + "_overlay.png")
    small = os.path.join(output, "quicktour_small.png")
    with Image.open(picture) as overlay:
        overlay.convert("RGB").quantize(colors=SMALL_COLOURS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(small, optimize=True)
    print(f"[quicktour] the picture: {picture} (labels: {stem}_labels.png, pixel fractions: {stem}.json; "
          f"{SMALL_COLOURS}-colour copy: {small}, {os.path.getsize(small) / 1024:.0f} KB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
