"""COCO registrars: names, paths and metadata; captions, image list and panoptic regions loaded
from fake raw files in the official formats; missing data fails at first use with a clear error."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import json
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from ovseg_d2.data import load_class_names
from ovseg_d2.data.datasets.coco import register_coco
from ovseg_d2.data.datasets.coco_panoptic import panoptic_segment_masks

IGNORE = 255
SEM_SEG_SETS = {
    # name: (image folder, label folder, number of classes, class-name file)
    "coco_2017_train_stuff_all_sem_seg": (
        "coco-stuff/images/train2017", "coco-stuff/annotations_detectron2/train2017", 171, "coco_stuff_171"
    ),
    "coco_2017_test_stuff_all_sem_seg": (
        "coco-stuff/images/val2017", "coco-stuff/annotations_detectron2/val2017", 171, "coco_stuff_171"
    ),
    "coco_2017_test_object_sem_seg": ("coco/val2017", "coco/annotations_detectron2/object_val2017", 81, "coco_object_81"),
}
OTHER_SETS = {
    # name: (evaluator type, path that must be named when everything is missing)
    "coco_2014_train_captions": ("captions", "coco/annotations/captions_train2014.json"),
    "coco_2014_val_captions": ("captions", "coco/annotations/captions_val2014.json"),
    "coco_2017_train_images": ("none", "coco/annotations/instances_train2017.json"),
    "coco_2017_val_panoptic_regions": ("region_classification", "coco/annotations/panoptic_val2017.json"),
}


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty DETECTRON2_DATASETS with every COCO set registered under it."""
    path = tmp_path / "datasets"
    path.mkdir()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(path))
    register_coco()
    return path


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _write_jpg(path: Path, height: int = 4, width: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)


# ---------------------------------------------------------------- class-name files and registration
def test_shipped_class_name_files():
    stuff, objects, panoptic = map(load_class_names, ("coco_stuff_171", "coco_object_81", "coco_panoptic_133"))
    assert (len(stuff), len(objects), len(panoptic)) == (171, 81, 133)
    assert all(len(set(names)) == len(names) for names in (stuff, objects, panoptic))
    assert objects[0] == "background" and objects[1:] == stuff[:80] == panoptic[:80]
    assert (stuff[0], stuff[79], stuff[80], stuff[170]) == ("person", "toothbrush", "banner", "wood")
    assert (panoptic[80], panoptic[132]) == ("banner", "rug-merged")


def test_registration_touches_no_disk_and_sets_metadata(root):
    assert list(root.iterdir()) == []  # nothing created by registering
    for name, (images, labels, num_classes, names_file) in SEM_SEG_SETS.items():
        meta = MetadataCatalog.get(name)
        assert meta.image_root == str(root / images) and meta.sem_seg_root == str(root / labels)
        assert (meta.ignore_label, meta.evaluator_type) == (IGNORE, "ovseg_sem_seg")
        assert (meta.image_ext, meta.gt_ext) == (".jpg", ".png")
        assert len(meta.stuff_classes) == num_classes and meta.stuff_classes == load_class_names(names_file)
        assert meta.class_names_file == names_file
        assert meta.background_by_threshold is (name == "coco_2017_test_object_sem_seg")
        assert "prepare_coco" in meta.prepare_hint
    for name, (evaluator, _) in OTHER_SETS.items():
        assert name in DatasetCatalog.list() and MetadataCatalog.get(name).evaluator_type == evaluator
    assert MetadataCatalog.get("coco_2014_val_captions").image_root == str(root / "coco/val2014")
    assert MetadataCatalog.get("coco_2017_train_images").json_file == str(root / "coco/annotations/instances_train2017.json")
    panoptic = MetadataCatalog.get("coco_2017_val_panoptic_regions")
    assert panoptic.stuff_classes == panoptic.thing_classes == load_class_names("coco_panoptic_133")
    assert panoptic.class_is_thing == [True] * 80 + [False] * 53
    assert panoptic.panoptic_root == str(root / "coco/panoptic_val2017")
    register_coco()  # same definition again: a no-op
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("name", list(SEM_SEG_SETS) + list(OTHER_SETS))
def test_missing_data_fails_at_first_use_naming_paths_and_fix(root, name):
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get(name)
    message = str(info.value)
    assert f"Data set '{name}' is not ready" in message and "DETECTRON2_DATASETS" in message
    if name in SEM_SEG_SETS:
        images, labels, _, _ = SEM_SEG_SETS[name]
        assert str(root / images) in message and str(root / labels) in message
        script = "prepare_coco_object.py" if "object" in name else "prepare_coco_stuff.py"
        assert f"python datasets/{script}" in message
    else:
        assert str(root / OTHER_SETS[name][1]) in message and "http://images.cocodataset.org/" in message


# ---------------------------------------------------------------- captions
CAPTIONS = {
    57870: [(787980, "A restaurant has modern wooden tables and chairs. "), (789366, "A long restaurant table."),
            (789888, "A restaurant table with chairs."), (791316, "A dining room."), (794853, "Wooden chairs.\n")],
    384029: [(13, "A man."), (7, "A person walking."), (9, "Someone outside.")],
}


def _captions_fixture(root: Path, split: str = "val2014") -> None:
    images = [
        {"id": 384029, "file_name": f"COCO_{split}_000000384029.jpg", "height": 4, "width": 6},
        {"id": 57870, "file_name": f"COCO_{split}_000000057870.jpg", "height": 5, "width": 7},
        {"id": 1, "file_name": f"COCO_{split}_000000000001.jpg", "height": 3, "width": 3},  # no caption
    ]
    annotations = [{"image_id": i, "id": c, "caption": t} for i, caps in CAPTIONS.items() for c, t in caps]
    data = {"info": {}, "images": images, "annotations": annotations[::-1]}  # file order is not dict order
    _write_json(root / "coco/annotations" / f"captions_{split}.json", data)
    for image in images[:2]:
        _write_jpg(root / "coco" / split / image["file_name"], image["height"], image["width"])


def test_captions_one_dict_per_caption(root):
    _captions_fixture(root)
    dicts = DatasetCatalog.get("coco_2014_val_captions")
    assert len(dicts) == 8
    expected = [(57870, c, t.strip()) for c, t in sorted(CAPTIONS[57870])]
    expected += [(384029, c, t) for c, t in sorted(CAPTIONS[384029])]
    assert [(d["image_id"], d["caption_id"], d["caption"]) for d in dicts] == expected
    first = dicts[0]
    assert first == {
        "file_name": str(root / "coco/val2014/COCO_val2014_000000057870.jpg"),
        "image_id": 57870,
        "height": 5,
        "width": 7,
        "caption": "A restaurant has modern wooden tables and chairs.",
        "caption_id": 787980,
    }
    assert sum(d["image_id"] == 57870 for d in dicts) == 5
    assert {(d["height"], d["width"]) for d in dicts if d["image_id"] == 384029} == {(4, 6)}


def test_captions_missing_image_is_named(root):
    _captions_fixture(root, "train2014")
    missing = root / "coco/train2014/COCO_train2014_000000384029.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 captioned images are missing") as info:
        DatasetCatalog.get("coco_2014_train_captions")
    assert str(missing) in str(info.value)


# ---------------------------------------------------------------- train2017 image list
def test_train_image_list_reads_only_the_images_array(root):
    images = [{"id": 25, "file_name": "000000000025.jpg", "height": 4, "width": 6},
              {"id": 9, "file_name": "000000000009.jpg", "height": 5, "width": 3}]
    data = {
        "info": {"description": 'a note mentioning "images": [1, 2]'},  # escaped quotes: not a key
        "annotations": [{"id": 1, "image_id": 9, "segmentation": [[0, 0, 1, 0, 1, 1]], "category_id": 1}] * 50,
        "images": images,
        "categories": [{"id": 1, "name": "person"}],
    }
    _write_json(root / "coco/annotations/instances_train2017.json", data)
    for image in images:
        _write_jpg(root / "coco/train2017" / image["file_name"], image["height"], image["width"])
    dicts = DatasetCatalog.get("coco_2017_train_images")
    assert dicts == [
        {"file_name": str(root / "coco/train2017/000000000009.jpg"), "image_id": 9, "height": 5, "width": 3},
        {"file_name": str(root / "coco/train2017/000000000025.jpg"), "image_id": 25, "height": 4, "width": 6},
    ]


def test_train_image_list_truncated_json_is_reported(root):
    path = root / "coco/annotations/instances_train2017.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"images": [{"id": 9, "file_name": "a.jpg", "height": 1, "width": 1}], "annotations": [')
    (root / "coco/train2017").mkdir(parents=True)
    with pytest.raises(ValueError, match="cannot parse"):
        DatasetCatalog.get("coco_2017_train_images")


# ---------------------------------------------------------------- panoptic regions
def _panoptic_categories() -> list:
    """The 133 COCO panoptic categories with their real ids, taken from detectron2's own table."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{"id": c["id"], "name": c["name"], "isthing": c["isthing"], "color": c["color"]} for c in COCO_CATEGORIES]


def _to_rgb(segment_ids: np.ndarray) -> np.ndarray:
    return np.stack([segment_ids % 256, (segment_ids // 256) % 256, segment_ids // 65536], axis=-1).astype(np.uint8)


def _panoptic_fixture(root: Path) -> np.ndarray:
    """One 6 x 8 image with a person (id 1), a crowd of cars (id 300) and rug-merged stuff (id 70000)."""
    segment_ids = np.zeros((6, 8), np.int64)
    segment_ids[1:3, 2:5] = 1  # person: x 2..4, y 1..2
    segment_ids[4:6, 0:8] = 70000  # rug-merged band at the bottom
    segment_ids[0:2, 6:8] = 300  # crowd of cars
    segments = [
        {"id": 1, "category_id": 1, "iscrowd": 0, "bbox": [2, 1, 3, 2], "area": 6},
        {"id": 300, "category_id": 3, "iscrowd": 1, "bbox": [6, 0, 2, 2], "area": 4},
        {"id": 70000, "category_id": 200, "iscrowd": 0, "bbox": [0, 4, 8, 2], "area": 16},
    ]
    data = {
        "images": [{"id": 139, "file_name": "000000000139.jpg", "height": 6, "width": 8},
                   {"id": 632, "file_name": "000000000632.jpg", "height": 6, "width": 8}],
        "annotations": [{"image_id": 139, "file_name": "000000000139.png", "segments_info": segments},
                        {"image_id": 632, "file_name": "000000000632.png", "segments_info": []}],
        "categories": _panoptic_categories()[::-1],  # order in the file does not matter
    }
    _write_json(root / "coco/annotations/panoptic_val2017.json", data)
    for stem in ("000000000139", "000000000632"):
        _write_jpg(root / f"coco/val2017/{stem}.jpg", 6, 8)
    pan_dir = root / "coco/panoptic_val2017"
    pan_dir.mkdir(parents=True)
    Image.fromarray(_to_rgb(segment_ids)).save(pan_dir / "000000000139.png")
    Image.fromarray(_to_rgb(np.zeros((6, 8), np.int64))).save(pan_dir / "000000000632.png")
    return segment_ids


def test_panoptic_regions_segments_boxes_and_masks(root):
    segment_ids = _panoptic_fixture(root)
    dicts = DatasetCatalog.get("coco_2017_val_panoptic_regions")
    assert [d["image_id"] for d in dicts] == [139, 632]
    first = dicts[0]
    assert first["file_name"] == str(root / "coco/val2017/000000000139.jpg")
    assert first["pan_seg_file_name"] == str(root / "coco/panoptic_val2017/000000000139.png")
    assert (first["height"], first["width"]) == (6, 8)
    xyxy = BoxMode.XYXY_ABS
    assert first["segments_info"] == [
        {"id": 1, "category_id": 0, "isthing": True, "bbox": [2.0, 1.0, 5.0, 3.0], "bbox_mode": xyxy, "area": 6, "iscrowd": 0},
        {"id": 300, "category_id": 2, "isthing": True, "bbox": [6.0, 0.0, 8.0, 2.0], "bbox_mode": xyxy, "area": 4, "iscrowd": 1},
        {"id": 70000, "category_id": 132, "isthing": False, "bbox": [0.0, 4.0, 8.0, 6.0], "bbox_mode": xyxy, "area": 16, "iscrowd": 0},
    ]
    names = MetadataCatalog.get("coco_2017_val_panoptic_regions").stuff_classes
    assert [names[s["category_id"]] for s in first["segments_info"]] == ["person", "car", "rug-merged"]

    decoded = panoptic_segment_masks(first)
    assert decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, segment_ids)
    for segment in first["segments_info"]:
        mask = decoded == segment["id"]
        assert mask.sum() == segment["area"]
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == segment["bbox"]
    assert dicts[1]["segments_info"] == [] and not panoptic_segment_masks(dicts[1]).any()


def test_panoptic_missing_png_and_wrong_categories_are_reported(root):
    _panoptic_fixture(root)
    png = root / "coco/panoptic_val2017/000000000632.png"
    png.unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 panoptic PNGs are missing") as info:
        DatasetCatalog.get("coco_2017_val_panoptic_regions")
    assert str(png) in str(info.value)

    path = root / "coco/annotations/panoptic_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"] = data["annotations"][:1]
    next(c for c in data["categories"] if c["id"] == 92)["name"] = "flag"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"first difference at class 80.*'flag'.*'banner'"):
        DatasetCatalog.get("coco_2017_val_panoptic_regions")
    with pytest.raises(FileNotFoundError, match=str(png)):
        panoptic_segment_masks({"pan_seg_file_name": str(png)})
