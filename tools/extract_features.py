#!/usr/bin/env python
"""Run Talk2DINO's frozen backbones once over caption data sets and store their outputs.

    python tools/extract_features.py --config-file configs/talk2dino_vitb.yaml \
        --output features/talk2dino_vitb_coco2014 [--datasets coco_2014_train_captions,...] \
        [--batch-size 64] [--num-workers 4] [--overwrite] [KEY VALUE ...]

then train ψ from the cache (no image is read, DINOv2 and CLIP never run):

    python tools/train_net.py --config-file configs/talk2dino_vitb.yaml \
        INPUT.CAPTION.FEATURE_CACHE_DIR features/talk2dino_vitb_coco2014

Per image: DINOv2's attention-weighted per-head embeddings (heads x D_v); per caption: CLIP's raw
``encode_text`` feature. The data sets default to ``DATASETS.TRAIN``; add the caption test sets
(``--datasets coco_2014_train_captions,coco_2014_val_captions``) to evaluate retrieval from the cache
too (test sets the cache does not hold are read from images). The frozen weights are those the
config builds (``MODEL.DINOV2.PRETRAINED``, ``MODEL.CLIP.PRETRAINED``), then ``MODEL.WEIGHTS`` if
set; the manifest records their fingerprints, the image size and each data set's fingerprint, and
training refuses a cache that no longer matches. Layout and rules: ovseg_d2/data/feature_cache.py.

An existing non-empty ``--output`` is never replaced without ``--overwrite`` (and never if it is not
a feature cache); the cache appears under ``--output`` only once complete.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies and registration first)
from detectron2.config import get_cfg  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

from ovseg_d2 import add_ovseg_config  # noqa: E402
from ovseg_d2.checkpoint import build_checkpointer  # noqa: E402
from ovseg_d2.data import register_all  # noqa: E402
from ovseg_d2.data.feature_cache import write_feature_cache  # noqa: E402
from ovseg_d2.engine import OvsegTrainer  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="the Talk2DINO config training will use")
    parser.add_argument("--output", required=True, help="folder to write the cache to (INPUT.CAPTION.FEATURE_CACHE_DIR)")
    parser.add_argument(
        "--datasets", action="append", default=None, metavar="NAME[,NAME...]",
        help="caption data sets to extract, comma-separated or repeated (default: DATASETS.TRAIN)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images (and captions) per forward pass")
    parser.add_argument("--num-workers", type=int, default=None, help="image-loading workers (default DATALOADER.NUM_WORKERS)")
    parser.add_argument("--overwrite", action="store_true", help="replace the feature cache already in --output")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def setup(args):
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts))
    cfg.INPUT.CAPTION.FEATURE_CACHE_DIR = ""  # extraction reads images
    cfg.freeze()
    return cfg


def main(args) -> dict:
    cfg = setup(args)
    register_all()
    if cfg.MODEL.META_ARCHITECTURE != "Talk2DINO":
        raise SystemExit(f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}: the feature cache is Talk2DINO's; use a Talk2DINO config")
    # seeded as tools/train_net.py (detectron2's default_setup) seeds before building the model, so
    # randomly initialised frozen parts (quickstart configs) are the ones training will build
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    model = OvsegTrainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    datasets = [n for value in args.datasets for n in value.split(",") if n] if args.datasets else list(cfg.DATASETS.TRAIN)
    workers = cfg.DATALOADER.NUM_WORKERS if args.num_workers is None else args.num_workers
    try:
        manifest = write_feature_cache(
            model, cfg, datasets, args.output, batch_size=args.batch_size, num_workers=workers, overwrite=args.overwrite
        )
    except (FileExistsError, ValueError) as e:
        raise SystemExit(f"extract_features: {e}") from e
    for name, entry in manifest["datasets"].items():
        print(f"{name}: {entry['num_images']} images x {manifest['heads']} heads x {manifest['vision_dim']}, "
              f"{entry['num_captions']} captions x {manifest['text_dim']} -> {os.path.join(args.output, name)}")
    print(f"train from it with INPUT.CAPTION.FEATURE_CACHE_DIR {args.output}")
    return manifest


if __name__ == "__main__":
    main(build_parser().parse_args())
