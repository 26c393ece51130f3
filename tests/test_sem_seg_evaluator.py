"""Tests for OpenVocabSemSegEvaluator against a slow, by-definition reference."""
import ovseg_d2  # noqa: F401  (environment remedies before torchvision / detectron2)

import json
import logging
import math
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg_d2.evaluation import (
    MIOU_DEFINITION,
    OpenVocabSemSegEvaluator,
    semseg_metrics_from_confusion,
    update_confusion_matrix,
)
from ovseg_d2.evaluation import sem_seg_evaluation as sse

IGNORE_8BIT = 255
IGNORE_16BIT = 65535


# ----------------------------------------------------------------------------- helpers
def reference_metrics(preds, gts, num_classes, ignore_label):
    """Metrics by definition, with explicit Python loops over classes and boolean masks."""
    tp = [0] * num_classes
    fp = [0] * num_classes
    fn = [0] * num_classes
    for pred, gt in zip(preds, gts):
        valid = gt != ignore_label
        for c in range(num_classes):
            p = (pred == c) & valid
            g = (gt == c) & valid
            tp[c] += int((p & g).sum())
            fp[c] += int((p & ~g).sum())
            fn[c] += int((~p & g).sum())
    iou, acc = {}, {}
    for c in range(num_classes):
        if tp[c] + fn[c] > 0:  # class has ground-truth pixels
            iou[c] = tp[c] / (tp[c] + fp[c] + fn[c])
            acc[c] = tp[c] / (tp[c] + fn[c])
    in_gt_or_pred = [c for c in range(num_classes) if tp[c] + fp[c] + fn[c] > 0]
    total = sum(tp[c] + fn[c] for c in range(num_classes))
    return {
        "mIoU": 100 * sum(iou.values()) / len(iou),
        "mIoU_d2v0.6": 100 * sum(iou.get(c, 0.0) for c in in_gt_or_pred) / len(in_gt_or_pred),
        "fwIoU": 100 * sum(iou[c] * (tp[c] + fn[c]) for c in iou) / total,
        "mACC": 100 * sum(acc.values()) / len(acc),
        "pACC": 100 * sum(tp) / total,
        "iou": iou,
        "acc": acc,
    }


def assert_matches_reference(res, ref, class_names):
    for key in ("mIoU", "mIoU_d2v0.6", "fwIoU", "mACC", "pACC"):
        assert res[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-9), key
    for c, name in enumerate(class_names):
        if c in ref["iou"]:
            assert res[f"IoU-{name}"] == pytest.approx(100 * ref["iou"][c], rel=1e-9, abs=1e-9)
            assert res[f"ACC-{name}"] == pytest.approx(100 * ref["acc"][c], rel=1e-9, abs=1e-9)
        else:
            assert math.isnan(res[f"IoU-{name}"]) and math.isnan(res[f"ACC-{name}"])


def scores_for(labels, num_channels, seed=0):
    """(C, H, W) float scores whose argmax over C is ``labels`` (noise below the one-hot margin)."""
    gen = torch.Generator().manual_seed(seed)
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    onehot = torch.nn.functional.one_hot(lab, num_channels).permute(2, 0, 1).float()
    return onehot + 0.5 * torch.rand(onehot.shape, generator=gen)


def write_label(path, array, dtype):
    Image.fromarray(np.asarray(array).astype(dtype)).save(path)
    return str(path)


@pytest.fixture
def register():
    """register(records, **metadata) -> a fresh dataset name; removed after the test."""
    names = []

    def _register(records, **metadata):
        name = f"_test_ovseg_semseg_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def make_dataset(tmp_path, register, gts, num_classes, ignore_label, dtype, ext=".png", **metadata):
    """Write label files, register them; return (dataset name, list of input dicts)."""
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir(exist_ok=True)
    inputs = []
    for i, gt in enumerate(gts):
        gt_file = write_label(gt_dir / f"img{i}{ext}", gt, dtype)
        inputs.append({"file_name": str(tmp_path / "images" / f"img{i}.jpg"), "sem_seg_file_name": gt_file,
                       "height": gt.shape[0], "width": gt.shape[1]})
    metadata.setdefault("stuff_classes", [f"class{c}" for c in range(num_classes)])
    name = register(inputs, ignore_label=ignore_label, sem_seg_root=str(gt_dir),
                    image_root=str(tmp_path / "images"), **metadata)
    return name, inputs


def run_evaluator(evaluator, inputs, preds, num_channels, batch_size=2):
    evaluator.reset()
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        outs = [{"sem_seg": scores_for(p, num_channels, seed=start + k)}
                for k, p in enumerate(preds[start:start + batch_size])]
        evaluator.process(batch, outs)
    return evaluator.evaluate()["sem_seg"]


# ----------------------------------------------------------------------------- tests
def test_hand_computed_tiny_case(tmp_path, register, caplog):
    # 2x3 image, 4 classes; class 3 is predicted once but absent from the ground truth.
    gt = np.array([[0, 0, 1], [1, 2, IGNORE_8BIT]])
    pred = np.array([[0, 1, 1], [1, 3, 0]])  # the ignore pixel's prediction (0) is not counted
    # class 0: TP 1, FN 1, FP 0 -> IoU 1/2, ACC 1/2
    # class 1: TP 2, FP 1 (gt 0), FN 0 -> IoU 2/3, ACC 1
    # class 2: TP 0, FN 1 -> IoU 0, ACC 0
    # class 3: no GT, FP 1 -> excluded from mIoU (main), counted as 0 in the v0.6 mean
    name, inputs = make_dataset(tmp_path, register, [gt], 4, IGNORE_8BIT, np.uint8,
                                class_names_file="names/tiny.json")
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    with caplog.at_level(logging.INFO, logger=sse.__name__):
        res = run_evaluator(evaluator, inputs, [pred], 4)
    assert res["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 0) / 3)  # 38.889
    assert res["mIoU_d2v0.6"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 0 + 0) / 4)  # 29.167
    assert res["mACC"] == pytest.approx(50.0)
    assert res["pACC"] == pytest.approx(60.0)  # 3 of 5 valid pixels
    assert res["fwIoU"] == pytest.approx(100 * (2 * 1 / 2 + 2 * 2 / 3 + 1 * 0) / 5)  # 46.667
    assert res["IoU-class0"] == pytest.approx(50.0)
    assert res["IoU-class1"] == pytest.approx(200 / 3)
    assert res["IoU-class2"] == 0.0 and res["ACC-class2"] == 0.0
    assert res["ACC-class1"] == pytest.approx(100.0)
    assert math.isnan(res["IoU-class3"]) and math.isnan(res["ACC-class3"])
    assert list(res)[:5] == ["mIoU", "fwIoU", "mACC", "pACC", "mIoU_d2v0.6"]
    log = " ".join(r.getMessage() for r in caplog.records)
    assert MIOU_DEFINITION in log and "names/tiny.json" in log
    # The confusion matrix itself: row = prediction, column = ground truth, ignore slot empty.
    conf = evaluator._conf_matrix
    assert conf.shape == (5, 5) and conf.sum() == 5 and conf[:, 4].sum() == 0
    assert conf[1, 0] == 1 and conf[1, 1] == 2 and conf[3, 2] == 1 and conf[0, 0] == 1


def test_random_multi_image_with_ignore_and_predicted_only_classes(tmp_path, register):
    rng = np.random.default_rng(0)
    num_classes = 12  # classes 10 and 11 never occur in the GT but are predicted
    shapes = [(17, 23), (31, 9), (8, 40), (25, 25), (5, 7)]
    gts, preds = [], []
    for h, w in shapes:
        gt = rng.integers(0, 10, size=(h, w))
        gt[rng.random((h, w)) < 0.15] = IGNORE_8BIT
        pred = np.where(rng.random((h, w)) < 0.6, np.where(gt == IGNORE_8BIT, 0, gt),
                        rng.integers(0, num_classes, size=(h, w)))
        gts.append(gt)
        preds.append(pred)
    assert any((p >= 10).any() for p in preds)
    name, inputs = make_dataset(tmp_path, register, gts, num_classes, IGNORE_8BIT, np.uint8)
    res = run_evaluator(OpenVocabSemSegEvaluator(name, distributed=False), inputs, preds, num_classes)
    ref = reference_metrics(preds, gts, num_classes, IGNORE_8BIT)
    assert_matches_reference(res, ref, MetadataCatalog.get(name).stuff_classes)
    assert res["mIoU_d2v0.6"] < res["mIoU"]  # 12 classes in the v0.6 mean, 10 in main's
    assert res["mIoU_d2v0.6"] == pytest.approx(res["mIoU"] * 10 / 12)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_labels_with_more_than_255_classes(tmp_path, register, ext):
    rng = np.random.default_rng(1)
    num_classes = 300
    gts, preds = [], []
    for h, w in [(20, 30), (16, 16)]:
        gt = rng.integers(200, num_classes, size=(h, w))  # mostly ids > 255
        gt[rng.random((h, w)) < 0.1] = IGNORE_16BIT
        pred = np.where(rng.random((h, w)) < 0.5, np.where(gt == IGNORE_16BIT, 0, gt),
                        rng.integers(0, num_classes, size=(h, w)))
        gts.append(gt)
        preds.append(pred)
    name, inputs = make_dataset(tmp_path, register, gts, num_classes, IGNORE_16BIT, np.uint16, ext=ext)
    res = run_evaluator(OpenVocabSemSegEvaluator(name, distributed=False), inputs, preds, num_classes)
    ref = reference_metrics(preds, gts, num_classes, IGNORE_16BIT)
    assert_matches_reference(res, ref, MetadataCatalog.get(name).stuff_classes)
    assert any(c > 255 for c in ref["iou"])


@pytest.mark.parametrize("source", ["argument", "metadata"])
def test_prediction_to_eval_class_mapping(tmp_path, register, source):
    rng = np.random.default_rng(2)
    mapping = [0, 1, 2, 0, 0]  # 5 predicted classes; 3 and 4 stand in for class 0 (background)
    gts = [rng.integers(0, 3, size=(12, 14)) for _ in range(3)]
    preds = [rng.integers(0, 5, size=(12, 14)) for _ in range(3)]
    extra = {"prediction_to_eval_class": mapping} if source == "metadata" else {}
    name, inputs = make_dataset(tmp_path, register, gts, 3, IGNORE_8BIT, np.uint8, **extra)
    kwargs = {"prediction_to_eval_class": mapping} if source == "argument" else {}
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False, **kwargs)
    res = run_evaluator(evaluator, inputs, preds, num_channels=5)
    mapped = [np.asarray(mapping)[p] for p in preds]
    ref = reference_metrics(mapped, gts, 3, IGNORE_8BIT)
    assert_matches_reference(res, ref, MetadataCatalog.get(name).stuff_classes)
    unmapped = reference_metrics([np.where(p > 2, 1, p) for p in preds], gts, 3, IGNORE_8BIT)
    assert res["mIoU"] != pytest.approx(unmapped["mIoU"])
    # Channel count must match the mapping.
    evaluator.reset()
    with pytest.raises(ValueError, match="4 class channels.*5 entries"):
        evaluator.process(inputs[:1], [{"sem_seg": scores_for(gts[0], 4)}])
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        OpenVocabSemSegEvaluator(name, distributed=False, prediction_to_eval_class=[0, 1, 2, 3])


def test_vocabulary_with_stand_ins_reports_evaluation_classes(tmp_path, register):
    """PAS-20b style: the vocabulary (stuff_classes) has stand-ins mapped onto the label classes."""
    rng = np.random.default_rng(3)
    gts = [rng.integers(0, 3, size=(10, 11)) for _ in range(2)]
    preds = [rng.integers(0, 5, size=(10, 11)) for _ in range(2)]
    name, inputs = make_dataset(
        tmp_path, register, gts, 3, IGNORE_8BIT, np.uint8,
        stuff_classes=["cat", "dog", "wall", "sky", "grass"],
        evaluation_classes=["cat", "dog", "background"],
        prediction_to_eval_class=[0, 1, 2, 2, 2],
    )
    res = run_evaluator(OpenVocabSemSegEvaluator(name, distributed=False), inputs, preds, num_channels=5)
    ref = reference_metrics([np.asarray([0, 1, 2, 2, 2])[p] for p in preds], gts, 3, IGNORE_8BIT)
    assert_matches_reference(res, ref, ["cat", "dog", "background"])
    assert "IoU-background" in res and "IoU-sky" not in res


def test_invalid_ground_truth_value_raises(tmp_path, register):
    gt = np.array([[0, 1, 7], [IGNORE_8BIT, 2, 9]])
    name, inputs = make_dataset(tmp_path, register, [gt], 5, IGNORE_8BIT, np.uint8)
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    with pytest.raises(ValueError) as err:
        evaluator.process(inputs, [{"sem_seg": scores_for(np.zeros_like(gt), 5)}])
    message = str(err.value)
    assert inputs[0]["sem_seg_file_name"] in message and "[7, 9]" in message
    assert "ignore label (255)" in message


def test_metric_functions_directly():
    conf = np.zeros((4, 4), dtype=np.int64)  # 3 classes + ignore slot
    pred = np.array([[0, 1, 2, 2]])
    gt = np.array([[0, 1, 1, 99]])
    update_confusion_matrix(conf, pred, gt, 3, 99)
    update_confusion_matrix(conf, pred, gt, 3, 99)  # accumulates
    assert conf[0, 0] == 2 and conf[1, 1] == 2 and conf[2, 1] == 2 and conf.sum() == 6
    res = semseg_metrics_from_confusion(conf, ["a", "b", "c"])
    assert res["IoU-a"] == 100.0 and res["IoU-b"] == 50.0 and math.isnan(res["IoU-c"])
    assert res["mIoU"] == 75.0 and res["mIoU_d2v0.6"] == 50.0 and res["pACC"] == pytest.approx(200 / 3)
    # An (N, N) matrix without the ignore slot gives the same numbers.
    no_slot = semseg_metrics_from_confusion(conf[:-1, :-1], ["a", "b", "c"])
    assert list(no_slot) == list(res)
    assert all(no_slot[k] == res[k] or (math.isnan(no_slot[k]) and math.isnan(res[k])) for k in res)
    with pytest.raises(ValueError, match="differs from ground-truth shape"):
        update_confusion_matrix(conf, pred[:, :3], gt, 3, 99)
    empty = semseg_metrics_from_confusion(np.zeros((4, 4), np.int64), ["a", "b", "c"])
    assert all(math.isnan(v) for v in empty.values())


def test_save_predictions_png_values(tmp_path, register):
    rng = np.random.default_rng(3)
    for num_classes, dtype, ignore in [(3, np.uint8, IGNORE_8BIT), (300, np.uint16, IGNORE_16BIT)]:
        case = tmp_path / f"c{num_classes}"
        case.mkdir()
        gts = [rng.integers(0, num_classes, size=(9, 11)) for _ in range(2)]
        preds = [rng.integers(0, num_classes, size=(9, 11)) for _ in range(2)]
        name, inputs = make_dataset(case, register, gts, num_classes, ignore, dtype)
        out = case / "out"
        evaluator = OpenVocabSemSegEvaluator(name, distributed=False, output_dir=str(out), save_predictions=True)
        res = run_evaluator(evaluator, inputs, preds, num_classes)
        for i, pred in enumerate(preds):
            saved = np.asarray(Image.open(out / f"img{i}.png"))
            assert saved.dtype == dtype and np.array_equal(saved, pred)
        summary = json.loads((out / sse.RESULTS_FILE_NAME).read_text())
        assert summary["sem_seg"]["mIoU"] == pytest.approx(res["mIoU"]) and summary["definition"] == MIOU_DEFINITION
        conf = np.load(out / sse.CONFUSION_FILE_NAME)
        assert conf.sum() == sum(g.size for g in gts)


def test_save_predictions_refuses_input_folders(tmp_path, register):
    gt = np.zeros((4, 4), dtype=np.int64)
    name, inputs = make_dataset(tmp_path, register, [gt], 2, IGNORE_8BIT, np.uint8)
    gt_root = MetadataCatalog.get(name).sem_seg_root
    with pytest.raises(ValueError, match="sem_seg_root"):
        OpenVocabSemSegEvaluator(name, distributed=False, output_dir=gt_root, save_predictions=True)
    with pytest.raises(ValueError, match="needs an output_dir"):
        OpenVocabSemSegEvaluator(name, distributed=False, save_predictions=True)
    # A label file living in output_dir, even if not under the registered roots, is protected too.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved_gt = write_label(elsewhere / "img0.png", gt, np.uint8)
    before = (elsewhere / "img0.png").read_bytes()
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False, output_dir=str(elsewhere), save_predictions=True)
    moved = dict(inputs[0], sem_seg_file_name=moved_gt)
    with pytest.raises(ValueError, match="could overwrite input files"):
        evaluator.process([moved], [{"sem_seg": scores_for(np.ones_like(gt), 2)}])
    assert (elsewhere / "img0.png").read_bytes() == before


def test_gt_file_fallback_via_dataset_catalog(tmp_path, register):
    gt = np.array([[0, 1], [1, 1]])
    name, inputs = make_dataset(tmp_path, register, [gt], 2, IGNORE_8BIT, np.uint8)
    stripped = [{"file_name": inputs[0]["file_name"]}]
    res = run_evaluator(OpenVocabSemSegEvaluator(name, distributed=False), stripped, [np.array([[0, 0], [1, 1]])], 2)
    assert res["IoU-class0"] == 50.0 and res["IoU-class1"] == pytest.approx(200 / 3)
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    with pytest.raises(KeyError, match="sem_seg_file_name"):
        evaluator.process([{"file_name": "unknown.jpg"}], [{"sem_seg": scores_for(gt, 2)}])


def test_distributed_gather_sums_confusion_matrices(tmp_path, register, monkeypatch):
    rng = np.random.default_rng(4)
    num_classes = 6
    gts = [rng.integers(0, num_classes, size=(10, 13)) for _ in range(4)]
    preds = [rng.integers(0, num_classes, size=(10, 13)) for _ in range(4)]
    name, inputs = make_dataset(tmp_path, register, gts, num_classes, IGNORE_8BIT, np.uint8)

    # "Rank 1" processed images 2 and 3; its matrix comes back from all_gather.
    other = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for p, g in zip(preds[2:], gts[2:]):
        update_confusion_matrix(other, p, g, num_classes, IGNORE_8BIT)
    gathered = []

    def fake_all_gather(data, group=None):
        gathered.append(data)
        return [data.copy(), other]

    monkeypatch.setattr(comm, "all_gather", fake_all_gather)
    evaluator = OpenVocabSemSegEvaluator(name, distributed=True)
    res = run_evaluator(evaluator, inputs[:2], preds[:2], num_classes)  # "rank 0" sees images 0, 1
    assert len(gathered) == 1 and isinstance(gathered[0], np.ndarray)  # only the matrix is gathered
    assert gathered[0].sum() == 2 * 10 * 13
    ref = reference_metrics(preds, gts, num_classes, IGNORE_8BIT)
    assert_matches_reference(res, ref, MetadataCatalog.get(name).stuff_classes)
    alone = reference_metrics(preds[:2], gts[:2], num_classes, IGNORE_8BIT)
    assert res["mIoU"] != pytest.approx(alone["mIoU"])

    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert evaluator.evaluate() is None


def test_configuration_errors(tmp_path, register):
    gt = np.zeros((2, 2), dtype=np.int64)
    name, inputs = make_dataset(tmp_path, register, [gt], 3, IGNORE_8BIT, np.uint8)
    with pytest.raises(ValueError, match="num_classes=4 but"):
        OpenVocabSemSegEvaluator(name, num_classes=4)
    with pytest.raises(ValueError, match="also a class id"):
        OpenVocabSemSegEvaluator(name, ignore_label=1)
    evaluator = OpenVocabSemSegEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match="2 class channels but .* 3 classes"):
        evaluator.process(inputs, [{"sem_seg": scores_for(gt, 2)}])
    with pytest.raises(ValueError, match="differs from ground-truth shape"):
        evaluator.process(inputs, [{"sem_seg": scores_for(np.zeros((3, 2), np.int64), 3)}])
