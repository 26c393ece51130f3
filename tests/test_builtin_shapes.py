"""The built-in ``ovseg_shapes`` set and the shared semantic-segmentation registration helper."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import json
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ovseg_d2.data import load_class_names, register_all
from ovseg_d2.data.datasets import builtin_shapes as shapes
from ovseg_d2.data.datasets.register_sem_seg import datasets_root, register_sem_seg_dataset

NUM_CLASSES = 8
IGNORE = 255


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _split_files(root: Path, split: str) -> list[Path]:
    image_dir, label_dir = shapes.shape_split_paths(root, split)
    return sorted(image_dir.iterdir()) + sorted(label_dir.iterdir())


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def generated_root(tmp_path_factory) -> Path:
    """Both splits generated once through the CLI."""
    root = tmp_path_factory.mktemp("shapes") / "ovseg_shapes"
    shapes.main(["--root", str(root)])
    return root


def test_layout_sizes_and_class_file(generated_root):
    for split, size in shapes.SPLIT_SIZES.items():
        image_dir, label_dir = shapes.shape_split_paths(generated_root, split)
        names = sorted(p.name for p in image_dir.iterdir())
        assert names == [f"{i:06d}.png" for i in range(size)]
        assert sorted(p.name for p in label_dir.iterdir()) == names
        with Image.open(image_dir / names[0]) as image:
            assert (image.mode, image.size) == ("RGB", (128, 128))
        with Image.open(label_dir / names[0]) as label:
            assert (label.mode, label.size) == ("L", (128, 128))
        marker = json.loads((generated_root / f"generation_{split}.json").read_text())
        assert marker["complete"] is True and marker["num_images"] == size
    assert shapes.SPLIT_SIZES == {"train": 240, "val": 48}
    on_disk = json.loads((generated_root / "classes.json").read_text())
    assert on_disk == load_class_names("ovseg_shapes")
    assert len(on_disk) == NUM_CLASSES == len(set(on_disk))


def test_label_values_every_class_and_ignore_band(generated_root):
    _, label_dir = shapes.shape_split_paths(generated_root, "train")
    labels = np.stack([_read(p) for p in sorted(label_dir.iterdir())])  # (N, H, W)
    assert set(np.unique(labels).tolist()) == set(range(NUM_CLASSES)) | {IGNORE}
    ignore = labels == IGNORE
    # Every image has at least one shape, hence a boundary band.
    assert ignore.any(axis=(1, 2)).all()
    assert ignore.mean() < 0.1
    # The band covers every boundary: no two 4-adjacent labelled pixels carry different classes.
    for a, b in ((labels[:, 1:, :], labels[:, :-1, :]), (labels[:, :, 1:], labels[:, :, :-1])):
        both_labelled = (a != IGNORE) & (b != IGNORE)
        assert not (both_labelled & (a != b)).any()
    # The band is thin: every ignore pixel lies within 2 px of a labelled pixel.
    labelled = np.pad(~ignore, ((0, 0), (2, 2), (2, 2)))
    near_labelled = np.lib.stride_tricks.sliding_window_view(labelled, (5, 5), axis=(1, 2)).any(axis=(-1, -2))
    assert not (ignore & ~near_labelled).any()


def test_classes_have_distinct_appearance(generated_root):
    """Per-class mean colour and colour spread differ clearly between every two classes."""
    image_dir, label_dir = shapes.shape_split_paths(generated_root, "train")
    names = sorted(p.name for p in image_dir.iterdir())[:120]
    images = np.stack([_read(image_dir / n) for n in names]).astype(np.float64)
    labels = np.stack([_read(label_dir / n) for n in names])
    features = []
    for class_id in range(NUM_CLASSES):
        pixels = images[labels == class_id]
        features.append(np.concatenate([pixels.mean(0), pixels.std(0)]))
    features = np.stack(features)
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
    assert distances[~np.eye(NUM_CLASSES, dtype=bool)].min() > 40


def test_generation_is_deterministic_and_order_independent(generated_root, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    shapes.generate_shapes_dataset(first, "val")
    shapes.generate_shapes_dataset(second, "val")
    files_first, files_second = _split_files(first, "val"), _split_files(second, "val")
    assert [p.relative_to(first) for p in files_first] == [p.relative_to(second) for p in files_second]
    for a, b in zip(files_first, files_second):
        assert a.read_bytes() == b.read_bytes(), a.name
    for a in files_first:  # the CLI run (both splits, train first) wrote the same val files
        assert a.read_bytes() == (generated_root / a.relative_to(first)).read_bytes()

    # Rendering index 5 alone, after other samples, equals index 5 of the full runs.
    shapes.render_shapes_sample("val", 7)
    for split in ("train", "val"):
        image, label = shapes.render_shapes_sample(split, 5)
        image_dir, label_dir = shapes.shape_split_paths(generated_root, split)
        np.testing.assert_array_equal(image, _read(image_dir / "000005.png"))
        np.testing.assert_array_equal(label, _read(label_dir / "000005.png"))
    assert not np.array_equal(shapes.render_shapes_sample("train", 5)[0], shapes.render_shapes_sample("val", 5)[0])
    assert shapes.seed_for("train", 5) != shapes.seed_for("val", 5)


def test_resume_regenerates_only_missing_files(tmp_path):
    root = tmp_path / "ovseg_shapes"
    shapes.generate_shapes_dataset(root, "val")
    image_dir, label_dir = shapes.shape_split_paths(root, "val")
    original = {p: p.read_bytes() for p in _split_files(root, "val")}
    user_file = image_dir / "my_notes.txt"
    user_file.write_text("keep me")

    (image_dir / "000003.png").unlink()
    (label_dir / "000010.png").unlink()
    (image_dir / "000007.png").unlink()  # as if killed mid-write: only the temp file is left
    stale_temp = image_dir / ".000007.png.x1y2z3.tmp"
    stale_temp.write_bytes(b"half a png")
    before = _mtimes(root)

    shapes.generate_shapes_dataset(root, "val")
    assert {p: p.read_bytes() for p in _split_files(root, "val") if p != user_file} == original
    assert not stale_temp.exists()
    assert user_file.read_text() == "keep me"
    after = _mtimes(root)
    rewritten = {p.relative_to(root).as_posix() for p in after if after[p] != before.get(p)}
    # Only the missing samples are rendered again (label and image together).
    assert rewritten == {
        "images/val/000003.png", "annotations_detectron2/val/000003.png",
        "images/val/000007.png", "annotations_detectron2/val/000007.png",
        "images/val/000010.png", "annotations_detectron2/val/000010.png",
    }

    # A complete set is left alone: nothing is written at all.
    shapes.generate_shapes_dataset(root, "val")
    assert _mtimes(root) == after


def test_partial_run_is_completed_and_older_set_regenerated(tmp_path):
    root = tmp_path / "ovseg_shapes"
    shapes.generate_shapes_dataset(root, "val")
    image_dir, label_dir = shapes.shape_split_paths(root, "val")
    marker_path = root / "generation_val.json"
    original = {p: p.read_bytes() for p in _split_files(root, "val")}

    # Interrupted run of the current generator: marker says incomplete, half the files missing.
    marker = json.loads(marker_path.read_text())
    marker_path.write_text(json.dumps({"fingerprint": marker["fingerprint"], "complete": False}))
    for index in range(24, 48):
        (image_dir / f"{index:06d}.png").unlink()
    shapes.generate_shapes_dataset(root, "val")
    assert {p: p.read_bytes() for p in _split_files(root, "val")} == original
    assert json.loads(marker_path.read_text())["complete"] is True

    # A set written by an older generator: every own output is replaced, leftovers removed,
    # a user's files are kept.
    marker_path.write_text(json.dumps({"fingerprint": "older-version", "complete": True}))
    (image_dir / "000000.png").write_bytes(b"old image")
    (label_dir / "000999.png").write_bytes(b"old extra label")
    (label_dir / "readme.md").write_text("mine")
    before = _mtimes(root)
    shapes.generate_shapes_dataset(root, "val")
    assert not (label_dir / "000999.png").exists()
    assert (label_dir / "readme.md").read_text() == "mine"
    assert {p: p.read_bytes() for p in _split_files(root, "val") if p.name != "readme.md"} == original
    after = _mtimes(root)
    assert all(after[p] != before[p] for p in original)
    assert json.loads(marker_path.read_text())["fingerprint"] == marker["fingerprint"]


def test_present_classes():
    label = np.array([[0, 0, 255], [3, 7, 255]], dtype=np.uint8)
    assert shapes.present_classes(label) == [0, 3, 7]
    assert shapes.present_classes(np.full((2, 2), 255, dtype=np.uint8)) == []
    assert shapes.present_classes(np.array([[65535, 4]]), ignore_label=65535) == [4]


def test_load_class_names_unknown_name_lists_available():
    with pytest.raises(FileNotFoundError, match="ovseg_shapes"):
        load_class_names("no_such_benchmark")


def test_registration_touches_no_disk_until_first_use(tmp_path, monkeypatch):
    data_root = tmp_path / "not" / "yet" / "there"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data_root))
    assert datasets_root() == data_root
    register_all()
    register_all()  # idempotent
    assert not (tmp_path / "not").exists()

    meta = MetadataCatalog.get("ovseg_shapes_val_sem_seg")
    assert meta.stuff_classes == load_class_names("ovseg_shapes")
    assert meta.ignore_label == IGNORE and meta.evaluator_type == "ovseg_sem_seg"
    assert meta.image_root == str(data_root / "ovseg_shapes" / "images" / "val")
    assert meta.sem_seg_root == str(data_root / "ovseg_shapes" / "annotations_detectron2" / "val")
    assert meta.background_by_threshold is False
    assert "builtin_shapes.py" in meta.prepare_hint

    dicts = DatasetCatalog.get("ovseg_shapes_val_sem_seg")  # generates the val split only
    assert len(dicts) == 48
    assert not (data_root / "ovseg_shapes" / "images" / "train").exists()
    assert [d["image_id"] for d in dicts] == [f"{i:06d}" for i in range(48)]
    first = dicts[0]
    assert first["file_name"] == str(data_root / "ovseg_shapes" / "images" / "val" / "000000.png")
    assert first["sem_seg_file_name"] == str(data_root / "ovseg_shapes" / "annotations_detectron2" / "val" / "000000.png")
    assert (first["height"], first["width"]) == (128, 128)
    assert json.loads((data_root / "ovseg_shapes" / "classes.json").read_text()) == meta.stuff_classes


def test_reregistration_follows_changed_datasets_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "one"))
    register_all()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "two"))
    register_all()
    assert MetadataCatalog.get("ovseg_shapes_train_sem_seg").image_root.startswith(str(tmp_path / "two"))


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _register_custom(name: str, image_root: Path, gt_root: Path) -> None:
    register_sem_seg_dataset(
        name,
        image_root=str(image_root),
        gt_root=str(gt_root),
        class_names=["a", "b"],
        ignore_label=IGNORE,
        image_ext=".jpg",
        gt_ext=".png",
        prepare_hint="python datasets/prepare_custom.py",
    )


def test_missing_folder_error_names_paths_env_and_prepare_script(tmp_path):
    image_root, gt_root = tmp_path / "custom" / "images", tmp_path / "custom" / "labels"
    _register_custom("test_custom_missing_sem_seg", image_root, gt_root)
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get("test_custom_missing_sem_seg")
    message = str(info.value)
    for expected in (str(image_root), str(gt_root), "$DETECTRON2_DATASETS", "python datasets/prepare_custom.py"):
        assert expected in message
    assert not (tmp_path / "custom").exists()

    image_root.mkdir(parents=True)
    gt_root.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no '\*\.jpg' file"):
        DatasetCatalog.get("test_custom_missing_sem_seg")


def test_image_without_label_is_reported(tmp_path):
    image_root, gt_root = tmp_path / "images", tmp_path / "labels"
    for stem in ("b", "a", "c"):
        _write_png(image_root / f"{stem}.png", np.zeros((4, 6, 3), np.uint8))
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(image_root / f"{stem}.jpg")
    _write_png(gt_root / "a.png", np.zeros((4, 6), np.uint8))
    _register_custom("test_custom_unlabelled_sem_seg", image_root, gt_root)
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get("test_custom_unlabelled_sem_seg")
    assert "2 of 3 images have no label" in str(info.value)
    assert str(gt_root / "b.png") in str(info.value) and str(gt_root / "c.png") in str(info.value)

    for stem in ("b", "c"):
        _write_png(gt_root / f"{stem}.png", np.zeros((4, 6), np.uint8))
    dicts = DatasetCatalog.get("test_custom_unlabelled_sem_seg")
    assert [d["image_id"] for d in dicts] == ["a", "b", "c"]  # sorted by stem, only *.jpg listed
    assert all((d["height"], d["width"]) == (4, 6) for d in dicts)


def test_sizes_follow_exif_orientation(tmp_path):
    """An EXIF 'rotate 90' image is listed with the size the EXIF-aware reader returns."""
    image_root, gt_root = tmp_path / "images", tmp_path / "labels"
    image_root.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(image_root / "rotated.jpg", exif=exif)
    _write_png(gt_root / "rotated.png", np.zeros((20, 10), np.uint8))
    _register_custom("test_custom_exif_sem_seg", image_root, gt_root)
    (entry,) = DatasetCatalog.get("test_custom_exif_sem_seg")
    assert (entry["height"], entry["width"]) == (20, 10)


def test_same_definition_is_skipped_and_changed_one_replaced(tmp_path):
    _register_custom("test_custom_rereg_sem_seg", tmp_path / "i", tmp_path / "l")
    _register_custom("test_custom_rereg_sem_seg", tmp_path / "i", tmp_path / "l")
    _register_custom("test_custom_rereg_sem_seg", tmp_path / "i2", tmp_path / "l")
    assert MetadataCatalog.get("test_custom_rereg_sem_seg").image_root == str(tmp_path / "i2")
    assert list(tmp_path.iterdir()) == []  # still nothing on disk
