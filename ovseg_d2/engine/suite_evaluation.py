"""Evaluate a model on named suites / data sets and write the tables (``tools/eval_all.py``,
``tools/train_net.py --eval-only`` with ``TEST.SUITE``).

Each data set is evaluated with its own class names through ``OvsegTrainer.test``; a data set
that is not registered or not on disk is skipped with a line in the table. The tables go to
``output_dir`` (default ``OUTPUT_DIR/eval``) under time-stamped names, so nothing is overwritten.
"""
from __future__ import annotations

import datetime
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..checkpoint import atomic_write, build_checkpointer
from ..evaluation.sem_seg_evaluation import MIOU_DEFINITION
from ..evaluation.suites import SUITE_AVERAGES, EntryResult, format_csv, format_markdown, resolve_entries
from .trainer import OvsegTrainer

__all__ = ["evaluate_suites", "split_names", "unavailable_reason"]

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


def evaluate_suites(cfg, names, *, config_file: str, output_dir: str = ""):
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


def split_names(value: str) -> list:
    """Comma-separated names -> list (blanks dropped)."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]
