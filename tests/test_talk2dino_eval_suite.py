"""Talk2DINO's --eval-only benchmark: the config's TEST.SUITE (training_free) resolves to the eight
training-free sets with each set's protocol read from its metadata, and tools/eval_all.py /
tools/train_net.py --eval-only evaluate it: a tiny V21 in the real on-disk layout (background by
threshold and background cleaning) and the built-in shapes, the other sets skipped."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import glob
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from PIL import Image

from ovseg_d2.data import register_all
from ovseg_d2.evaluation.suites import SUITES, resolve_entries

from .conftest import REPO_ROOT, quickstart_cfg

QUICKSTART = "configs/quickstart/talk2dino_tiny.yaml"
# the reference's eval configs: background channel on V21 / C60 / Object, cleaning on V21 and Object only
PROTOCOL = {"V21": (True, True), "C60": (True, False), "Object": (True, True)}


@pytest.mark.parametrize("config", ["configs/talk2dino_vitb.yaml", "configs/talk2dino_vitl.yaml"])
def test_suite_of_the_configs_resolves_with_per_set_protocol(config, shapes_root):
    register_all()
    cfg = quickstart_cfg(config)
    assert cfg.TEST.SUITE == "training_free"
    entries = resolve_entries(cfg.TEST.SUITE.split(","))
    assert [e.column for e in entries] == ["V20", "C59", "Stuff", "City", "ADE", "V21", "C60", "Object"]
    assert entries == list(SUITES["training_free"])
    for entry in entries:
        meta = MetadataCatalog.get(entry.dataset)
        expected = PROTOCOL.get(entry.column, (False, False))
        assert (bool(meta.get("background_by_threshold", False)), bool(meta.get("talk2dino_background_cleaning", False))) == expected, entry
        if expected[0]:
            assert meta.stuff_classes[0] == "background"


def _tiny_v21(root, n=2):
    """VOCdevkit/VOC2012 JPEGImages + annotations_detectron2_with_bg/val (0 = background, 255 ignore)."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (voc / "annotations_detectron2_with_bg" / "val").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 90 + 10 * i, 130
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"2007_{i:06d}.jpg")
        label = np.zeros((h, w), np.uint8)
        label[10:50, 20:80] = 15  # person
        label[60:, 90:] = 7  # car
        label[50, :] = 255
        Image.fromarray(label).save(voc / "annotations_detectron2_with_bg" / "val" / f"2007_{i:06d}.png")


@pytest.fixture(scope="module")
def data_root(shapes_root):
    register_all()
    _tiny_v21(shapes_root)  # in the session root: the shapes stay where they are
    yield shapes_root
    import shutil

    shutil.rmtree(shapes_root / "VOCdevkit")


def _table(folder):
    (path,) = glob.glob(str(folder / "eval_*.md"))
    text = open(path).read()
    row = next(line for line in text.splitlines() if line.startswith("| Talk2DINO"))
    return text, [c.strip() for c in row.strip("|").split("|")]


SUITE = ("TEST.SUITE", "training_free,ovseg_shapes_val_sem_seg", "DATALOADER.NUM_WORKERS", "0")


def test_eval_all_eval_only_runs_the_config_suite(data_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), HF_HUB_OFFLINE="1")
    run = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "eval_all.py"), "--config-file", os.path.join(REPO_ROOT, QUICKSTART),
         "--eval-only", *SUITE, "OUTPUT_DIR", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text, cells = _table(tmp_path / "eval")
    assert "| model | V20 | C59 | Stuff | City | ADE | V21 | C60 | Object | ovseg_shapes_val_sem_seg | avg |" in text
    assert cells[1:6] == ["—"] * 5 and cells[7:9] == ["—"] * 2 and cells[10] == "—"  # only V21 and the shapes are on disk
    assert 0.0 <= float(cells[6]) <= 100.0 and 0.0 <= float(cells[9]) <= 100.0
    assert "pascal_voc_21.json" in text and "ovseg_shapes.json" in text


def test_train_net_eval_only_with_a_suite_writes_the_table(data_root, tmp_path):
    spec = importlib.util.spec_from_file_location("ovseg_train_net", os.path.join(REPO_ROOT, "tools", "train_net.py"))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = train_net.build_parser().parse_args(
        ["--config-file", os.path.join(REPO_ROOT, QUICKSTART), "--eval-only", *SUITE, "TEST.SUITE", "voc_2012_test_with_bg_sem_seg", "OUTPUT_DIR", str(tmp_path)]
    )
    torch.manual_seed(0)
    results = train_net.main(args)
    metrics = results["voc_2012_test_with_bg_sem_seg"]
    assert 0.0 <= metrics["mIoU"] <= 100.0 and "IoU-background" in metrics
    _, cells = _table(tmp_path / "eval")
    assert cells[0] == "Talk2DINO" and float(cells[1]) == pytest.approx(metrics["mIoU"], abs=0.05)
