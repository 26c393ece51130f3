"""A-150 and A-847: preparation from fake raw releases, registration, and first-use errors.

Each test builds a tiny release in the official raw format under ``tmp_path``, runs the prepare
script's ``main``, and reads the result back through ``DatasetCatalog``. Expected label values
are computed here from the raw values with the conventions written out in this file (CAT-Seg's),
not with the converters' functions.
"""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ovseg_d2.data import load_class_names
from ovseg_d2.data.datasets.ade20k import register_ade20k
from ovseg_d2.data.prepare import ade20k_150, ade20k_full
from ovseg_d2.data.prepare.ade20k_full_classes import ADE20K_847_CLASSES

A150_VAL, A150_TRAIN, A847_VAL = "ade20k_150_test_sem_seg", "ade20k_150_train_sem_seg", "ade20k_full_sem_seg_freq_val_all"
IGNORE_8BIT, IGNORE_16BIT = 255, 65535

# A-847 facts, from CAT-Seg's ADE20K_SEM_SEG_FULL_CATEGORIES: full class value -> training id.
KNOWN_TRAIN_IDS = {2978: 0, 312: 1, 6: 263, 2826: 845, 3148: 846}
#: Class values of no A-847 class (0 = unlabeled; 6655 = the largest the R/G encoding can hold).
UNLISTED_VALUES = (0, 1, 5, 4000, 6655)
FULL_VALUES = tuple(KNOWN_TRAIN_IDS) + UNLISTED_VALUES
BIG_SHAPE, BIG_RESIZED = (520, 600), (512, 591)  # short side 520 > 512 -> 512, round(600 / 520 * 512)


# ---------------------------------------------------------------- helpers
def _read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _digests(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _gradient(height: int, width: int, channels: int) -> np.ndarray:
    """A smooth uint8 image, (H, W) for 1 channel else (H, W, C); JPEG keeps it within a few levels.

    With 4 channels the last one is a constant alpha.
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [40 + 150 * xs / width, 60 + 150 * ys / height, 30 + 100 * (xs + ys) / (height + width), np.full(xs.shape, 200.0)]
    if channels == 1:
        return planes[0].astype(np.uint8)
    return np.stack(planes[:channels], axis=-1).astype(np.uint8)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- A-150 raw release
def _make_ade150_release(root: Path) -> dict:
    """ADEChallengeData2016 with 3 validation and 2 training images; returns {(split, stem): raw label}."""
    rng = np.random.default_rng(150)
    base = root / "ADEChallengeData2016"
    shapes = {
        ("validation", "ADE_val_00000001"): ((24, 32), "RGB"),  # 768 px: every raw value 0..150
        ("validation", "ADE_val_00000002"): ((20, 28), "L"),  # a grayscale JPEG, as some ADE images are
        ("validation", "ADE_val_00000003"): ((16, 16), "RGB"),  # only "other" (raw 0)
        ("training", "ADE_train_00000001"): ((18, 22), "RGB"),
        ("training", "ADE_train_00000002"): ((12, 30), "RGB"),
    }
    raws = {}
    for (split, stem), ((h, w), mode) in shapes.items():
        if stem == "ADE_val_00000001":
            raw = (np.arange(h * w) % 151).reshape(h, w).astype(np.uint8)
        elif stem == "ADE_val_00000003":
            raw = np.zeros((h, w), np.uint8)
        else:
            raw = rng.integers(0, 151, size=(h, w), dtype=np.uint8)
        for sub in ("images", "annotations"):
            (base / sub / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_gradient(h, w, 1 if mode == "L" else 3)).save(base / "images" / split / f"{stem}.jpg", quality=95)
        Image.fromarray(raw).save(base / "annotations" / split / f"{stem}.png")
        raws[(split, stem)] = raw
    return raws


def _expected_150(raw: np.ndarray) -> np.ndarray:
    """CAT-Seg's convention written out: raw 0 (other) -> 255, raw k in 1..150 -> k - 1."""
    table = {0: IGNORE_8BIT, **{k: k - 1 for k in range(1, 151)}}
    return np.vectorize(table.__getitem__, otypes=[np.uint8])(raw)


def test_ade20k_150_prepare_register_and_read_back(tmp_path, monkeypatch):
    raws = _make_ade150_release(tmp_path)
    raw_before = _digests(tmp_path / "ADEChallengeData2016")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))

    assert ade20k_150.main([]) == 0  # --root defaults to $DETECTRON2_DATASETS
    register_ade20k()

    for name, split, count in ((A150_VAL, "validation", 3), (A150_TRAIN, "training", 2)):
        dicts = DatasetCatalog.get(name)
        assert [Path(d["file_name"]).name for d in dicts] == sorted(f"{stem}.jpg" for (s, stem) in raws if s == split)
        assert len(dicts) == count
        for d in dicts:
            stem = Path(d["file_name"]).stem
            assert Path(d["sem_seg_file_name"]) == tmp_path / "ADEChallengeData2016/annotations_detectron2" / split / f"{stem}.png"
            with Image.open(d["sem_seg_file_name"]) as label_image:
                assert label_image.mode == "L"
            label = _read(d["sem_seg_file_name"])
            assert label.shape == (d["height"], d["width"]) == raws[(split, stem)].shape
            np.testing.assert_array_equal(label, _expected_150(raws[(split, stem)]))
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == 150 and meta.stuff_classes[0] == "wall" and meta.stuff_classes[-1] == "flag"
        assert meta.ignore_label == 255 and meta.evaluator_type == "ovseg_sem_seg"
        assert meta.background_by_threshold is False and meta.class_names_file == "ade20k_150.json"
        assert meta.image_root == str(tmp_path / "ADEChallengeData2016/images" / split)
        assert meta.sem_seg_root == str(tmp_path / "ADEChallengeData2016/annotations_detectron2" / split)
        assert "prepare_ade20k_150.py" in meta.prepare_hint

    # Every class and the ignore value occur; the grayscale image is listed with its own size.
    val_labels = [_read(d["sem_seg_file_name"]) for d in DatasetCatalog.get(A150_VAL)]
    assert set(np.unique(np.concatenate([v.ravel() for v in val_labels])).tolist()) == set(range(150)) | {255}
    gray = [d for d in DatasetCatalog.get(A150_VAL) if d["image_id"] == "ADE_val_00000002"][0]
    assert (gray["height"], gray["width"]) == (20, 28)

    # Raw files untouched (the output folder is new; nothing else changed).
    after = _digests(tmp_path / "ADEChallengeData2016")
    assert {p: after[p] for p in raw_before} == raw_before
    assert all("annotations_detectron2" in str(p) for p in set(after) - set(raw_before))


def test_ade20k_150_rerun_skips_finished_completes_deleted_and_ignores_stray_temp(tmp_path, monkeypatch):
    raws = _make_ade150_release(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert ade20k_150.main(["--root", str(tmp_path), "--splits", "validation", "--workers", "2"]) == 0
    out_dir = tmp_path / "ADEChallengeData2016/annotations_detectron2/validation"
    before = _mtimes(out_dir)
    assert len(before) == 3

    deleted = out_dir / "ADE_val_00000002.png"
    deleted.unlink()
    stray = out_dir / ".ADE_val_00000003.png.x1y2z3.tmp"  # what an interrupted atomic write leaves
    stray.write_bytes(b"half a png")
    assert ade20k_150.main(["--root", str(tmp_path), "--splits", "validation"]) == 0

    after = _mtimes(out_dir)
    assert {p: t for p, t in after.items() if p not in (deleted, stray)} == {p: t for p, t in before.items() if p != deleted}
    np.testing.assert_array_equal(_read(deleted), _expected_150(raws[("validation", "ADE_val_00000002")]))
    register_ade20k()
    assert [d["image_id"] for d in DatasetCatalog.get(A150_VAL)] == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]


def test_ade20k_150_corrupt_or_invalid_input_is_named(tmp_path, capsys):
    _make_ade150_release(tmp_path)
    raw_dir = tmp_path / "ADEChallengeData2016/annotations/validation"
    truncated = raw_dir / "ADE_val_00000002.png"
    _truncate(truncated)
    assert ade20k_150.main(["--root", str(tmp_path), "--splits", "validation"]) == 1
    message = capsys.readouterr().out
    assert str(truncated) in message and "Re-download" in message
    # The readable files were converted and are kept for the next run.
    assert (tmp_path / "ADEChallengeData2016/annotations_detectron2/validation/ADE_val_00000001.png").is_file()

    Image.fromarray(np.full((4, 4), 151, np.uint8)).save(truncated)  # not an A-150 value
    assert ade20k_150.main(["--root", str(tmp_path), "--splits", "validation"]) == 1
    message = capsys.readouterr().out
    assert str(truncated) in message and "[151]" in message


def test_ade20k_150_missing_raw_folder_is_explained(tmp_path, capsys):
    assert ade20k_150.main(["--root", str(tmp_path)]) == 1
    message = capsys.readouterr().out
    assert str(tmp_path / "ADEChallengeData2016/annotations/training") in message
    assert "ADEChallengeData2016.zip" in message


# ---------------------------------------------------------------- A-847 raw release
def _encode_seg(values: np.ndarray, rng) -> np.ndarray:
    """The release's colour encoding of class values: R = value // 256 * 10 + r, G = value % 256.

    ``r`` (0..9, at most 5 for the top value, to stay <= 255) checks that the reader divides R by
    10 and truncates; B carries made-up instance ids, which must be ignored.
    """
    high, low = values // 256, values % 256
    extra = rng.integers(0, 10, size=values.shape)
    extra = np.where(high == 25, extra % 6, extra)
    blue = rng.integers(0, 256, size=values.shape)
    return np.stack([high * 10 + extra, low, blue], axis=-1).astype(np.uint8)


def _expected_847(values: np.ndarray) -> np.ndarray:
    table = {**{v: IGNORE_16BIT for v in UNLISTED_VALUES}, **KNOWN_TRAIN_IDS}
    return np.vectorize(table.__getitem__, otypes=[np.uint16])(values)


def _make_ade_full_release(root: Path, evil_index: bool = False) -> dict:
    """ADE20K_2021_17_01 with index_ade20k.pkl; returns {file stem: (split, class values, source RGB)}."""
    rng = np.random.default_rng(847)
    specs = [  # (folder under the root, file name, (h, w), how the JPEG is stored)
        ("ADE20K_2021_17_01/images/ADE/validation/urban/street", "ADE_val_00000001.jpg", (40, 48), "RGB"),
        ("ADE20K_2021_17_01/images/ADE/validation/home/kitchen", "ADE_val_00000002.jpg", (30, 36), "L"),
        ("ADE20K_2021_17_01/images/ADE/validation/home/kitchen", "ADE_val_00000003.jpg", (32, 32), "RGBA"),
        ("ADE20K_2021_17_01/images/ADE/validation/urban/street", "ADE_val_00000004.jpg", BIG_SHAPE, "RGB"),
        ("ADE20K_2021_17_01/images/ADE/training/urban/street", "ADE_train_00000001.jpg", (20, 24), "RGB"),
        ("ADE20K_2021_17_01/images/ADE/training/urban/street", "ADE_frame_00000001.jpg", (20, 26), "RGB"),
    ]
    samples = {}
    for position, (folder, filename, (h, w), mode) in enumerate(specs):
        if position == 0:  # every value, in order, then repeated
            values = np.resize(np.array(FULL_VALUES), h * w).reshape(h, w)
        else:
            values = rng.choice(np.array(FULL_VALUES), size=(h, w))
        pixels = _gradient(h, w, {"L": 1, "RGB": 3, "RGBA": 4}[mode])
        (root / folder).mkdir(parents=True, exist_ok=True)
        stem = filename[: -len(".jpg")]
        image = Image.fromarray(pixels)
        assert image.mode == mode
        # JPEG cannot hold alpha: the RGBA image is a PNG under a .jpg name (PIL reads by content).
        image.save(root / folder / filename, format="PNG" if mode == "RGBA" else "JPEG", quality=95)
        Image.fromarray(_encode_seg(values, rng)).save(root / folder / f"{stem}_seg.png")
        (root / folder / f"{stem}.json").write_text(json.dumps({"annotation": {"filename": filename}}))
        split = "validation" if "_val_" in filename else "training"
        rgb = np.repeat(pixels[..., None], 3, axis=2) if mode == "L" else pixels[..., :3]
        samples[stem] = (split, values, rgb)

    index = {
        "folder": [folder for folder, *_ in specs],
        "filename": [filename for _, filename, *_ in specs],
        "scene": ["street", "kitchen", "kitchen", "street", "street", "street"],
        "objectnames": np.array(["-", "wall"], dtype=object),
        "objectPresence": np.zeros((2, len(specs)), dtype=np.uint8),
    }
    if evil_index:
        index["scene"] = [_MakesFolder(root / "pwned")]
    with open(root / "ADE20K_2021_17_01/index_ade20k.pkl", "wb") as handle:
        pickle.dump(index, handle)
    return samples


class _MakesFolder:
    """Unpickling this creates a folder: a stand-in for code a hostile pickle would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_ade20k_847_prepare_register_and_read_back(tmp_path, monkeypatch):
    samples = _make_ade_full_release(tmp_path)
    raw_before = _digests(tmp_path / "ADE20K_2021_17_01")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))

    assert ade20k_full.main(["--workers", "2"]) == 0
    register_ade20k()
    dicts = DatasetCatalog.get(A847_VAL)
    assert [d["image_id"] for d in dicts] == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003", "ADE_val_00000004"]

    for d in dicts:
        split, values, source = samples[d["image_id"]]
        label = _read(d["sem_seg_file_name"])
        image = _read(d["file_name"])
        with Image.open(d["sem_seg_file_name"]) as label_image, Image.open(d["file_name"]) as jpeg:
            assert label_image.format == "TIFF" and label_image.mode == "I;16"
            assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
        assert label.dtype == np.uint16 and image.dtype == np.uint8
        assert image.shape == label.shape + (3,) and label.shape == (d["height"], d["width"])
        if d["image_id"] == "ADE_val_00000004":
            # Short side 520 -> 512, long side round(600 / 520 * 512) = 591; the label keeps the
            # class value of pixel (floor(y * 520 / 512), floor(x * 600 / 591)) (nearest neighbour).
            assert label.shape == BIG_RESIZED
            rows = np.floor(np.arange(BIG_RESIZED[0]) * BIG_SHAPE[0] / BIG_RESIZED[0]).astype(int)
            cols = np.floor(np.arange(BIG_RESIZED[1]) * BIG_SHAPE[1] / BIG_RESIZED[1]).astype(int)
            values, source = values[np.ix_(rows, cols)], source[np.ix_(rows, cols)]
        else:
            assert label.shape == values.shape  # short side <= 512: kept
        np.testing.assert_array_equal(label, _expected_847(values))
        # Same picture, within JPEG error; grayscale became 3 equal-ish channels, alpha was dropped.
        assert np.abs(image.astype(int) - source.astype(int)).mean() < 3.0

    all_values = np.concatenate([_read(d["sem_seg_file_name"]).ravel() for d in dicts])
    assert set(np.unique(all_values).tolist()) == set(KNOWN_TRAIN_IDS.values()) | {IGNORE_16BIT}

    # JPEGs carry the reference's encoder setting (PIL's default quality, 75).
    reference = tmp_path / "q75.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(reference, quality=75)
    with Image.open(reference) as expected, Image.open(dicts[0]["file_name"]) as written:
        assert written.quantization == expected.quantization

    meta = MetadataCatalog.get(A847_VAL)
    assert len(meta.stuff_classes) == 847 and meta.stuff_classes[263].startswith("ad, advertisement")
    assert meta.ignore_label == 65535 and meta.evaluator_type == "ovseg_sem_seg"
    assert meta.background_by_threshold is False and meta.class_names_file == "ade20k_847.json"
    assert meta.image_root == str(tmp_path / "ADE20K_2021_17_01/images_detectron2/validation")
    assert meta.sem_seg_root == str(tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation")
    assert "prepare_ade20k_full.py" in meta.prepare_hint

    # Training entries (ADE_train_*, ADE_frame_*) are left for --splits training.
    assert not (tmp_path / "ADE20K_2021_17_01/images_detectron2/training").exists()
    assert ade20k_full.main(["--root", str(tmp_path), "--splits", "training", "--trust-index-pickle"]) == 0
    train_labels = tmp_path / "ADE20K_2021_17_01/annotations_detectron2/training"
    assert sorted(p.name for p in train_labels.iterdir()) == ["ADE_frame_00000001.tif", "ADE_train_00000001.tif"]
    np.testing.assert_array_equal(_read(train_labels / "ADE_frame_00000001.tif"), _expected_847(samples["ADE_frame_00000001"][1]))

    after = _digests(tmp_path / "ADE20K_2021_17_01")
    assert {p: after[p] for p in raw_before} == raw_before
    assert all("_detectron2" in str(p) for p in set(after) - set(raw_before))


def test_ade20k_847_rerun_skips_finished_completes_deleted_and_ignores_stray_temp(tmp_path):
    samples = _make_ade_full_release(tmp_path)
    args = ["--root", str(tmp_path), "--workers", "1"]
    assert ade20k_full.main(args) == 0
    out = tmp_path / "ADE20K_2021_17_01"
    before = {**_mtimes(out / "images_detectron2"), **_mtimes(out / "annotations_detectron2")}
    assert len(before) == 8

    deleted = out / "annotations_detectron2/validation/ADE_val_00000003.tif"
    deleted.unlink()
    stray = out / "images_detectron2/validation/.ADE_val_00000001.jpg.k2j3h4.tmp"
    stray.write_bytes(b"\xff\xd8 half a jpeg")
    assert ade20k_full.main(args) == 0

    after = {**_mtimes(out / "images_detectron2"), **_mtimes(out / "annotations_detectron2")}
    rewritten = {deleted, out / "images_detectron2/validation/ADE_val_00000003.jpg"}  # one job = both files
    assert {p: t for p, t in after.items() if p not in rewritten | {stray}} == {p: t for p, t in before.items() if p not in rewritten}
    np.testing.assert_array_equal(_read(deleted), _expected_847(samples["ADE_val_00000003"][1]))
    assert stray.exists()  # not counted by the check at the end, not listed by the registrar


def test_ade20k_847_bad_inputs_are_named(tmp_path, capsys):
    _make_ade_full_release(tmp_path)
    kitchen = tmp_path / "ADE20K_2021_17_01/images/ADE/validation/home/kitchen"
    truncated = kitchen / "ADE_val_00000002_seg.png"
    _truncate(truncated)
    assert ade20k_full.main(["--root", str(tmp_path)]) == 1
    message = capsys.readouterr().out
    assert str(truncated) in message and "Re-download" in message

    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(truncated)  # readable, but not the image's size
    assert ade20k_full.main(["--root", str(tmp_path)]) == 1
    message = capsys.readouterr().out
    assert str(truncated) in message and "36x30" in message and "5x5" in message

    (kitchen / "ADE_val_00000003_seg.png").unlink()
    assert ade20k_full.main(["--root", str(tmp_path)]) == 1
    message = capsys.readouterr().out
    assert "missing" in message and str(kitchen / "ADE_val_00000003_seg.png") in message


def test_ade20k_847_index_pickle_is_loaded_without_running_code(tmp_path, capsys):
    _make_ade_full_release(tmp_path, evil_index=True)
    assert ade20k_full.main(["--root", str(tmp_path)]) == 1
    message = capsys.readouterr().out
    assert "posix.mkdir" in message and "--trust-index-pickle" in message
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "ADE20K_2021_17_01/images_detectron2").exists()


# ---------------------------------------------------------------- registration and class names
def test_registration_touches_nothing_and_missing_data_fails_at_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_ade20k()
    assert list(tmp_path.iterdir()) == []

    for name, folder, script in (
        (A150_VAL, "ADEChallengeData2016/images/validation", "prepare_ade20k_150.py"),
        (A150_TRAIN, "ADEChallengeData2016/images/training", "prepare_ade20k_150.py"),
        (A847_VAL, "ADE20K_2021_17_01/images_detectron2/validation", "prepare_ade20k_full.py"),
    ):
        with pytest.raises(FileNotFoundError) as info:
            DatasetCatalog.get(name)
        assert str(tmp_path / folder) in str(info.value) and script in str(info.value)
    assert list(tmp_path.iterdir()) == []

    # Raw release present but not prepared: the missing converted labels are named.
    _make_ade150_release(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get(A150_VAL)
    assert str(tmp_path / "ADEChallengeData2016/annotations_detectron2/validation") in str(info.value)
    assert "prepare_ade20k_150.py" in str(info.value)


def test_class_name_files_and_the_847_table():
    names_150, names_847 = load_class_names("ade20k_150"), load_class_names("ade20k_847")
    assert len(names_150) == 150 == len(set(names_150))
    assert len(names_847) == 847 == len(set(names_847))
    # CAT-Seg's ade150.json, verbatim (its trailing space included).
    assert names_150[:8] == ["wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed "]
    assert names_150[-3:] == ["glass", "clock", "flag"]
    # The conversion table and the vocabulary agree position by position.
    assert [name for _, name in ADE20K_847_CLASSES] == names_847
    full_ids = [full_id for full_id, _ in ADE20K_847_CLASSES]
    assert len(set(full_ids)) == 847 and 0 < min(full_ids) and max(full_ids) <= 6655
    for full_id, train_id in KNOWN_TRAIN_IDS.items():
        assert full_ids[train_id] == full_id
    assert names_847[0] == "wall" and names_847[846] == "adding machine, totalizer, totaliser"
