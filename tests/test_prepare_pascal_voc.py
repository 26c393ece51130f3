"""PASCAL VOC 2012: preparation from a fake raw release, registration, label conventions, PAS-20b mapping."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from ovseg_d2.data import load_class_names
from ovseg_d2.data.datasets.pascal_voc import register_pascal_voc
from ovseg_d2.data.prepare import pascal_voc as prepare_voc

VAL_IDS = ["2007_000032", "2007_000033", "2007_000039"]
TRAIN_IDS = ["2008_000008", "2008_000015"]
#: In JPEGImages without any label: must not appear in a registered set.
UNLABELLED_ID = "2009_000001"
#: (height, width, PIL mode written to JPEG) per image.
IMAGE_SPECS = {
    "2007_000032": (12, 16, "RGB"),
    "2007_000033": (10, 14, "L"),  # grayscale JPEG
    "2007_000039": (9, 11, "CMYK"),  # 4-channel JPEG
    "2008_000008": (8, 8, "RGB"),
    "2008_000015": (7, 9, "L"),
    UNLABELLED_ID: (6, 6, "RGB"),
}
RAW_VALUES = list(range(21)) + [255]
NAMES = {
    "pas20": "voc_2012_test_sem_seg",
    "pas20b": "voc_2012_test_background_sem_seg",
    "v21": "voc_2012_test_with_bg_sem_seg",
}


# ----------------------------------------------------------------------------- the fake raw release
def voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved), 256 x RGB, as in the official palette PNGs."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def raw_label(image_id: str) -> np.ndarray:
    """A label touching many values; the first val label holds every value 0..20 and 255."""
    height, width, _ = IMAGE_SPECS[image_id]
    rng = np.random.default_rng(sum(map(ord, image_id)))
    label = rng.choice(RAW_VALUES, size=(height, width)).astype(np.uint8)
    if image_id == VAL_IDS[0]:
        label.flat[: len(RAW_VALUES)] = RAW_VALUES
    return label


def build_raw_release(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClassAug").mkdir()
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for image_id, (height, width, mode) in IMAGE_SPECS.items():
        rng = np.random.default_rng(len(image_id) + height)
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
    for image_id in VAL_IDS + TRAIN_IDS:
        values = raw_label(image_id)
        label = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
        label.putpalette(voc_palette())
        label.save(voc / "SegmentationClassAug" / f"{image_id}.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VAL_IDS) + "\n")
    return voc


def raw_files(voc: Path) -> dict[Path, str]:
    """sha256 of every raw file (everything but our output folders)."""
    outputs = ("annotations_detectron2",)
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in voc.rglob("*")
        if p.is_file() and not p.relative_to(voc).parts[0].startswith(outputs)
    }


# ----------------------------------------------------------------------------- expected labels (by definition)
def expected_pas20(raw):
    return np.where((raw == 0) | (raw == 255), 255, raw.astype(np.int64) - 1)


def expected_pas20b(raw):
    return np.where(raw == 0, 20, np.where(raw == 255, 255, raw.astype(np.int64) - 1))


def expected_v21(raw):
    return raw.astype(np.int64)


EXPECTED = {"pas20": expected_pas20, "pas20b": expected_pas20b, "v21": expected_v21}
FOLDERS = {"pas20": "annotations_detectron2", "pas20b": "annotations_detectron2_bg", "v21": "annotations_detectron2_with_bg"}


def read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A fake raw release converted once with the default (all-core) settings."""
    root = tmp_path_factory.mktemp("voc_root")
    voc = build_raw_release(root)
    before = raw_files(voc)
    assert prepare_voc.main(["--root", str(root)]) == 0
    return root, voc, before


@pytest.fixture()
def registered(prepared, monkeypatch):
    root, _, _ = prepared
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_pascal_voc()
    return prepared


# ----------------------------------------------------------------------------- tests
def test_registered_sets_hold_the_val_labels_pixel_by_pixel(registered):
    _, voc, _ = registered
    for key, name in NAMES.items():
        dicts = DatasetCatalog.get(name)
        assert [d["image_id"] for d in dicts] == sorted(VAL_IDS)  # not the unlabelled or train images
        for record in dicts:
            height, width, _ = IMAGE_SPECS[record["image_id"]]
            assert (record["height"], record["width"]) == (height, width)
            assert record["file_name"] == str(voc / "JPEGImages" / f"{record['image_id']}.jpg")
            # grayscale and CMYK JPEGs reach the model as RGB of the label's size
            assert read_image(record["file_name"], format="RGB").shape == (height, width, 3)
            label_path = Path(record["sem_seg_file_name"])
            assert label_path == voc / FOLDERS[key] / "val" / f"{record['image_id']}.png"
            with Image.open(label_path) as image:
                assert image.mode == "L"
            np.testing.assert_array_equal(read(label_path), EXPECTED[key](raw_label(record["image_id"])))
    # the first val label touches every raw value, so every output value is checked
    first = raw_label(VAL_IDS[0])
    assert set(np.unique(expected_pas20(first))) == set(range(20)) | {255}
    assert set(np.unique(expected_pas20b(first))) == set(range(21)) | {255}


def test_train_split_is_every_other_augmented_label(prepared):
    _, voc, _ = prepared
    for key, folder in FOLDERS.items():
        train = voc / folder / "train"
        assert sorted(p.stem for p in train.iterdir()) == sorted(TRAIN_IDS)
        for image_id in TRAIN_IDS:
            np.testing.assert_array_equal(read(train / f"{image_id}.png"), EXPECTED[key](raw_label(image_id)))


def test_metadata(registered):
    voc20 = load_class_names("pascal_voc_20")
    for key, name in NAMES.items():
        meta = MetadataCatalog.get(name)
        assert meta.ignore_label == 255 and meta.evaluator_type == "ovseg_sem_seg"
        assert "prepare_pascal_voc.py" in meta.prepare_hint
        assert meta.image_root.endswith("VOCdevkit/VOC2012/JPEGImages")
        assert meta.sem_seg_root.endswith(f"VOCdevkit/VOC2012/{FOLDERS[key]}/val")
    pas20 = MetadataCatalog.get(NAMES["pas20"])
    assert pas20.stuff_classes == voc20 and not pas20.background_by_threshold
    assert pas20.class_names_file == "pascal_voc_20.json"
    pas20b = MetadataCatalog.get(NAMES["pas20b"])
    assert len(pas20b.stuff_classes) == 59 and pas20b.stuff_classes[:20] == voc20
    assert pas20b.evaluation_classes == voc20 + ["background"]
    assert pas20b.prediction_to_eval_class == list(range(20)) + [20] * 39
    assert not pas20b.background_by_threshold
    v21 = MetadataCatalog.get(NAMES["v21"])
    assert v21.stuff_classes == ["background"] + voc20 and v21.background_by_threshold is True


def test_class_name_files():
    voc20 = load_class_names("pascal_voc_20")
    vocabulary = load_class_names("pascal_voc_20b")
    pc59 = load_class_names("pascal_context_59")
    assert len(voc20) == len(set(voc20)) == 20
    assert len(vocabulary) == len(set(vocabulary)) == 59 == 20 + 39
    assert vocabulary[:20] == voc20
    assert set(vocabulary[20:]) == set(pc59) - set(voc20) and len(vocabulary[20:]) == 39
    assert load_class_names("pascal_voc_20b_eval") == voc20 + ["background"]
    assert load_class_names("pascal_voc_21") == ["background"] + voc20


def test_raw_release_is_byte_identical(prepared):
    _, voc, before = prepared
    assert raw_files(voc) == before


def test_rerun_skips_finished_files_and_completes_a_deleted_one(prepared, capsys):
    root, voc, before = prepared
    outputs = sorted(p for folder in FOLDERS.values() for p in (voc / folder).rglob("*.png"))
    assert len(outputs) == 3 * (len(VAL_IDS) + len(TRAIN_IDS))
    mtimes = {p: p.stat().st_mtime_ns for p in outputs}
    deleted = voc / "annotations_detectron2_with_bg" / "val" / f"{VAL_IDS[1]}.png"
    deleted.unlink()
    capsys.readouterr()
    assert prepare_voc.main(["--root", str(root), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "val: 1 converted, 2 already done" in out and "train: 0 converted, 2 already done" in out
    np.testing.assert_array_equal(read(deleted), raw_label(VAL_IDS[1]))
    for path, mtime in mtimes.items():
        if path != deleted:
            assert path.stat().st_mtime_ns == mtime, path
    assert raw_files(voc) == before


@pytest.mark.parametrize("damage", ["garbage_bytes", "bad_value", "wrong_size"])
def test_corrupt_input_stops_naming_the_file(tmp_path, capsys, damage):
    voc = build_raw_release(tmp_path)
    victim = voc / "SegmentationClassAug" / f"{VAL_IDS[2]}.png"
    if damage == "garbage_bytes":
        victim.write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
        expected = str(victim)
    elif damage == "bad_value":
        label = raw_label(VAL_IDS[2])
        label[0, 0] = 37
        Image.fromarray(label).save(victim)
        expected = str(victim)
    else:
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(victim)
        expected = str(voc / "JPEGImages" / f"{VAL_IDS[2]}.jpg")
    assert prepare_voc.main(["--root", str(tmp_path), "--splits", "val", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "error:" in out and expected in out
    if damage == "bad_value":
        assert "[37]" in out
    # the other images were converted and are kept for the re-run
    assert (voc / "annotations_detectron2" / "val" / f"{VAL_IDS[0]}.png").is_file()
    assert not (voc / "annotations_detectron2" / "val" / f"{VAL_IDS[2]}.png").exists()


def test_missing_raw_release_names_what_to_download(tmp_path, capsys):
    assert prepare_voc.main(["--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert str(tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages") in out and "VOCtrainval_11-May-2012.tar" in out


def test_registration_touches_no_disk_and_first_use_names_folder_and_script(tmp_path, monkeypatch):
    root = tmp_path / "empty_root"
    root.mkdir()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_pascal_voc()
    assert list(root.iterdir()) == []
    for key, name in NAMES.items():
        with pytest.raises(FileNotFoundError) as info:
            DatasetCatalog.get(name)
        message = str(info.value)
        assert str(root / "VOCdevkit" / "VOC2012" / FOLDERS[key] / "val") in message
        assert "datasets/prepare_pascal_voc.py" in message
    assert list(root.iterdir()) == []


# ----------------------------------------------------------------------------- PAS-20b through the evaluator
def pas20b_predictions(dicts, seed=0):
    """Per image: vocabulary ids (0..58) right on ~half the pixels (background as a random stand-in)."""
    rng = np.random.default_rng(seed)
    predictions = []
    for record in dicts:
        gt = read(record["sem_seg_file_name"]).astype(np.int64)
        correct = np.where(gt == 20, rng.integers(20, 59, size=gt.shape), np.where(gt == 255, 0, gt))
        predictions.append(np.where(rng.random(gt.shape) < 0.5, correct, rng.integers(0, 59, size=gt.shape)))
    return predictions


def reference_pas20b_miou(dicts, predictions):
    """mIoU over the 21 evaluation classes with ground truth, stand-ins counted as background."""
    tp, fp, fn = np.zeros(21), np.zeros(21), np.zeros(21)
    for record, vocab_pred in zip(dicts, predictions):
        gt = read(record["sem_seg_file_name"]).astype(np.int64)
        pred = np.minimum(vocab_pred, 20)  # CAT-Seg's VOCbEvaluator: pred[pred >= 20] = 20
        valid = gt != 255
        for c in range(21):
            tp[c] += ((pred == c) & (gt == c) & valid).sum()
            fp[c] += ((pred == c) & (gt != c) & valid).sum()
            fn[c] += ((pred != c) & (gt == c) & valid).sum()
    has_gt = (tp + fn) > 0
    iou = tp[has_gt] / (tp + fp + fn)[has_gt]
    return 100 * iou.mean(), {c: 100 * tp[c] / (tp[c] + fp[c] + fn[c]) for c in range(21) if has_gt[c]}


def evaluate_pas20b(dicts, predictions):
    from ovseg_d2.evaluation import OpenVocabSemSegEvaluator

    evaluator = OpenVocabSemSegEvaluator(NAMES["pas20b"], distributed=False)
    evaluator.reset()
    for record, pred in zip(dicts, predictions):
        scores = torch.nn.functional.one_hot(torch.from_numpy(pred), 59).permute(2, 0, 1).float()
        evaluator.process([record], [{"sem_seg": scores}])
    return evaluator, evaluator.evaluate()["sem_seg"]


def test_pas20b_stand_ins_count_as_background_in_the_evaluator(registered):
    dicts = DatasetCatalog.get(NAMES["pas20b"])
    predictions = pas20b_predictions(dicts)
    assert any((p >= 20).any() for p in predictions) and any((p < 20).any() for p in predictions)
    _, result = evaluate_pas20b(dicts, predictions)
    expected_miou, _ = reference_pas20b_miou(dicts, predictions)
    assert result["mIoU"] == pytest.approx(expected_miou, abs=1e-9)
    assert 5 < expected_miou < 95  # a real mixture of right and wrong pixels


def test_pas20b_reports_the_21_evaluation_classes(registered):
    dicts = DatasetCatalog.get(NAMES["pas20b"])
    predictions = pas20b_predictions(dicts, seed=1)
    evaluator, result = evaluate_pas20b(dicts, predictions)
    if "IoU-background" not in result:
        pytest.skip("the evaluator does not read the metadata key 'evaluation_classes' yet (it reports "
                    "len(stuff_classes) = 59 classes, so id 20 is named after the vocabulary's 'bag')")
    _, per_class = reference_pas20b_miou(dicts, predictions)
    names = load_class_names("pascal_voc_20b_eval")
    assert sorted(k for k in result if k.startswith("IoU-")) == sorted(f"IoU-{n}" for n in names)
    for c, name in enumerate(names):
        if c in per_class:
            assert result[f"IoU-{name}"] == pytest.approx(per_class[c], abs=1e-9)
        else:
            assert math.isnan(result[f"IoU-{name}"])


def test_a_label_without_its_image_is_named_at_first_use(tmp_path, monkeypatch):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    labels = voc / "annotations_detectron2" / "val"
    labels.mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(labels / "2007_000032.png")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_pascal_voc()
    with pytest.raises(FileNotFoundError, match="1 of 1 label files have no image") as info:
        DatasetCatalog.get(NAMES["pas20"])
    assert str(voc / "JPEGImages" / "2007_000032.jpg") in str(info.value)
