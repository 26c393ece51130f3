"""Caption views of semantic sets: captions written from a hand-made label, and the built-in
``ovseg_shapes_*_captions`` checked against each image's label content."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import re

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg_d2.data import register_all
from ovseg_d2.data.datasets.sem_seg_captions import captions_from_label

NAMES = ["sand background", "water background", "red circle", "green triangle", "striped square", "checkered circle", "dotted square", "purple star", "apple"]


def test_captions_from_a_hand_made_label():
    label = np.zeros((10, 10), dtype=np.uint8)  # sand everywhere
    label[0:4, 0:5] = 4  # striped square, 20 px
    label[6:10, 6:10] = 2  # red circle, 16 px: just enough
    label[5, 0:3] = 7  # purple star, 3 px: a sliver, not mentioned
    label[4, :] = 255  # ignore band, never a class
    captions = captions_from_label(label, NAMES, background_class_ids=[0, 1], ignore_label=255, min_area=16)
    assert captions == [
        "a photo of a red circle and a striped square",
        "a red circle and a striped square on a sand background",
        "a sand background with a striped square and a red circle",
    ]


def test_captions_without_objects_or_without_background():
    water = np.ones((6, 6), dtype=np.uint8)
    assert captions_from_label(water, NAMES, background_class_ids=[0, 1], ignore_label=255, min_area=4) == ["a photo of a water background"]
    objects = np.array([[8, 8, 3, 3], [8, 8, 3, 3], [7, 7, 3, 3]], dtype=np.uint8)
    assert captions_from_label(objects, NAMES, background_class_ids=[0, 1], ignore_label=255, min_area=2) == [
        "a photo of a green triangle, a purple star and an apple"
    ]


@pytest.fixture(scope="module")
def registered(shapes_root):
    register_all()
    return shapes_root


def test_builtin_caption_view_matches_label_content(registered):
    from ovseg_d2.data.mappers.semantic_mapper import read_label_map

    name = "ovseg_shapes_val_captions"
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "captions" and meta.source_dataset == "ovseg_shapes_val_sem_seg"
    class_names = list(meta.stuff_classes)
    dicts = DatasetCatalog.get(name)
    images = DatasetCatalog.get("ovseg_shapes_val_sem_seg")
    assert len(dicts) == 3 * len(images)  # every image has a background and at least one shape
    assert len({d["caption_id"] for d in dicts}) == len(dicts)
    by_image = {}
    for d in dicts:
        assert set(d) >= {"file_name", "image_id", "height", "width", "caption", "caption_id"}
        by_image.setdefault(d["image_id"], []).append(d)
    assert sorted(by_image) == sorted(r["image_id"] for r in images)
    for image_id, records in by_image.items():
        label = read_label_map(records[0]["sem_seg_file_name"])
        ids, counts = np.unique(label, return_counts=True)
        shown = {class_names[i] for i, n in zip(ids, counts) if i != 255 and n >= 16}
        first, *described = [r["caption"] for r in records]
        assert first.startswith("a photo of ")
        for class_name in class_names:
            is_background = class_name.endswith("background")
            named = re.compile(rf"\b{class_name}\b")  # "checkered circle" does not name a "red circle"
            # the first caption ignores the background, the others describe it
            assert bool(named.search(first)) == (class_name in shown and not is_background), (first, shown)
            for caption in described:
                assert bool(named.search(caption)) == (class_name in shown), (caption, shown)
    # deterministic: loading again gives the same captions
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    register_all()
    assert [d["caption"] for d in DatasetCatalog.get(name)] == [d["caption"] for d in dicts]
