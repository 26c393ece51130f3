#!/usr/bin/env python
"""Measure OpenVocabSemSegEvaluator's cost per image: reading the label, argmax, accumulation.

Registers a throwaway dataset (random 16-bit ground-truth PNGs with ~10% ignore pixels, written
to a temporary folder), feeds the evaluator random (C, H, W) float32 scores the size of an A-847
validation image after the reference preparation (short side 512), and prints one JSON line per
measurement plus a Markdown table. It prints numbers only; it does not assert any speed.

    python tools/benchmark_evaluator.py [--classes 847 150] [--images 5]

Fields: ``ms_per_image_process`` is the wall time of ``evaluator.process`` per image (argmax over
C on the CPU, reading the label file, one ``np.bincount``); ``ms_per_image_argmax`` is the argmax
alone (memory-bound: it reads all C x H x W scores); ``ms_per_image_update`` is the
accumulation alone (:func:`update_confusion_matrix` on in-memory arrays); ``ms_evaluate`` is
``evaluator.evaluate()`` (metrics from the (C+1) x (C+1) matrix).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies before torchvision / detectron2)

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from ovseg_d2.evaluation import OpenVocabSemSegEvaluator, update_confusion_matrix  # noqa: E402

#: A-847 validation images after the reference preparation: short side 512, 4:3 aspect.
HEIGHT, WIDTH = 512, 683
#: 16-bit ignore value of the A-847 / PC-459 label files.
IGNORE_LABEL = 65535
#: Fraction of ground-truth pixels set to the ignore value.
IGNORE_FRACTION = 0.1
SEED = 0


def register_fake_dataset(root: str, num_classes: int, num_images: int, rng: np.random.Generator):
    """Write random uint16 label PNGs under ``root`` and register them; return (name, dicts)."""
    gt_dir = os.path.join(root, f"gt_{num_classes}")
    os.makedirs(gt_dir)
    records = []
    for i in range(num_images):
        gt = rng.integers(0, num_classes, size=(HEIGHT, WIDTH), dtype=np.uint16)
        gt[rng.random((HEIGHT, WIDTH)) < IGNORE_FRACTION] = IGNORE_LABEL
        path = os.path.join(gt_dir, f"bench_{i:04d}.png")
        Image.fromarray(gt).save(path)
        records.append({"file_name": os.path.join(root, "images", f"bench_{i:04d}.jpg"),
                        "sem_seg_file_name": path, "height": HEIGHT, "width": WIDTH})
    name = f"_benchmark_ovseg_semseg_{num_classes}_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=[f"class {c}" for c in range(num_classes)],
                                  ignore_label=IGNORE_LABEL, sem_seg_root=gt_dir)
    return name, records


def measure(root: str, num_classes: int, num_images: int, rng: np.random.Generator) -> dict:
    name, records = register_fake_dataset(root, num_classes, num_images, rng)
    try:
        evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
        generator = torch.Generator().manual_seed(SEED)
        scores = torch.rand((num_classes, HEIGHT, WIDTH), generator=generator)
        evaluator.process(records[:1], [{"sem_seg": scores}])  # warm-up, not timed
        evaluator.reset()

        start = time.perf_counter()
        for record in records:
            evaluator.process([record], [{"sem_seg": scores}])
        ms_process = 1000 * (time.perf_counter() - start) / num_images

        start = time.perf_counter()
        evaluator.evaluate()
        ms_evaluate = 1000 * (time.perf_counter() - start)

        start = time.perf_counter()
        for _ in range(num_images):
            pred = scores.argmax(dim=0).numpy()
        ms_argmax = 1000 * (time.perf_counter() - start) / num_images

        gt = np.asarray(Image.open(records[0]["sem_seg_file_name"])).astype(np.int64)
        conf = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
        start = time.perf_counter()
        for _ in range(num_images):
            update_confusion_matrix(conf, pred, gt, num_classes, IGNORE_LABEL)
        ms_update = 1000 * (time.perf_counter() - start) / num_images
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    return {
        "classes": num_classes,
        "height": HEIGHT,
        "width": WIDTH,
        "images": num_images,
        "ms_per_image_process": round(ms_process, 2),
        "ms_per_image_argmax": round(ms_argmax, 2),
        "ms_per_image_update": round(ms_update, 2),
        "ms_evaluate": round(ms_evaluate, 2),
        "torch_threads": torch.get_num_threads(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[847, 150], help="class counts to measure")
    parser.add_argument("--images", type=int, default=4, help="timed images per class count")
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ovseg_bench_eval_") as root:
        for num_classes in args.classes:
            row = measure(root, num_classes, args.images, rng)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print()
    print("| classes | H x W | ms/image process | ms/image argmax | ms/image update | ms evaluate |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['classes']} | {row['height']} x {row['width']} | {row['ms_per_image_process']:.1f} "
              f"| {row['ms_per_image_argmax']:.1f} | {row['ms_per_image_update']:.1f} | {row['ms_evaluate']:.1f} |")


if __name__ == "__main__":
    main()
