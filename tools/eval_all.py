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
import datetime
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovseg_d2  # noqa: E402,F401  (environment remedies and registration first)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from ovseg_d2.checkpoint import atomic_write, build_checkpointer  # noqa: E402
from ovseg_d2.engine import OvsegTrainer, setup_cfg  # noqa: E402
from ovseg_d2.evaluation.sem_seg_evaluation import MIOU_DEFINITION  # noqa: E402
from ovseg_d2.evaluation.suites import SUITE_AVERAGES, SUITES, EntryResult, format_csv, format_markdown, resolve_entries  # noqa: E402

logger = logging.getLogger("ovseg_d2.eval_all")


def unavailable_reason(dataset: str):
    """None if the data set is registered and on disk, else a one-line reason."""
    if dataset not in DatasetCatalog.list():
        return "not a registered data set name"
    try:
        DatasetCatalog.get(dataset)
    except FileNotFoundError as err:
        return str(err).splitlines()[0]
    return None


def main(args):
    cfg = setup_cfg(args)
    names = _split(args.suite) + _split(args.datasets)
    if not names and cfg.TEST.SUITE:
        names = _split(cfg.TEST.SUITE)
        logger.info("evaluating TEST.SUITE of the config: %s", names)
    if not names:
        raise SystemExit("name a suite (--suite trained|training_free), data sets (--datasets NAME,NAME) or set TEST.SUITE in the config")
    unknown_suites = [s for s in _split(args.suite) if s not in SUITES]
    if unknown_suites:
        raise SystemExit(f"unknown suite(s) {unknown_suites}; choose from {sorted(SUITES)}")
    return evaluate(cfg, names, config_file=args.config_file, output_dir=args.output_dir)


def evaluate(cfg, names, *, config_file: str, output_dir: str = ""):
    """Evaluate ``cfg``'s model on the suites/data sets ``names`` and write the tables."""
    entries = resolve_entries(names)
    model = OvsegTrainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        build_checkpointer(cfg, model, cfg.OUTPUT_DIR).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: evaluating the model as initialised by its config")

    results = []
    for entry in entries:
        meta = MetadataCatalog.get(entry.dataset)
        result = EntryResult(entry, class_names_file=str(meta.get("class_names_file", "") or ""))
        result.missing = unavailable_reason(entry.dataset)
        if result.missing is None:
            single = cfg.clone()
            single.defrost()
            single.DATASETS.TEST = (entry.dataset,)
            result.metrics = OvsegTrainer.test(single, model).get("sem_seg")
        else:
            logger.warning("skipping %s: %s", entry.dataset, result.missing)
        results.append(result)

    if comm.is_main_process():
        write_report(cfg, config_file, output_dir, names, results)
    return {r.entry.dataset: r.metrics for r in results}


def write_report(cfg, config_file, output_dir, names, results) -> None:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    label = "+".join(names) if len(names) <= 2 else f"{len(results)}sets"
    output_dir = output_dir or os.path.join(cfg.OUTPUT_DIR, "eval")
    os.makedirs(output_dir, exist_ok=True)
    header = [
        f"config: `{config_file}`; weights: `{cfg.MODEL.WEIGHTS or '(none)'}`; date: {stamp}",
        f"evaluator: ovseg_d2 OpenVocabSemSegEvaluator; {MIOU_DEFINITION}; values are mIoU (%)",
    ] + [f"class names of {r.entry.column}: `{r.class_names_file or 'metadata stuff_classes'}`" for r in results]
    with_average = any(n in SUITE_AVERAGES for n in names)
    markdown = format_markdown(results, title=f"ovseg_d2 evaluation: {', '.join(names)}", header_lines=header,
                               with_average=with_average, row_name=cfg.MODEL.META_ARCHITECTURE)
    base = os.path.join(output_dir, f"eval_{label}_{stamp}")
    for suffix, text in ((".md", markdown), (".csv", format_csv(results))):
        atomic_write(base + suffix, lambda f, text=text: f.write(text.encode("utf-8")))
    print("\n" + markdown, flush=True)
    print(f"tables written to {base}.md and {base}.csv", flush=True)


def _split(value: str) -> list:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def build_parser():
    parser = default_argument_parser()
    parser.add_argument("--suite", default="", help="named suite(s), comma-separated: trained, training_free")
    parser.add_argument("--datasets", default="", help="registered data set names, comma-separated, in table order")
    parser.add_argument("--output-dir", default="", help="where the tables go (default: OUTPUT_DIR/eval)")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
