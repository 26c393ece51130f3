"""Named benchmark suites and their tables, in the papers' column order.

``trained``: the six benchmarks of trained open-vocabulary segmentation (CAT-Seg's table).
``training_free``: the eight of the training-free protocol (Talk2DINO's table), with an average.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = ["SUITES", "SUITE_AVERAGES", "SuiteEntry", "EntryResult", "resolve_entries", "format_markdown", "format_csv"]


@dataclass(frozen=True)
class SuiteEntry:
    column: str  # the papers' column name, e.g. "A-847"
    dataset: str  # the registered data set name


SUITES: dict[str, tuple[SuiteEntry, ...]] = {
    "trained": (
        SuiteEntry("A-847", "ade20k_full_sem_seg_freq_val_all"),
        SuiteEntry("PC-459", "context_459_test_sem_seg"),
        SuiteEntry("A-150", "ade20k_150_test_sem_seg"),
        SuiteEntry("PC-59", "context_59_test_sem_seg"),
        SuiteEntry("PAS-20", "voc_2012_test_sem_seg"),
        SuiteEntry("PAS-20b", "voc_2012_test_background_sem_seg"),
    ),
    "training_free": (
        SuiteEntry("V20", "voc_2012_test_sem_seg"),
        SuiteEntry("C59", "context_59_test_sem_seg"),
        SuiteEntry("Stuff", "coco_2017_test_stuff_all_sem_seg"),
        SuiteEntry("City", "cityscapes_19_test_sem_seg"),
        SuiteEntry("ADE", "ade20k_150_test_sem_seg"),
        SuiteEntry("V21", "voc_2012_test_with_bg_sem_seg"),
        SuiteEntry("C60", "context_60_test_sem_seg"),
        SuiteEntry("Object", "coco_2017_test_object_sem_seg"),
    ),
}
#: suites whose table ends with the average over its columns (as the paper's does)
SUITE_AVERAGES = {"training_free"}


@dataclass
class EntryResult:
    entry: SuiteEntry
    metrics: Optional[dict] = None  # the evaluator's "sem_seg" dict; None when not evaluated
    missing: Optional[str] = None  # why it was skipped
    class_names_file: str = ""


def resolve_entries(names: Sequence[str]) -> list[SuiteEntry]:
    """Suite names and/or data set names -> entries in order (a suite expands to its columns)."""
    entries: list[SuiteEntry] = []
    for name in names:
        if name in SUITES:
            entries.extend(SUITES[name])
        else:
            known = {e.dataset: e for suite in SUITES.values() for e in suite}
            entries.append(known.get(name, SuiteEntry(name, name)))
    return entries


def _fmt(value: Optional[float]) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _average(results: Sequence[EntryResult]) -> Optional[float]:
    if any(r.metrics is None for r in results) or not results:
        return None
    return sum(r.metrics["mIoU"] for r in results) / len(results)


def format_markdown(results: Sequence[EntryResult], *, title: str, header_lines: Sequence[str], with_average: bool, row_name: str) -> str:
    """A Markdown report: header lines, the mIoU table, then one line per skipped data set."""
    columns = [r.entry.column for r in results] + (["avg"] if with_average else [])
    values = [_fmt(r.metrics["mIoU"]) if r.metrics is not None else "—" for r in results]
    if with_average:
        average = _average(results)
        values.append(_fmt(average) if average is not None else "—")
    lines = [f"# {title}", ""] + [f"- {line}" for line in header_lines] + [""]
    lines.append("| model | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    lines.append(f"| {row_name} | " + " | ".join(values) + " |")
    skipped = [r for r in results if r.metrics is None]
    if skipped:
        lines += ["", "Skipped:"] + [f"- {r.entry.column} (`{r.entry.dataset}`): {r.missing}" for r in skipped]
    return "\n".join(lines) + "\n"


def format_csv(results: Sequence[EntryResult]) -> str:
    """One row per data set: column, data set, mIoU, fwIoU, mACC, pACC, status, class-name file."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["column", "dataset", "mIoU", "fwIoU", "mACC", "pACC", "status", "class_names_file"])
    for r in results:
        m = r.metrics or {}
        status = "ok" if r.metrics is not None else f"skipped: {r.missing}"
        writer.writerow([r.entry.column, r.entry.dataset] + [_fmt(m.get(k)) for k in ("mIoU", "fwIoU", "mACC", "pACC")] + [status, r.class_names_file])
    return out.getvalue()
