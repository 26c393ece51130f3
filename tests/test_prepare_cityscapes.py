"""Cityscapes-19: train-id preparation from a fake gtFine release, registration, first-use errors.

Each test builds a tiny release in the official raw format (city folders, ``*_leftImg8bit.png``,
``*_gtFine_labelIds.png`` and the other gtFine files) under ``tmp_path``, runs the prepare
script's ``main`` and reads the result back through ``DatasetCatalog``. Expected train ids come
from the table written out in this file (cityscapesScripts' ``labels.py``), not from the converter.
"""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ovseg_d2.data import load_class_names
from ovseg_d2.data.datasets.cityscapes import register_cityscapes
from ovseg_d2.data.prepare import cityscapes

VAL, TRAIN = "cityscapes_19_test_sem_seg", "cityscapes_19_train_sem_seg"
IGNORE = 255
#: cityscapesScripts labels.py, id -> trainId for the 19 evaluated classes; ids 0..33 not listed -> 255.
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
OFFICIAL_NAMES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip
SHAPE = (16, 32)


def _read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _digests(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mtimes(folder: Path, pattern: str) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob(pattern)) if p.is_file()}


def _expected(label_ids: np.ndarray) -> np.ndarray:
    table = {label_id: TRAIN_IDS.get(label_id, IGNORE) for label_id in range(34)}
    return np.vectorize(table.__getitem__, otypes=[np.uint8])(label_ids)


def _make_release(root: Path) -> dict:
    """leftImg8bit + gtFine for val (3 cities, 4 images) and train (1 city); returns {stem: label ids}."""
    rng = np.random.default_rng(19)
    h, w = SHAPE
    frames = {  # (split, city, stem) -> how the image is stored
        ("val", "frankfurt", "frankfurt_000000_000294"): "RGB",
        ("val", "frankfurt", "frankfurt_000001_007973"): "RGB",
        ("val", "lindau", "lindau_000000_000019"): "L",
        ("val", "munster", "munster_000000_000019"): "RGBA",
        ("train", "aachen", "aachen_000000_000019"): "RGB",
    }
    labels = {}
    for (split, city, stem), mode in frames.items():
        if stem == "frankfurt_000000_000294":
            ids = (np.arange(h * w) % 34).reshape(h, w)  # every label id 0..33
        elif stem == "lindau_000000_000019":
            ids = rng.choice(np.array([0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]), size=(h, w))  # void only
        else:
            ids = rng.integers(0, 34, size=(h, w))
        channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8).squeeze()
        image_dir = root / "cityscapes/leftImg8bit" / split / city
        label_dir = root / "cityscapes/gtFine" / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels)
        assert image.mode == mode
        image.save(image_dir / f"{stem}_leftImg8bit.png")
        Image.fromarray(ids.astype(np.uint8)).save(label_dir / f"{stem}_gtFine_labelIds.png")
        # The other gtFine files of the release, which must stay as they are.
        Image.fromarray((ids * 1000).astype(np.uint16)).save(label_dir / f"{stem}_gtFine_instanceIds.png")
        Image.fromarray(np.zeros((h, w, 4), np.uint8)).save(label_dir / f"{stem}_gtFine_color.png")
        (label_dir / f"{stem}_gtFine_polygons.json").write_text(json.dumps({"imgHeight": h, "imgWidth": w, "objects": []}))
        labels[stem] = ids
    return labels


def test_prepare_register_and_read_back(tmp_path, monkeypatch):
    labels = _make_release(tmp_path)
    raw_before = _digests(tmp_path / "cityscapes")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))

    assert cityscapes.main(["--workers", "2"]) == 0  # --root defaults to $DETECTRON2_DATASETS
    register_cityscapes()

    val = DatasetCatalog.get(VAL)
    assert [d["image_id"] for d in val] == [
        "frankfurt_000000_000294", "frankfurt_000001_007973", "lindau_000000_000019", "munster_000000_000019",
    ]  # fmt: skip
    for d in val + DatasetCatalog.get(TRAIN):
        stem = d["image_id"]
        city = stem.split("_")[0]
        split = "train" if city == "aachen" else "val"
        assert d["file_name"] == str(tmp_path / "cityscapes/leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
        assert d["sem_seg_file_name"] == str(tmp_path / "cityscapes/gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")
        assert (d["height"], d["width"]) == SHAPE
        with Image.open(d["sem_seg_file_name"]) as label_image:
            assert label_image.mode == "L"
        np.testing.assert_array_equal(_read(d["sem_seg_file_name"]), _expected(labels[stem]))
    assert len(DatasetCatalog.get(TRAIN)) == 1

    values = np.concatenate([_read(d["sem_seg_file_name"]).ravel() for d in val])
    assert set(np.unique(values).tolist()) == set(range(19)) | {IGNORE}
    assert (_read(val[2]["sem_seg_file_name"]) == IGNORE).all()  # the void-only frame

    for name, split in ((VAL, "val"), (TRAIN, "train")):
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == OFFICIAL_NAMES and meta.ignore_label == 255
        assert meta.evaluator_type == "ovseg_sem_seg" and meta.background_by_threshold is False
        assert meta.class_names_file == "cityscapes_19.json"
        assert meta.image_root == str(tmp_path / "cityscapes/leftImg8bit" / split)
        assert meta.sem_seg_root == str(tmp_path / "cityscapes/gtFine" / split)
        assert "prepare_cityscapes.py" in meta.prepare_hint

    # Raw files byte-identical; the only new files are the train-id labels, next to the raw ones.
    after = _digests(tmp_path / "cityscapes")
    assert {p: after[p] for p in raw_before} == raw_before
    new = sorted(set(after) - set(raw_before))
    assert len(new) == 5 and all(p.name.endswith("_gtFine_labelTrainIds.png") for p in new)


def test_rerun_skips_finished_completes_deleted_and_ignores_stray_temp(tmp_path, monkeypatch):
    labels = _make_release(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    args = ["--root", str(tmp_path), "--splits", "val", "--workers", "1"]
    assert cityscapes.main(args) == 0
    gt = tmp_path / "cityscapes/gtFine/val"
    before = _mtimes(gt, "*_labelTrainIds.png")
    assert len(before) == 4

    deleted = gt / "frankfurt/frankfurt_000001_007973_gtFine_labelTrainIds.png"
    deleted.unlink()
    stray = gt / "lindau/.lindau_000000_000019_gtFine_labelTrainIds.png.a1b2c3.tmp"
    stray.write_bytes(b"half a png")
    assert cityscapes.main(args) == 0

    after = _mtimes(gt, "*_labelTrainIds.png")
    assert {p: t for p, t in after.items() if p != deleted} == {p: t for p, t in before.items() if p != deleted}
    np.testing.assert_array_equal(_read(deleted), _expected(labels["frankfurt_000001_007973"]))
    assert stray.exists()
    register_cityscapes()
    assert len(DatasetCatalog.get(VAL)) == 4


def test_corrupt_or_invalid_label_is_named(tmp_path, capsys):
    _make_release(tmp_path)
    raw = tmp_path / "cityscapes/gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    data = raw.read_bytes()
    raw.write_bytes(data[: len(data) // 2])
    assert cityscapes.main(["--root", str(tmp_path), "--splits", "val"]) == 1
    message = capsys.readouterr().out
    assert str(raw) in message and "Re-download" in message
    assert not raw.with_name("lindau_000000_000019_gtFine_labelTrainIds.png").exists()

    Image.fromarray(np.full(SHAPE, 40, np.uint8)).save(raw)  # 40 is no Cityscapes label id
    assert cityscapes.main(["--root", str(tmp_path), "--splits", "val"]) == 1
    message = capsys.readouterr().out
    assert str(raw) in message and "[40]" in message


def test_image_without_raw_label_is_explained(tmp_path, capsys):
    _make_release(tmp_path)
    missing = tmp_path / "cityscapes/gtFine/val/munster/munster_000000_000019_gtFine_labelIds.png"
    missing.unlink()
    assert cityscapes.main(["--root", str(tmp_path), "--splits", "val"]) == 1
    message = capsys.readouterr().out
    assert str(missing) in message and "gtFine_trainvaltest.zip" in message


def test_registration_touches_nothing_and_missing_data_fails_at_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_cityscapes()
    register_cityscapes()  # idempotent
    assert list(tmp_path.iterdir()) == []
    for name, split in ((VAL, "val"), (TRAIN, "train")):
        with pytest.raises(FileNotFoundError) as info:
            DatasetCatalog.get(name)
        assert str(tmp_path / "cityscapes/leftImg8bit" / split) in str(info.value)
        assert "prepare_cityscapes.py" in str(info.value)
    assert list(tmp_path.iterdir()) == []

    # Raw release present, train ids not written yet: the missing files are named.
    _make_release(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get(VAL)
    message = str(info.value)
    assert str(tmp_path / "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png") in message
    assert "prepare_cityscapes.py" in message


def test_class_names_match_the_label_table():
    names = load_class_names("cityscapes_19")
    assert names == OFFICIAL_NAMES == cityscapes.train_class_names()
    lut = cityscapes.label_id_to_train_id_lut()
    assert {i: int(t) for i, t in enumerate(lut) if t != IGNORE} == TRAIN_IDS
