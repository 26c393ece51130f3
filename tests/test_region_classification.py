"""Region classification: the evaluator against a hand-computed case, region views of semantic
sets, the region mapper, and CLIPSelf end to end through OvsegTrainer (export hook included)."""
import glob
import os

import numpy as np
import open_clip
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg_d2.data import register_all
from ovseg_d2.data.datasets.sem_seg_regions import label_segments
from ovseg_d2.evaluation import RegionClassificationEvaluator

from .conftest import REPO_ROOT, quickstart_cfg

HAND = "test_region_classification_hand"


@pytest.fixture(scope="module")
def hand_metadata():
    if HAND not in MetadataCatalog.list():
        MetadataCatalog.get(HAND).set(stuff_classes=[f"c{i}" for i in range(6)], class_is_thing=[True, True, True, False, False, False])
    return HAND


def scores_ranking(rankings):
    """K x 6 scores whose descending order is the given class ranking per row."""
    out = torch.zeros(len(rankings), 6)
    for row, ranking in enumerate(rankings):
        for place, cls in enumerate(ranking):
            out[row, cls] = 10.0 - place
    return out


def test_evaluator_hand_computed(hand_metadata):
    evaluator = RegionClassificationEvaluator(hand_metadata, distributed=False)
    evaluator.reset()
    # image 1: segments of classes 0, 0, 4 (stuff); image 2: class 1
    rois_1 = scores_ranking([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0], [4, 0, 1, 2, 3, 5]])
    crops_1 = scores_ranking([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    rois_2 = scores_ranking([[1, 0, 2, 3, 4, 5]])
    crops_2 = scores_ranking([[0, 2, 3, 4, 5, 1]])
    inputs = [
        {"region_classes": torch.tensor([0, 0, 4]), "region_is_thing": torch.tensor([True, True, False])},
        {"region_classes": torch.tensor([1]), "region_is_thing": torch.tensor([True])},
    ]
    evaluator.process(inputs[:1], [{"region_scores": {"rois": rois_1, "crops": crops_1}}])
    evaluator.process(inputs[1:], [{"region_scores": {"rois": rois_2, "crops": crops_2}}])
    r = evaluator.evaluate()["region_classification"]
    # rois top-1: class 0 1/2, class 1 1/1, class 4 1/1; top-5: class 0's second segment ranks it last
    assert r["rois_top1_things"] == pytest.approx((50 + 100) / 2)
    assert r["rois_top1_stuff"] == pytest.approx(100)
    assert r["rois_top1_all"] == pytest.approx((50 + 100 + 100) / 3)
    assert r["rois_top5_things"] == pytest.approx((50 + 100) / 2)
    assert r["rois_top5_all"] == pytest.approx((50 + 100 + 100) / 3)
    # crops top-1: class 0 2/2, class 1 0/1, class 4 0/1; top-5: class 1 ranked last
    assert r["crops_top1_things"] == pytest.approx(50)
    assert r["crops_top1_stuff"] == pytest.approx(0)
    assert r["crops_top5_things"] == pytest.approx(50) and r["crops_top5_stuff"] == pytest.approx(100)
    # top-1 agreement rois vs crops: [0, 1, 4, 1] vs [0, 0, 0, 0]
    assert r["rois_crops_top1_agreement"] == pytest.approx(25)
    assert r["num_segments"] == 4


def test_label_segments_components_and_stuff():
    label = np.full((6, 8), 1, dtype=np.uint8)  # stuff class 1 everywhere
    label[0:2, 0:2] = 3  # thing 3, component A (4 px)
    label[4:6, 5:8] = 3  # thing 3, component B (6 px)
    label[3, 0] = 3  # thing 3, a 1-px sliver (dropped at min_area 2)
    label[2, :] = 255  # ignore row
    segment_map, segments = label_segments(label, thing_class_ids=[3], ignore_label=255, min_area=2)
    assert [(s["category_id"], s["isthing"], s["area"]) for s in segments] == [(1, False, 48 - 8 - 4 - 6 - 1), (3, True, 4), (3, True, 6)]
    assert segments[0]["bbox"] == [0.0, 0.0, 8.0, 6.0]
    assert segments[1]["bbox"] == [0.0, 0.0, 2.0, 2.0] and segments[2]["bbox"] == [5.0, 4.0, 8.0, 6.0]
    assert (segment_map == 3).sum() == 6 and segment_map[3, 0] == 0 and (segment_map[2] == 0).all()


@pytest.fixture(scope="module")
def registered(shapes_root):
    register_all()
    return shapes_root


def test_shapes_region_view_and_mapper(registered):
    from ovseg_d2.data.mappers import RegionClassificationDatasetMapper
    from ovseg_d2.data.mappers.semantic_mapper import read_label_map

    meta = MetadataCatalog.get("ovseg_shapes_val_regions")
    assert meta.evaluator_type == "region_classification" and len(meta.stuff_classes) == 8
    assert meta.class_is_thing == [False, False] + [True] * 6
    record = DatasetCatalog.get("ovseg_shapes_val_regions")[0]
    cfg = quickstart_cfg("configs/quickstart/clipself_tiny.yaml", "MODEL.CLIPSELF.STUDENT_SIZE", "64")
    out = RegionClassificationDatasetMapper(cfg, "ovseg_shapes_val_regions")(record)
    label = read_label_map(record["sem_seg_file_name"])
    assert out["image"].shape == (3, 64, 64) and out["content_size"] == (64, 64)
    assert len(out["region_classes"]) == len(record["segments_info"])
    for i, segment in enumerate(record["segments_info"]):
        mask = out["segment_map"].numpy() == i
        assert mask.sum() == segment["area"] and (label[mask] == segment["category_id"]).all()
        ys, xs = np.nonzero(mask)
        np.testing.assert_allclose(out["region_boxes"][i].numpy(), np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) * 0.5)
        assert bool(out["region_is_thing"][i]) == (segment["category_id"] >= 2)


def test_clipself_trains_exports_and_evaluates(registered, tmp_path):
    from ovseg_d2.engine import OvsegTrainer

    cfg = quickstart_cfg(
        "configs/quickstart/clipself_tiny.yaml",
        "OUTPUT_DIR", str(tmp_path),
        "MODEL.CLIPSELF.STUDENT_SIZE", "64",
        "MODEL.CLIPSELF.MAX_REGIONS", "2",
        "MODEL.CLIPSELF.EXPORT_PERIOD", "2",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "3",
        "SOLVER.WARMUP_ITERS", "0",
        "DATALOADER.NUM_WORKERS", "0",
        "TEST.EVAL_BEFORE_TRAIN", "False",
    )
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    metrics = results["region_classification"]
    for mode in ("rois", "maskpool", "crops"):
        for group in ("things", "stuff", "all"):
            for k in (1, 5):
                assert 0.0 <= metrics[f"{mode}_top{k}_{group}"] <= 100.0
    exports = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "clip_export_*.pt")))
    assert exports == ["clip_export_0000002.pt", "clip_export_final.pt"]
    state = torch.load(tmp_path / "clip_export_final.pt", weights_only=True)
    want = trainer.model.export_state_dict(0.7)
    assert set(state) == set(want) and all(torch.equal(state[k], want[k]) for k in want)
    open_clip.create_model("ovseg-tiny-vit8", pretrained=str(tmp_path / "clip_export_final.pt"), weights_only=True)

    # tools/export_clip.py from the detectron2 checkpoint gives the same file
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_clip", os.path.join(REPO_ROOT, "tools", "export_clip.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.build_parser().parse_args(
        ["--config-file", os.path.join(REPO_ROOT, "configs/quickstart/clipself_tiny.yaml"), "--weights", str(tmp_path / "model_final.pth"),
         "--output", str(tmp_path / "tool.pt"), "MODEL.CLIPSELF.STUDENT_SIZE", "64"]
    )
    exported = tool.export(args)
    assert all(torch.equal(exported[k], state[k]) for k in state)
