"""COCO-Stuff-171 and COCO-Object preparation from fake raw releases in the official formats.

Expected label values are computed here from the published facts, not with the package's tables:
COCO category ids 1..182 (things 1..91, stuff 92..182), eleven thing ids never annotated, raw
stuffthingmap value = id - 1, 255 unlabeled.
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
from ovseg_d2.data.datasets.coco import register_coco
from ovseg_d2.data.prepare import coco_object, coco_stuff

# ---------------------------------------------------------------- facts, written out independently
UNUSED_THING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}  # street sign, hat, shoe, ... hair brush
USED_IDS = [i for i in range(1, 183) if i not in UNUSED_THING_IDS]  # 171 ids, label = index
THING_IDS = [i for i in USED_IDS if i <= 91]  # 80 ids
UNLABELED = 255
IGNORE = 255


def expected_stuff_171(raw: np.ndarray) -> np.ndarray:
    out = np.full(raw.shape, IGNORE, np.uint8)
    for value in np.unique(raw):
        if value != UNLABELED and int(value) + 1 in USED_IDS:
            out[raw == value] = USED_IDS.index(int(value) + 1)
    return out


def expected_object(raw: np.ndarray) -> np.ndarray:
    """GroupViT's COCO-Object: things 1..80, stuff and unlabeled 0 (unused ids: ignored)."""
    out = np.full(raw.shape, IGNORE, np.uint8)
    for value in np.unique(raw):
        category_id = int(value) + 1
        if value == UNLABELED or category_id > 91:
            out[raw == value] = 0
        elif category_id in THING_IDS:
            out[raw == value] = THING_IDS.index(category_id) + 1
    return out


# ---------------------------------------------------------------- helpers
def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_jpg(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path, quality=90)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _digests(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.glob("*.png"))}


def _every_raw_value_map() -> np.ndarray:
    """14 x 14 map holding every raw value 0..181 and 255 (unlabeled) at least once."""
    values = list(range(182)) + [UNLABELED] * (14 * 14 - 182)
    return np.array(values, np.uint8).reshape(14, 14)


@pytest.fixture
def stuff_root(tmp_path):
    """coco-stuff/ with val2017 (2 maps: every value; a few in an odd size) and train2017 (1 map)."""
    root = tmp_path / "datasets"
    rng = np.random.default_rng(0)
    val_maps = {
        "000000000139": _every_raw_value_map(),
        "000000000285": rng.choice(np.array([0, 11, 90, 91, 181, 255], np.uint8), size=(9, 17)),
    }
    train_maps = {"000000000009": rng.choice(np.array([12, 89, 92, 150, 255], np.uint8), size=(6, 5))}
    for split, maps in (("val2017", val_maps), ("train2017", train_maps)):
        for stem, raw in maps.items():
            _write_png(root / "coco-stuff" / "annotations" / split / f"{stem}.png", raw)
            _write_jpg(root / "coco-stuff" / "images" / split / f"{stem}.jpg", *raw.shape)
    # mmsegmentation leaves derived files next to the raw maps; they are not raw input.
    derived = root / "coco-stuff" / "annotations" / "val2017" / "000000000139_labelTrainIds.png"
    _write_png(derived, np.zeros((3, 3), np.uint8))
    return root, val_maps, train_maps


# ---------------------------------------------------------------- COCO-Stuff-171
def test_reference_points_of_the_171_numbering():
    names = load_class_names("coco_stuff_171")
    raw = np.array([[0, 11, 12, 89, 90, 91, 181, 255]], np.uint8)
    labels = expected_stuff_171(raw)[0]
    assert labels.tolist() == [0, IGNORE, 11, 79, IGNORE, 80, 170, IGNORE]
    assert [names[i] for i in labels if i != IGNORE] == ["person", "stop sign", "toothbrush", "banner", "wood"]


def test_coco_stuff_labels_match_catseg_convention(stuff_root, monkeypatch):
    root, val_maps, train_maps = stuff_root
    raw_before = _digests(root / "coco-stuff" / "annotations")
    assert coco_stuff.main(["--root", str(root), "--workers", "2"]) == 0
    assert _digests(root / "coco-stuff" / "annotations") == raw_before  # raw release untouched

    for split, maps in (("val2017", val_maps), ("train2017", train_maps)):
        out_dir = root / "coco-stuff" / "annotations_detectron2" / split
        assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{s}.png" for s in maps)
        for stem, raw in maps.items():
            with Image.open(out_dir / f"{stem}.png") as label:
                assert label.mode == "L"
            np.testing.assert_array_equal(_read(out_dir / f"{stem}.png"), expected_stuff_171(raw))
    every = _read(root / "coco-stuff" / "annotations_detectron2" / "val2017" / "000000000139.png")
    assert set(np.unique(every).tolist()) == set(range(171)) | {IGNORE}

    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_coco()
    dicts = DatasetCatalog.get("coco_2017_test_stuff_all_sem_seg")
    assert [d["image_id"] for d in dicts] == sorted(val_maps)
    for d in dicts:
        assert (d["height"], d["width"]) == val_maps[d["image_id"]].shape
        np.testing.assert_array_equal(_read(Path(d["sem_seg_file_name"])), expected_stuff_171(val_maps[d["image_id"]]))
    train = DatasetCatalog.get("coco_2017_train_stuff_all_sem_seg")
    assert [Path(d["file_name"]).name for d in train] == ["000000000009.jpg"]
    meta = MetadataCatalog.get("coco_2017_test_stuff_all_sem_seg")
    assert (meta.ignore_label, len(meta.stuff_classes), meta.evaluator_type) == (IGNORE, 171, "ovseg_sem_seg")
    assert meta.stuff_dataset_id_to_contiguous_id[92] == 80 and meta.stuff_dataset_id_to_contiguous_id[182] == 170


def test_coco_stuff_rerun_skips_finished_files_and_redoes_missing_ones(stuff_root):
    root, _, _ = stuff_root
    assert coco_stuff.main(["--root", str(root), "--splits", "val2017", "--workers", "1"]) == 0
    out_dir = root / "coco-stuff" / "annotations_detectron2" / "val2017"
    first = _mtimes(out_dir)
    (out_dir / "000000000285.png").unlink()
    assert coco_stuff.main(["--root", str(root), "--splits", "val2017", "--workers", "1"]) == 0
    second = _mtimes(out_dir)
    assert second[out_dir / "000000000139.png"] == first[out_dir / "000000000139.png"]  # skipped
    assert (out_dir / "000000000285.png").is_file()
    assert not (root / "coco-stuff" / "annotations_detectron2" / "train2017").exists()  # split not asked for


@pytest.mark.parametrize("corruption", ["value_outside_release", "not_a_png", "rgb"])
def test_coco_stuff_corrupt_input_stops_naming_the_file(stuff_root, capsys, corruption):
    root, _, _ = stuff_root
    bad = root / "coco-stuff" / "annotations" / "val2017" / "000000000777.png"
    if corruption == "value_outside_release":
        _write_png(bad, np.array([[0, 200], [255, 5]], np.uint8))
    elif corruption == "not_a_png":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    else:
        _write_png(bad, np.zeros((4, 4, 3), np.uint8))
    assert coco_stuff.main(["--root", str(root), "--splits", "val2017", "--workers", "2"]) == 1
    message = capsys.readouterr().out
    assert str(bad) in message
    if corruption == "value_outside_release":
        assert "[200]" in message
    assert not (root / "coco-stuff" / "annotations_detectron2" / "val2017" / "000000000777.png").exists()


def test_coco_stuff_missing_raw_folder_says_what_to_download(tmp_path, capsys):
    assert coco_stuff.main(["--root", str(tmp_path), "--splits", "val2017"]) == 1
    message = capsys.readouterr().out
    assert str(tmp_path / "coco-stuff" / "annotations" / "val2017") in message
    assert "stuffthingmaps_trainval2017.zip" in message


# ---------------------------------------------------------------- COCO-Object from stuffthingmaps (published protocol)
def test_reference_points_of_the_object_numbering():
    names = load_class_names("coco_object_81")
    raw = np.array([[0, 11, 89, 90, 91, 181, 255]], np.uint8)
    labels = expected_object(raw)[0]
    assert labels.tolist() == [1, IGNORE, 80, IGNORE, 0, 0, 0]
    assert [names[i] for i in (0, 1, 80)] == ["background", "person", "toothbrush"]


def test_coco_object_from_stuffthingmaps_follows_groupvit(stuff_root, monkeypatch):
    root, val_maps, _ = stuff_root
    for stem, raw in val_maps.items():
        _write_jpg(root / "coco" / "val2017" / f"{stem}.jpg", *raw.shape)
    raw_before = _digests(root / "coco-stuff" / "annotations")
    assert coco_object.main(["--root", str(root), "--workers", "2"]) == 0
    assert _digests(root / "coco-stuff" / "annotations") == raw_before
    out_dir = root / "coco" / "annotations_detectron2" / "object_val2017"
    for stem, raw in val_maps.items():
        np.testing.assert_array_equal(_read(out_dir / f"{stem}.png"), expected_object(raw))
    every = _read(out_dir / "000000000139.png")
    assert set(np.unique(every).tolist()) == set(range(81)) | {IGNORE}  # 255 only from the 11 unused ids

    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_coco()
    dicts = DatasetCatalog.get("coco_2017_test_object_sem_seg")
    assert [d["image_id"] for d in dicts] == sorted(val_maps)
    meta = MetadataCatalog.get("coco_2017_test_object_sem_seg")
    assert meta.background_by_threshold is True and meta.stuff_classes[0] == "background"
    assert (len(meta.stuff_classes), meta.ignore_label) == (81, IGNORE)


# ---------------------------------------------------------------- COCO-Object from instances_val2017.json
H, W = 20, 24


def _centre_in_polygon(polygon: list, height: int, width: int) -> np.ndarray:
    """Even-odd rule at pixel centres (independent of pycocotools; exact for integer rectilinear polygons)."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    px, py = np.array(polygon[0::2], float), np.array(polygon[1::2], float)
    inside = np.zeros((height, width), bool)
    for i in range(len(px)):
        x0, y0, x1, y1 = px[i], py[i], px[(i + 1) % len(px)], py[(i + 1) % len(px)]
        if y0 == y1:
            continue
        crosses = (ys >= min(y0, y1)) & (ys < max(y0, y1))
        x_at = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xs < x_at)
    return inside


def _block(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[rows, cols] = True
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


def _compressed_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


PERSON, CAR, DOG, TOOTHBRUSH = 1, 3, 18, 90  # COCO category ids
PERSON_L = [2, 2, 16, 2, 16, 10, 6, 10, 6, 16, 2, 16]
PERSON_SQUARE = [18, 14, 22, 14, 22, 18, 18, 18]
DOG_SQUARE = [8, 8, 12, 8, 12, 12, 8, 12]
CAR_BAND = [0, 17, 24, 17, 24, 20, 0, 20]


def _instances_fixture(root: Path) -> dict:
    """instances_val2017.json with overlapping polygon / RLE instances and a crowd region."""
    names = load_class_names("coco_object_81")[1:]
    toothbrush = _block(slice(13, 17), slice(4, 10))
    crowd = _block(slice(0, 6), slice(14, 24))
    data = {
        "info": {"description": "fake"},
        "images": [
            {"id": 139, "file_name": "000000000139.jpg", "height": H, "width": W},
            {"id": 285, "file_name": "000000000285.jpg", "height": 8, "width": 6},  # no annotation
        ],
        "annotations": [  # JSON order != painting order
            {"id": 11, "image_id": 139, "category_id": DOG, "iscrowd": 0, "segmentation": [DOG_SQUARE], "area": 16},
            {"id": 12, "image_id": 139, "category_id": PERSON, "iscrowd": 0,
             "segmentation": [PERSON_L, PERSON_SQUARE], "area": 152},
            {"id": 13, "image_id": 139, "category_id": TOOTHBRUSH, "iscrowd": 0,
             "segmentation": _compressed_rle(toothbrush), "area": 24},
            {"id": 14, "image_id": 139, "category_id": PERSON, "iscrowd": 1,
             "segmentation": _uncompressed_rle(crowd), "area": 60},
            {"id": 15, "image_id": 139, "category_id": CAR, "iscrowd": 0, "segmentation": [CAR_BAND], "area": 72},
        ],
        "categories": [{"id": cid, "name": name, "supercategory": "x"} for cid, name in zip(THING_IDS, names)],
    }
    path = root / "coco" / "annotations" / "instances_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    for image in data["images"]:
        _write_jpg(root / "coco" / "val2017" / image["file_name"], image["height"], image["width"])
    return {"toothbrush": toothbrush, "crowd": crowd}


def _expected_instance_label(masks: dict) -> np.ndarray:
    """Crowd 255 first, then non-crowd instances largest first (pixel counts from the independent masks)."""
    person = _centre_in_polygon(PERSON_L, H, W) | _centre_in_polygon(PERSON_SQUARE, H, W)
    instances = [
        (THING_IDS.index(PERSON) + 1, person),
        (THING_IDS.index(DOG) + 1, _centre_in_polygon(DOG_SQUARE, H, W)),
        (THING_IDS.index(TOOTHBRUSH) + 1, masks["toothbrush"]),
        (THING_IDS.index(CAR) + 1, _centre_in_polygon(CAR_BAND, H, W)),
    ]
    label = np.zeros((H, W), np.uint8)
    label[masks["crowd"]] = IGNORE
    for value, mask in sorted(instances, key=lambda item: -int(item[1].sum())):
        label[mask] = value
    return label


def test_coco_object_from_instances_paints_overlaps_and_crowd(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    masks = _instances_fixture(root)
    raw_before = _digests(root / "coco")
    assert coco_object.main(["--root", str(root), "--source", "instances", "--workers", "2"]) == 0
    out_dir = root / "coco" / "annotations_detectron2" / "object_val2017"
    after = _digests(root / "coco")
    assert {p: d for p, d in after.items() if out_dir not in p.parents} == raw_before  # inputs untouched

    label = _read(out_dir / "000000000139.png")
    np.testing.assert_array_equal(label, _expected_instance_label(masks))
    person, car, dog, toothbrush = (THING_IDS.index(c) + 1 for c in (PERSON, CAR, DOG, TOOTHBRUSH))
    assert (person, car, dog, toothbrush) == (1, 3, 17, 80)
    assert label[9, 9] == dog  # small dog lies on the larger person although listed before it
    assert label[3, 15] == person  # non-crowd person wins over the crowd region
    assert label[3, 20] == IGNORE  # crowd only
    assert label[14, 4] == toothbrush  # compressed RLE, on top of the person's L
    assert label[17, 19] == car  # car (72 px) is painted after the person (152 px)
    assert label[15, 20] == person  # second polygon of the same person
    assert label[0, 0] == 0 and label[19, 0] == car
    np.testing.assert_array_equal(_read(out_dir / "000000000285.png"), np.zeros((8, 6), np.uint8))

    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_coco()
    dicts = DatasetCatalog.get("coco_2017_test_object_sem_seg")
    assert [(d["image_id"], d["height"], d["width"]) for d in dicts] == [("000000000139", H, W), ("000000000285", 8, 6)]
    np.testing.assert_array_equal(_read(Path(dicts[0]["sem_seg_file_name"])), label)

    # Re-running skips; switching source without clearing the folder is refused.
    before = _mtimes(out_dir)
    assert coco_object.main(["--root", str(root), "--source", "instances", "--workers", "1"]) == 0
    assert _mtimes(out_dir) == before


def test_coco_object_refuses_to_mix_sources(tmp_path, capsys):
    root = tmp_path / "datasets"
    _instances_fixture(root)
    _write_png(root / "coco-stuff" / "annotations" / "val2017" / "000000000139.png", np.zeros((H, W), np.uint8))
    assert coco_object.main(["--root", str(root), "--source", "instances", "--workers", "1"]) == 0
    assert coco_object.main(["--root", str(root), "--workers", "1"]) == 1
    message = capsys.readouterr().out
    assert "made from 'instances'" in message and "--source instances" in message


def test_coco_object_corrupt_annotation_is_named(tmp_path, capsys):
    root = tmp_path / "datasets"
    _instances_fixture(root)
    path = root / "coco" / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][2]["segmentation"] = {"size": [5, 5], "counts": "0"}  # RLE of another size
    path.write_text(json.dumps(data))
    assert coco_object.main(["--root", str(root), "--source", "instances", "--workers", "1"]) == 1
    message = capsys.readouterr().out
    assert str(path) in message and "annotation 13" in message and "000000000139.jpg" in message


def test_coco_object_unreadable_json_is_named(tmp_path, capsys):
    path = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"images": [')
    assert coco_object.main(["--root", str(tmp_path), "--source", "instances"]) == 1
    assert f"cannot read {path}" in capsys.readouterr().out
