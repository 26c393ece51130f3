#!/usr/bin/env python
"""Evaluate one model on a benchmark suite and write the papers' table (Markdown and CSV).

    python tools/eval_all.py --config-file CONFIG --suite trained MODEL.WEIGHTS model.pth
    python tools/eval_all.py --config-file CONFIG --suite training_free MODEL.WEIGHTS model.pth
    python tools/eval_all.py --config-file CONFIG --datasets ovseg_shapes_val_sem_seg,context_59_test_sem_seg MODEL.WEIGHTS model.pth
    python tools/eval_all.py --config-file configs/talk2dino_vitb.yaml --eval-only MODEL.WEIGHTS psi.pth  # TEST.SUITE

Suites (ovseg_d2/evaluation/suites.py): ``trained`` = A-847, PC-459, A-150, PC-59, PAS-20,
PAS-20b; ``training_free`` = V20, C59, Stuff, City, ADE, V21, C60, Object (+ average). Each
data set is evaluated with its own class names through OvsegTrainer.test; a data set that is
not on disk is skipped with a line in the table instead of stopping the suite. The tables go
to ``--output-dir`` (default OUTPUT_DIR/eval) under time-stamped names, so nothing is
overwritten, with the evaluator's mIoU definition and each class-name file in the header.
Without ``--suite``/``--datasets`` the config's ``TEST.SUITE`` is evaluated (Talk2DINO's configs:
``training_free``); ``tools/train_net.py --eval-only`` does the same for configs that set it.
``--eval-only`` is accepted (and implied). Multi-GPU: ``--num-gpus N`` as in train_net.py.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies and registration first)
from detectron2.engine import default_argument_parser, launch  # noqa: E402

from ovseg_d2.engine import setup_cfg  # noqa: E402
from ovseg_d2.engine.suite_evaluation import evaluate_suites, split_names  # noqa: E402
from ovseg_d2.evaluation.suites import SUITES  # noqa: E402

logger = logging.getLogger("ovseg_d2.eval_all")


def main(args):
    cfg = setup_cfg(args)
    names = split_names(args.suite) + split_names(args.datasets)
    if not names and cfg.TEST.SUITE:
        names = split_names(cfg.TEST.SUITE)
        logger.info("evaluating TEST.SUITE of the config: %s", names)
    if not names:
        raise SystemExit("name a suite (--suite trained|training_free), data sets (--datasets NAME,NAME) or set TEST.SUITE in the config")
    unknown_suites = [s for s in split_names(args.suite) if s not in SUITES]
    if unknown_suites:
        raise SystemExit(f"unknown suite(s) {unknown_suites}; choose from {sorted(SUITES)}")
    return evaluate_suites(cfg, names, config_file=args.config_file, output_dir=args.output_dir)


def build_parser():
    parser = default_argument_parser()
    parser.add_argument("--suite", default="", help="named suite(s), comma-separated: trained, training_free")
    parser.add_argument("--datasets", default="", help="registered data set names, comma-separated, in table order")
    parser.add_argument("--output-dir", default="", help="where the tables go (default: OUTPUT_DIR/eval)")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
