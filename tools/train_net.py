#!/usr/bin/env python
"""Train or evaluate any ovseg_d2 meta-architecture with detectron2's launcher.

    python tools/train_net.py --config-file configs/quickstart/baseline_maskclip_tiny.yaml
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS path/to/model.pth
    python tools/train_net.py --config-file configs/talk2dino_vitb.yaml --eval-only MODEL.WEIGHTS psi.pth
    python tools/train_net.py --config-file CONFIG --num-gpus 8 [--resume]

With --eval-only, a config that sets TEST.SUITE (Talk2DINO's: the eight training-free benchmarks)
is evaluated on that suite as tools/eval_all.py does (``ovseg_d2.engine.suite_evaluation``, tables
under OUTPUT_DIR/eval); otherwise on DATASETS.TEST.

Multi-GPU and multi-machine runs come from detectron2's ``launch`` (torch.distributed).
A fresh run refuses an OUTPUT_DIR that already holds checkpoints, so nothing is overwritten
by accident: pass --resume to continue it or --overwrite to replace it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies and registration first)
from detectron2.engine import default_argument_parser, launch  # noqa: E402

from ovseg_d2.checkpoint import build_checkpointer  # noqa: E402
from ovseg_d2.engine import OvsegTrainer, setup_cfg  # noqa: E402
from ovseg_d2.engine.suite_evaluation import evaluate_suites, split_names  # noqa: E402


def check_output_dir(cfg, args) -> None:
    """Refuse to start a fresh run over existing checkpoints (nothing a user made is overwritten)."""
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if not args.resume and not args.overwrite and os.path.exists(last):
        raise SystemExit(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} already holds checkpoints ({last}). Pass --resume to continue "
            "that run, --overwrite to start over and replace them, or choose another OUTPUT_DIR."
        )


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only and cfg.TEST.SUITE:
        return evaluate_suites(cfg, split_names(cfg.TEST.SUITE), config_file=args.config_file)
    if args.eval_only:
        model = OvsegTrainer.build_model(cfg)
        build_checkpointer(cfg, model, cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return OvsegTrainer.test(cfg, model)
    check_output_dir(cfg, args)
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_parser():
    parser = default_argument_parser()
    parser.add_argument("--overwrite", action="store_true", help="start a fresh run even if OUTPUT_DIR has checkpoints")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
