"""Every benchmark of issue 3 is registered on import, with metadata, without touching the disk."""
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg_d2.data import register_all
from ovseg_d2.evaluation.suites import SUITES

SEM_SEG = {
    # name: (number of vocabulary classes, ignore label, background by threshold)
    "coco_2017_train_stuff_all_sem_seg": (171, 255, False),
    "coco_2017_test_stuff_all_sem_seg": (171, 255, False),
    "ade20k_full_sem_seg_freq_val_all": (847, 65535, False),
    "context_459_test_sem_seg": (459, 459, False),
    "ade20k_150_test_sem_seg": (150, 255, False),
    "context_59_test_sem_seg": (59, 255, False),
    "voc_2012_test_sem_seg": (20, 255, False),
    "voc_2012_test_background_sem_seg": (59, 255, False),
    "voc_2012_test_with_bg_sem_seg": (21, 255, True),
    "context_60_test_sem_seg": (60, 255, True),
    "coco_2017_test_object_sem_seg": (81, 255, True),
    "cityscapes_19_test_sem_seg": (19, 255, False),
}
OTHER = ["coco_2014_train_captions", "coco_2014_val_captions", "coco_2017_train_images", "coco_2017_val_panoptic_regions"]


@pytest.fixture()
def empty_root(tmp_path, monkeypatch):
    root = tmp_path / "no_data_here"
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_all()
    yield root
    monkeypatch.undo()
    register_all()  # back to the session's root


@pytest.mark.parametrize("name", sorted(SEM_SEG))
def test_sem_seg_benchmark_metadata(empty_root, name):
    classes, ignore, background = SEM_SEG[name]
    meta = MetadataCatalog.get(name)
    assert name in DatasetCatalog.list()
    assert len(meta.stuff_classes) == classes and meta.ignore_label == ignore
    assert meta.background_by_threshold is background and meta.evaluator_type == "ovseg_sem_seg"
    assert meta.class_names_file and meta.prepare_hint
    assert meta.image_root.startswith(str(empty_root)) and meta.sem_seg_root.startswith(str(empty_root))
    if background:
        assert meta.stuff_classes[0] == "background"
    assert not empty_root.exists()  # registration never touches the disk
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get(name)
    assert str(empty_root) in str(err.value) and "prepare" in str(err.value)
    assert not empty_root.exists()


def test_voc20b_maps_stand_ins_to_background(empty_root):
    meta = MetadataCatalog.get("voc_2012_test_background_sem_seg")
    assert len(meta.evaluation_classes) == 21 and meta.evaluation_classes[20] == "background"
    assert list(meta.prediction_to_eval_class) == list(range(20)) + [20] * 39


@pytest.mark.parametrize("name", OTHER)
def test_other_coco_sets_registered_lazily(empty_root, name):
    assert name in DatasetCatalog.list()
    with pytest.raises(FileNotFoundError):
        DatasetCatalog.get(name)
    assert not empty_root.exists()


def test_every_suite_entry_is_registered():
    for suite in SUITES.values():
        for entry in suite:
            assert entry.dataset in DatasetCatalog.list(), entry
