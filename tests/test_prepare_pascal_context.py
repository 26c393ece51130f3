"""PASCAL Context: preparation of PC-59 / C60 / PC-459 from a fake raw release, registration, labels."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

scipy_io = pytest.importorskip("scipy.io")
from pycocotools import mask as mask_utils  # noqa: E402

from ovseg_d2.data import load_class_names  # noqa: E402
from ovseg_d2.data.datasets.pascal_context import register_pascal_context  # noqa: E402
from ovseg_d2.data.prepare import pascal_context as prepare_pc  # noqa: E402

VAL_IDS = ["2008_000002", "2008_000003", "2008_000007", "2008_000009"]
TRAIN_ID = "2008_000008"
UNLABELLED_ID = "2010_000001"  # in JPEGImages only
#: (height, width, PIL mode written to JPEG)
IMAGE_SPECS = {
    "2008_000002": (12, 15, "RGB"),
    "2008_000003": (11, 13, "L"),  # grayscale JPEG
    "2008_000007": (10, 9, "CMYK"),  # 4-channel JPEG
    "2008_000009": (6, 7, "RGB"),  # no annotation at all: everything is background
    TRAIN_ID: (8, 8, "RGB"),
    UNLABELLED_ID: (5, 5, "RGB"),
}
NAMES = {"pc59": "context_59_test_sem_seg", "pc459": "context_459_test_sem_seg", "pc60": "context_60_test_sem_seg"}
FOLDERS = {"pc59": ("pc59_val", ".png"), "pc459": ("pc459_val", ".tif"), "pc60": ("pc60_val", ".png")}
#: A PASCAL Context class outside the 59 ("accordion", id 1).
OTHER_CLASS_ID = 1


def pc59_context_ids() -> list[int]:
    """Context ids (1-based positions in the 459 list) of the PC-59 names; 'diningtable' is 'table' there."""
    pc459 = load_class_names("pascal_context_459")
    return [pc459.index("table" if n == "diningtable" else n) + 1 for n in load_class_names("pascal_context_59")]


# ----------------------------------------------------------------------------- the fake raw release
def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO run-length encoding with a list of counts: column-major runs, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def annotation_plan() -> dict[str, list[tuple[int, np.ndarray]]]:
    """Per val image, (category id, bool mask) in file order; together they touch all 59 ids."""
    ids = pc59_context_ids()
    rng = np.random.default_rng(7)
    plan = {}
    chunks = [ids[0:30], ids[30:59], [ids[5], ids[40]]]
    for image_id, chunk in zip(VAL_IDS[:3], chunks):
        height, width, _ = IMAGE_SPECS[image_id]
        # disjoint base regions: one per category, plus unannotated pixels (-1)
        base = rng.integers(-1, len(chunk), size=(height, width))
        base.flat[-len(chunk):] = np.arange(len(chunk))  # bottom rows, below the overlapping ones
        masks = [(category, base == k) for k, category in enumerate(chunk)]
        # overlapping ones painted later: a 59-class rectangle, then another class on top of part of it
        rectangle = np.zeros((height, width), bool)
        rectangle[1:5, 2:7] = True
        masks.append((ids[-1], rectangle))
        other = np.zeros((height, width), bool)
        other[3:6, 4:9] = True
        masks.append((OTHER_CLASS_ID, other))
        plan[image_id] = masks
    plan[VAL_IDS[3]] = []
    return plan


def label_map(image_id: str) -> np.ndarray:
    """A raw LabelMap (uint16, 1..459) with a 0 pixel and the extreme ids 1 and 459."""
    height, width, _ = IMAGE_SPECS[image_id]
    rng = np.random.default_rng(sum(map(ord, image_id)))
    labels = rng.integers(1, 460, size=(height, width)).astype(np.uint16)
    labels.flat[:3] = [1, 459, 0]
    return labels


def build_raw_release(root: Path) -> Path:
    context = root / "VOCdevkit" / "VOC2010"
    (context / "JPEGImages").mkdir(parents=True)
    (context / "trainval").mkdir()
    for image_id, (height, width, mode) in IMAGE_SPECS.items():
        pixels = np.random.default_rng(height * width).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(context / "JPEGImages" / f"{image_id}.jpg", quality=90)
    images, annotations = [], []
    for number, image_id in enumerate(VAL_IDS + [TRAIN_ID]):
        height, width, _ = IMAGE_SPECS[image_id]
        phase = "train" if image_id == TRAIN_ID else "val"
        images.append({"image_id": 1000 + number, "file_name": f"{image_id}.jpg", "height": height, "width": width, "phase": phase})
    plan = annotation_plan()
    plan[TRAIN_ID] = [(pc59_context_ids()[0], np.ones(IMAGE_SPECS[TRAIN_ID][:2], bool))]
    for image in images:
        stem = Path(image["file_name"]).stem
        for category, mask in plan[stem]:
            encode = uncompressed_rle if len(annotations) % 5 == 0 else compressed_rle
            annotations.append({"id": 5000 + len(annotations), "image_id": image["image_id"], "category_id": category,
                                "segmentation": encode(mask), "iscrowd": 0})
    categories = [{"category_id": i, "name": n} for i, n in enumerate(load_class_names("pascal_context_459"), 1)]
    (context / "trainval_merged.json").write_text(json.dumps(
        {"images": images, "annos_segmentation": annotations, "categories": categories}))
    for image_id in VAL_IDS + [TRAIN_ID]:
        scipy_io.savemat(context / "trainval" / f"{image_id}.mat", {"LabelMap": label_map(image_id)})
    names = load_class_names("pascal_context_459")
    lines = [f"{i}: {name}" for i, name in enumerate(names, 1)]
    lines[2] = "3: air conditioner"  # the official file may space names; compared without spaces
    (context / "labels.txt").write_text("\n".join(lines) + "\n")
    return context


def raw_files(context: Path) -> dict[Path, str]:
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in context.rglob("*")
        if p.is_file() and p.relative_to(context).parts[0] != "annotations_detectron2"
    }


# ----------------------------------------------------------------------------- expected labels (by definition)
def painted_context_ids(image_id: str) -> np.ndarray:
    height, width, _ = IMAGE_SPECS[image_id]
    canvas = np.zeros((height, width), np.int64)
    for category, mask in annotation_plan()[image_id]:
        canvas[mask] = category
    return canvas


def expected_label(benchmark: str, image_id: str) -> np.ndarray:
    if benchmark == "pc459":
        raw = label_map(image_id).astype(np.int64)
        return np.where(raw == 0, 459, raw - 1)
    ids = pc59_context_ids()
    canvas = painted_context_ids(image_id)
    out = np.full(canvas.shape, 255 if benchmark == "pc59" else 0, np.int64)
    for position, context_id in enumerate(ids):
        out[canvas == context_id] = position if benchmark == "pc59" else position + 1
    return out


def read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("context_root")
    context = build_raw_release(root)
    before = raw_files(context)
    assert prepare_pc.main(["--root", str(root)]) == 0
    return root, context, before


@pytest.fixture()
def registered(prepared, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(prepared[0]))
    register_pascal_context()
    return prepared


# ----------------------------------------------------------------------------- tests
def test_registered_sets_hold_the_val_labels_pixel_by_pixel(registered):
    _, context, _ = registered
    for benchmark, name in NAMES.items():
        dicts = DatasetCatalog.get(name)
        assert [d["image_id"] for d in dicts] == sorted(VAL_IDS)
        for record in dicts:
            image_id = record["image_id"]
            assert (record["height"], record["width"]) == IMAGE_SPECS[image_id][:2]
            assert record["file_name"] == str(context / "JPEGImages" / f"{image_id}.jpg")
            folder, ext = FOLDERS[benchmark]
            assert record["sem_seg_file_name"] == str(context / "annotations_detectron2" / folder / f"{image_id}{ext}")
            label = read(record["sem_seg_file_name"])
            assert label.dtype == (np.uint16 if benchmark == "pc459" else np.uint8)
            np.testing.assert_array_equal(label, expected_label(benchmark, image_id))


def test_labels_touch_every_class_background_and_ignore(registered):
    seen = {b: set() for b in NAMES}
    for benchmark in NAMES:
        for image_id in VAL_IDS:
            seen[benchmark] |= set(np.unique(expected_label(benchmark, image_id)).tolist())
    assert seen["pc59"] == set(range(59)) | {255}
    assert seen["pc60"] == set(range(60))
    assert {0, 458, 459} <= seen["pc459"]
    # the image without annotations is all background
    assert (expected_label("pc60", VAL_IDS[3]) == 0).all() and (expected_label("pc59", VAL_IDS[3]) == 255).all()
    # a non-59 class painted over a 59 one wins, as in the Detail API
    assert (painted_context_ids(VAL_IDS[0])[3:5, 4:7] == OTHER_CLASS_ID).all()


def test_metadata_and_class_name_files(registered):
    pc59, pc459, pc60 = (load_class_names(n) for n in ("pascal_context_59", "pascal_context_459", "pascal_context_60"))
    assert len(pc59) == len(set(pc59)) == 59 and len(pc459) == len(set(pc459)) == 459
    assert pc60[0] == "background" and len(pc60) == 60
    assert [("diningtable" if n == "table" else n) for n in pc60[1:]] == pc59  # mmseg's 'table'
    assert pc59_context_ids() == list(prepare_pc.PC59_CONTEXT_IDS)
    expected = {
        "pc59": (pc59, 255, False, "pascal_context_59.json"),
        "pc459": (pc459, 459, False, "pascal_context_459.json"),
        "pc60": (pc60, 255, True, "pascal_context_60.json"),
    }
    for benchmark, (names, ignore, by_threshold, names_file) in expected.items():
        meta = MetadataCatalog.get(NAMES[benchmark])
        assert meta.stuff_classes == names and meta.ignore_label == ignore
        assert meta.background_by_threshold is by_threshold and meta.class_names_file == names_file
        assert meta.evaluator_type == "ovseg_sem_seg" and "prepare_pascal_context.py" in meta.prepare_hint
        assert meta.sem_seg_root.endswith(f"VOCdevkit/VOC2010/annotations_detectron2/{FOLDERS[benchmark][0]}")


def test_pc459_labels_go_through_the_evaluator(registered):
    import torch

    from ovseg_d2.evaluation import OpenVocabSemSegEvaluator

    evaluator = OpenVocabSemSegEvaluator(NAMES["pc459"], distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get(NAMES["pc459"]):
        gt = torch.from_numpy(expected_label("pc459", record["image_id"]))
        perfect = torch.nn.functional.one_hot(torch.where(gt == 459, 0, gt), 459).permute(2, 0, 1).float()
        evaluator.process([record], [{"sem_seg": perfect}])
    assert evaluator.evaluate()["sem_seg"]["pACC"] == pytest.approx(100.0)


def test_raw_release_is_byte_identical(prepared):
    _, context, before = prepared
    assert raw_files(context) == before


def test_rerun_skips_finished_files_and_completes_a_deleted_one(prepared, capsys):
    root, context, before = prepared
    outputs = sorted(p for p in (context / "annotations_detectron2").rglob("*") if p.is_file())
    assert len(outputs) == 3 * len(VAL_IDS)
    mtimes = {p: p.stat().st_mtime_ns for p in outputs}
    deleted = context / "annotations_detectron2" / "pc459_val" / f"{VAL_IDS[2]}.tif"
    deleted.unlink()
    capsys.readouterr()
    assert prepare_pc.main(["--root", str(root), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "PC59/PC60 val: 0 converted, 4 already done" in out and "PC-459 val: 1 converted, 3 already done" in out
    np.testing.assert_array_equal(read(deleted), expected_label("pc459", VAL_IDS[2]))
    for path, mtime in mtimes.items():
        if path != deleted:
            assert path.stat().st_mtime_ns == mtime, path
    assert raw_files(context) == before


def corrupt_mat(context: Path) -> str:
    path = context / "trainval" / f"{VAL_IDS[1]}.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    return str(path)


def corrupt_json(context: Path) -> str:
    path = context / "trainval_merged.json"
    path.write_text(path.read_text()[:200])
    return str(path)


def corrupt_rle(context: Path) -> str:
    path = context / "trainval_merged.json"
    data = json.loads(path.read_text())
    victim = next(a for a in data["annos_segmentation"] if isinstance(a["segmentation"]["counts"], str))
    victim["segmentation"]["size"] = [3, 3]
    path.write_text(json.dumps(data))
    return f"annotation {victim['id']}"


def bad_label_value(context: Path) -> str:
    path = context / "trainval" / f"{VAL_IDS[0]}.mat"
    labels = label_map(VAL_IDS[0])
    labels[0, 0] = 460
    scipy_io.savemat(path, {"LabelMap": labels})
    return str(path)


@pytest.mark.parametrize("damage", [corrupt_mat, corrupt_json, corrupt_rle, bad_label_value])
def test_corrupt_input_stops_naming_it(tmp_path, capsys, damage):
    context = build_raw_release(tmp_path)
    expected = damage(context)
    assert prepare_pc.main(["--root", str(tmp_path), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "error:" in out and expected in out


def test_missing_mat_file_is_named(tmp_path, capsys):
    context = build_raw_release(tmp_path)
    (context / "trainval" / f"{VAL_IDS[3]}.mat").unlink()
    assert prepare_pc.main(["--root", str(tmp_path), "--benchmarks", "pc459", "--workers", "1"]) == 1
    assert str(context / "trainval" / f"{VAL_IDS[3]}.mat") in capsys.readouterr().out


def test_catseg_val_list_selects_the_pc459_images(tmp_path):
    context = build_raw_release(tmp_path)
    (context / "pascalcontext_val.txt").write_text(f"{VAL_IDS[1]}\n{VAL_IDS[3]}\n")
    assert prepare_pc.main(["--root", str(tmp_path), "--benchmarks", "pc459", "--workers", "1"]) == 0
    written = sorted(p.name for p in (context / "annotations_detectron2" / "pc459_val").iterdir())
    assert written == [f"{VAL_IDS[1]}.tif", f"{VAL_IDS[3]}.tif"]
    assert not (context / "annotations_detectron2" / "pc59_val").exists()


def test_registration_touches_no_disk_and_first_use_names_folder_and_script(tmp_path, monkeypatch):
    root = tmp_path / "empty_root"
    root.mkdir()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_pascal_context()
    assert list(root.iterdir()) == []
    for benchmark, name in NAMES.items():
        with pytest.raises(FileNotFoundError) as info:
            DatasetCatalog.get(name)
        message = str(info.value)
        assert str(root / "VOCdevkit" / "VOC2010" / "annotations_detectron2" / FOLDERS[benchmark][0]) in message
        assert "datasets/prepare_pascal_context.py" in message
    assert list(root.iterdir()) == []
