"""Suites, their tables, and tools/eval_all.py end to end (missing data sets are skipped)."""
import glob
import math
import os
import subprocess
import sys

from ovseg_d2.evaluation.suites import SUITES, EntryResult, SuiteEntry, format_csv, format_markdown, resolve_entries

from .conftest import REPO_ROOT


def test_suites_are_the_papers_columns():
    assert [e.column for e in SUITES["trained"]] == ["A-847", "PC-459", "A-150", "PC-59", "PAS-20", "PAS-20b"]
    assert [e.column for e in SUITES["training_free"]] == ["V20", "C59", "Stuff", "City", "ADE", "V21", "C60", "Object"]
    entries = resolve_entries(["trained", "ovseg_shapes_val_sem_seg", "context_60_test_sem_seg"])
    assert len(entries) == 8 and entries[-2].column == "ovseg_shapes_val_sem_seg" and entries[-1].column == "C60"


def test_tables_with_average_and_skipped_rows():
    results = [
        EntryResult(SuiteEntry("V20", "a"), metrics={"mIoU": 80.0, "fwIoU": 1.0, "mACC": 2.0, "pACC": 3.0}, class_names_file="voc.json"),
        EntryResult(SuiteEntry("C59", "b"), metrics={"mIoU": 40.06, "fwIoU": math.nan, "mACC": 2.0, "pACC": 3.0}),
    ]
    md = format_markdown(results, title="t", header_lines=["h"], with_average=True, row_name="M")
    assert "| model | V20 | C59 | avg |" in md and "| M | 80.0 | 40.1 | 60.0 |" in md
    results.append(EntryResult(SuiteEntry("City", "c"), missing="no folder x"))
    md = format_markdown(results, title="t", header_lines=["h"], with_average=True, row_name="M")
    assert "| M | 80.0 | 40.1 | — | — |" in md and "- City (`c`): no folder x" in md
    rows = format_csv(results).splitlines()
    assert rows[0] == "column,dataset,mIoU,fwIoU,mACC,pACC,status,class_names_file"
    assert rows[1] == "V20,a,80.0,1.0,2.0,3.0,ok,voc.json"
    assert rows[2] == "C59,b,40.1,,2.0,3.0,ok,"
    assert rows[3] == "City,c,,,,,skipped: no folder x,"


def test_eval_all_runs_a_suite_and_skips_missing_sets(shapes_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(shapes_root), HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "eval_all.py"),
         "--config-file", os.path.join(REPO_ROOT, "configs/quickstart/baseline_maskclip_tiny.yaml"),
         "--suite", "training_free", "--datasets", "ovseg_shapes_val_sem_seg",
         "OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", "0"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    tables = glob.glob(str(tmp_path / "eval" / "eval_*.md"))
    assert len(tables) == 1
    text = open(tables[0]).read()
    assert "| model | V20 | C59 | Stuff | City | ADE | V21 | C60 | Object | ovseg_shapes_val_sem_seg | avg |" in text
    row = next(line for line in text.splitlines() if line.startswith("| MaskCLIPBaseline"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:9] == ["—"] * 8 and float(cells[9]) >= 0 and cells[10] == "—"
    assert text.count("\n- ") >= 8 + 3  # header lines + one skipped line per missing set
    assert "ground-truth pixels (detectron2 main)" in text and "ovseg_shapes.json" in text
    csv_rows = open(tables[0][:-3] + ".csv").read().splitlines()
    assert len(csv_rows) == 10 and csv_rows[-1].startswith("ovseg_shapes_val_sem_seg,ovseg_shapes_val_sem_seg,")
