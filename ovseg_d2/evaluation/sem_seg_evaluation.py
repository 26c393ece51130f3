"""Open-vocabulary semantic-segmentation evaluator (a detectron2 ``DatasetEvaluator``).

Metric definition (pinned, see ``shared/spec/datasets-and-evaluation.md``, "mIoU semantics"):

* **mIoU** averages per-class IoU = TP / (TP + FP + FN) over the classes that have
  ground-truth pixels only. This is detectron2 *main*'s definition (since mid-2022), the one
  behind every published CAT-Seg / SED / FC-CLIP number. A class that is predicted but absent
  from the ground truth is excluded from the mean (its false positives still lower the IoU of
  the ground-truth classes they were taken from).
* **mIoU_d2v0.6** is a secondary figure: detectron2 v0.6's (the PyPI/registry release)
  definition, which averages over the classes that appear in the ground truth OR in the
  prediction; predicted-only classes count with IoU 0, so it is never higher than mIoU.
* **fwIoU** weights per-class IoU by ground-truth pixel frequency; **mACC** averages per-class
  accuracy TP / (TP + FN) over classes with ground-truth pixels; **pACC** = correct / valid
  pixels. All values are percentages (x100), as in detectron2.

Per-class entries ``IoU-<name>`` / ``ACC-<name>`` are returned for *every* class (so the key set
does not depend on the data); classes without ground-truth pixels have the value NaN, exactly
like detectron2 main.

Accumulation keeps one (N+1) x (N+1) int64 confusion matrix in detectron2's layout: row =
predicted class, column = ground-truth class, index N is the "ignore" slot. Ground-truth ignore
pixels are dropped before counting, so row/column N stay zero here; the slot is kept so that
matrices from detectron2's ``SemSegEvaluator`` and from this evaluator are interchangeable in
:func:`semseg_metrics_from_confusion`. Each image costs one ``np.bincount``; predictions are never
held in memory (saved PNGs are written immediately), and distributed evaluation gathers only the
confusion matrices.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager

__all__ = [
    "OpenVocabSemSegEvaluator",
    "semseg_metrics_from_confusion",
    "update_confusion_matrix",
    "read_sem_seg_label",
    "MIOU_DEFINITION",
]

logger = logging.getLogger(__name__)

#: Stated in the log line of every result, so numbers can be compared across papers.
MIOU_DEFINITION = (
    "mIoU averages IoU over classes with ground-truth pixels (detectron2 main); "
    "mIoU_d2v0.6 over classes in GT or prediction"
)
#: Metrics are reported in percent, like detectron2.
PERCENT = 100.0
#: Saved prediction PNGs are 8-bit only up to this many classes (ids 0..254); beyond it they
#: are 16-bit. 255 itself is kept out of 8-bit files because it is the usual ignore value.
MAX_CLASSES_FOR_UINT8_PNG = 255
#: How many offending label values an error message lists before eliding the rest.
MAX_VALUES_IN_ERROR = 10
#: File names written by :meth:`OpenVocabSemSegEvaluator.evaluate` into ``output_dir``.
RESULTS_FILE_NAME = "sem_seg_evaluation.json"
CONFUSION_FILE_NAME = "sem_seg_confusion.npy"


def _format_values(values: np.ndarray) -> str:
    """Short, readable list of (sorted, unique) label values for error messages."""
    values = np.unique(values)
    shown = ", ".join(str(int(v)) for v in values[:MAX_VALUES_IN_ERROR])
    if values.size > MAX_VALUES_IN_ERROR:
        shown += f", ... ({values.size} distinct values)"
    return f"[{shown}]"


def read_sem_seg_label(path: str) -> np.ndarray:
    """Read a single-channel label file (8/16-bit PNG, 16-bit TIFF, ...) into an int64 array.

    Args:
        path: label file; pixel value = class id or the ignore value.
    Returns:
        (H, W) int64 array. The file's native dtype (uint8 / uint16 / int32) is widened to int64
        before anything else, so 16-bit ids and an ignore value of 65535 never overflow.
    """
    with PathManager.open(path, "rb") as f:
        with Image.open(f) as img:
            label = np.asarray(img)
    if label.ndim != 2:
        raise ValueError(
            f"Ground-truth label file {path} has shape {label.shape} (PIL mode of a "
            f"{label.ndim}-D image); expected a single-channel (H, W) image whose pixel values "
            "are class ids. Convert it with the dataset's prepare script."
        )
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_):
        raise ValueError(
            f"Ground-truth label file {path} holds {label.dtype} pixels; expected integer class "
            "ids (8-bit or 16-bit PNG, or 16-bit TIFF)."
        )
    return label.astype(np.int64)


def update_confusion_matrix(
    conf: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    ignore_label: Optional[int],
    *,
    source: Optional[str] = None,
) -> np.ndarray:
    """Add one image's pixel counts to a confusion matrix, in place, with one ``np.bincount``.

    Args:
        conf: (N+1, N+1) int64 matrix, N = ``num_classes``; ``conf[p, g]`` counts pixels predicted
            ``p`` whose ground truth is ``g`` (detectron2's layout). Updated in place.
        pred: (H, W) integer array of predicted evaluation class ids in [0, N).
        gt: (H, W) integer array of ground-truth ids in [0, N) or ``ignore_label``.
        num_classes: N.
        ignore_label: ground-truth value whose pixels are dropped (None: no ignore value).
        source: name of the ground truth (e.g. its file) used in error messages.
    Returns:
        ``conf`` (the same object), for chaining.
    Raises:
        ValueError: shapes differ, or ``gt`` / ``pred`` hold ids outside [0, N) that are not
            the ignore value (a wrong ``ignore_label`` or a label file of another dataset).
    """
    source = source or "the ground-truth array"
    n_bins = num_classes + 1
    if conf.shape != (n_bins, n_bins):
        raise ValueError(
            f"Confusion matrix has shape {conf.shape}; expected ({n_bins}, {n_bins}) for "
            f"{num_classes} classes (one extra row/column for the ignore slot)."
        )
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"Prediction shape {pred.shape} differs from ground-truth shape {gt.shape} of "
            f"{source}. The model must return sem_seg at the original image resolution "
            "(the dataset dict's height/width)."
        )
    pred = pred.reshape(-1)
    gt = gt.reshape(-1)
    if ignore_label is not None:
        keep = gt != ignore_label
        if not keep.all():
            pred = pred[keep]
            gt = gt[keep]
    if gt.size == 0:
        return conf
    if gt.min() < 0 or gt.max() >= num_classes:
        bad = gt[(gt < 0) | (gt >= num_classes)]
        raise ValueError(
            f"Ground truth {source} contains label values {_format_values(bad)} outside "
            f"[0, {num_classes}) that are not the ignore label ({ignore_label}). Check that the "
            "dataset's metadata (stuff_classes, ignore_label) matches its label files, or "
            "re-run its prepare script."
        )
    if pred.min() < 0 or pred.max() >= num_classes:
        bad = pred[(pred < 0) | (pred >= num_classes)]
        raise ValueError(
            f"Prediction for {source} contains class ids {_format_values(bad)} outside "
            f"[0, {num_classes}). The number of predicted classes must equal the number of "
            "evaluation classes, or prediction_to_eval_class must map them."
        )
    index = pred.astype(np.int64, copy=True)
    index *= n_bins
    index += gt
    conf += np.bincount(index, minlength=n_bins * n_bins).reshape(n_bins, n_bins)
    return conf


def _unique_keys(class_names: Sequence[str]) -> List[str]:
    """Class names usable as dict-key suffixes: a repeated name gets its class id appended."""
    counts: Dict[str, int] = {}
    for name in class_names:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} (id {i})" for i, name in enumerate(class_names)]


def semseg_metrics_from_confusion(conf: np.ndarray, class_names: Sequence[str]) -> Dict[str, float]:
    """mIoU / fwIoU / mACC / pACC / mIoU_d2v0.6 and per-class IoU/ACC from a confusion matrix.

    Args:
        conf: (N+1, N+1) matrix in detectron2's layout (row = prediction, column = ground truth,
            last row/column = ignore slot, not counted) or an (N, N) matrix without that slot.
        class_names: N names; they name the per-class entries.
    Returns:
        Ordered dict, values in percent: ``mIoU`` (mean IoU over classes with ground-truth
        pixels, detectron2 main), ``fwIoU``, ``mACC``, ``pACC``, ``mIoU_d2v0.6`` (mean over
        classes in ground truth or prediction, detectron2 v0.6), then ``IoU-<name>`` and
        ``ACC-<name>`` for every class (NaN for classes without ground-truth pixels). With no
        valid pixel at all every value is NaN.
    """
    num_classes = len(class_names)
    conf = np.asarray(conf)
    if conf.shape == (num_classes + 1, num_classes + 1):
        conf = conf[:-1, :-1]
    elif conf.shape != (num_classes, num_classes):
        raise ValueError(
            f"Confusion matrix of shape {conf.shape} does not fit {num_classes} class names; "
            f"expected ({num_classes + 1}, {num_classes + 1}) or ({num_classes}, {num_classes})."
        )
    conf = conf.astype(np.float64)
    tp = np.diagonal(conf)
    pos_gt = conf.sum(axis=0)  # TP + FN per ground-truth class
    pos_pred = conf.sum(axis=1)  # TP + FP per predicted class
    union = pos_gt + pos_pred - tp  # TP + FP + FN
    total = pos_gt.sum()

    has_gt = pos_gt > 0
    in_gt_or_pred = union > 0
    iou = np.full(num_classes, np.nan)
    acc = np.full(num_classes, np.nan)
    iou[has_gt] = tp[has_gt] / union[has_gt]
    acc[has_gt] = tp[has_gt] / pos_gt[has_gt]

    def _mean(values: np.ndarray, count: int) -> float:
        return float(values.sum() / count) if count > 0 else float("nan")

    n_gt = int(has_gt.sum())
    res: Dict[str, float] = OrderedDict()
    res["mIoU"] = PERCENT * _mean(iou[has_gt], n_gt)
    res["fwIoU"] = PERCENT * (float((iou[has_gt] * pos_gt[has_gt]).sum() / total) if total > 0 else float("nan"))
    res["mACC"] = PERCENT * _mean(acc[has_gt], n_gt)
    res["pACC"] = PERCENT * (float(tp.sum() / total) if total > 0 else float("nan"))
    # v0.6: predicted-only classes enter the mean with IoU 0 (their TP is 0).
    res["mIoU_d2v0.6"] = PERCENT * _mean(iou[has_gt], int(in_gt_or_pred.sum()))
    keys = _unique_keys(class_names)
    for key, value in zip(keys, iou):
        res[f"IoU-{key}"] = PERCENT * float(value)
    for key, value in zip(keys, acc):
        res[f"ACC-{key}"] = PERCENT * float(value)
    return res


def _realpath(path: Optional[str]) -> Optional[str]:
    return os.path.realpath(os.path.expanduser(path)) if path else None


class OpenVocabSemSegEvaluator(DatasetEvaluator):
    """Semantic-segmentation evaluator for open-vocabulary benchmarks (A-847, PC-459, ...).

    Differences from detectron2's ``SemSegEvaluator``: mIoU uses detectron2 *main*'s definition
    also on the registry's v0.6 (and reports v0.6's as ``mIoU_d2v0.6``); 16-bit labels and the
    ignore value 65535 are read without overflow; label values outside the class range raise an
    error instead of silently corrupting the matrix; no run-length-encoded JSON of every
    prediction (slow for 847 classes) — optional label PNGs instead; any batch size; the argmax
    runs on the device the model returned its scores on; predicted class ids can be mapped to
    evaluation ids (``prediction_to_eval_class``, e.g. PAS-20b's background stand-ins).

    Reads from ``MetadataCatalog.get(dataset_name)``: ``evaluation_classes`` (N names the labels
    use, when they differ from the vocabulary) or else ``stuff_classes`` (N names),
    ``ignore_label``, optionally ``prediction_to_eval_class``, ``background_by_threshold``,
    ``class_names_file``, ``image_root`` and ``sem_seg_root``.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        save_predictions: bool = False,
        num_classes: Optional[int] = None,
        ignore_label: Optional[int] = None,
        prediction_to_eval_class: Optional[Sequence[int]] = None,
    ):
        """
        Args:
            dataset_name: a name registered in ``DatasetCatalog`` / ``MetadataCatalog``.
            distributed: sum the confusion matrices of all processes in :meth:`evaluate`; only
                the main process returns results.
            output_dir: where the metrics JSON, the confusion matrix (.npy) and, with
                ``save_predictions``, the prediction PNGs are written. None: write nothing.
            save_predictions: write ``output_dir/<image stem>.png`` (predicted evaluation class
                ids; uint8 for at most 255 classes, uint16 otherwise) as each image is processed.
            num_classes: checked against ``len(stuff_classes)``; required (with generic names)
                only if the metadata has no ``stuff_classes``.
            ignore_label: ground-truth value to skip; overrides the metadata's ``ignore_label``.
            prediction_to_eval_class: length-C sequence mapping each predicted class id (the C
                channels of ``sem_seg``) to an evaluation class id in [0, N). Overrides the
                metadata key of the same name. None: predictions are evaluation ids (C == N).
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._save_predictions = save_predictions
        self._cpu_device = torch.device("cpu")
        meta = MetadataCatalog.get(dataset_name)

        # The classes the labels use. Usually the model's vocabulary (stuff_classes); a set whose
        # vocabulary holds stand-ins that are mapped (PAS-20b) lists its label classes separately.
        class_names = meta.get("evaluation_classes", None) or meta.get("stuff_classes", None)
        if class_names is None:
            if num_classes is None:
                raise ValueError(
                    f"MetadataCatalog entry {dataset_name!r} has no stuff_classes; register the "
                    "dataset's class names (stuff_classes) or pass num_classes=."
                )
            class_names = [str(i) for i in range(num_classes)]
        elif num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"num_classes={num_classes} but {dataset_name!r} has {len(class_names)} "
                "stuff_classes; drop the argument or fix the metadata."
            )
        self._class_names = list(class_names)
        self._num_classes = len(self._class_names)

        self._ignore_label = ignore_label if ignore_label is not None else meta.get("ignore_label", None)
        if self._ignore_label is None:
            raise ValueError(
                f"No ignore label for {dataset_name!r}: set MetadataCatalog.get(name).ignore_label "
                "in the dataset's registrar or pass ignore_label=."
            )
        self._ignore_label = int(self._ignore_label)
        if 0 <= self._ignore_label < self._num_classes:
            raise ValueError(
                f"ignore_label={self._ignore_label} is also a class id of {dataset_name!r} "
                f"({self._num_classes} classes); the ignore value must lie outside [0, N)."
            )

        if prediction_to_eval_class is None:
            prediction_to_eval_class = meta.get("prediction_to_eval_class", None)
        self._pred_to_eval = self._check_mapping(prediction_to_eval_class)

        # Hook for training-free protocols (V21 / C60 / Object): background is decided by a score
        # threshold in the model; the evaluator only records it so results state the protocol.
        self._background_by_threshold = meta.get("background_by_threshold", None)
        class_names_file = meta.get("class_names_file", None)
        self._class_name_source = class_names_file if class_names_file else f"dataset {dataset_name}"

        self._input_roots = {
            key: _realpath(meta.get(key, None)) for key in ("image_root", "sem_seg_root")
        }
        if save_predictions:
            if not output_dir:
                raise ValueError("save_predictions=True needs an output_dir to write the PNGs to.")
            out = _realpath(output_dir)
            for key, root in self._input_roots.items():
                if root is not None and out == root:
                    raise ValueError(
                        f"output_dir {output_dir!r} is the dataset's {key}; saving predictions "
                        "there could overwrite input files. Choose another output_dir."
                    )
        self._output_real = _realpath(output_dir)
        self._file_to_gt: Optional[Dict[str, str]] = None  # built lazily, only if needed
        self.reset()

    def _check_mapping(self, mapping: Optional[Sequence[int]]) -> Optional[np.ndarray]:
        """Validate ``prediction_to_eval_class`` into a (C,) int64 array, or None."""
        if mapping is None:
            return None
        array = np.asarray(mapping)
        if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                "prediction_to_eval_class must be a non-empty 1-D sequence of integer class ids "
                f"(one per predicted class); got shape {array.shape}, dtype {array.dtype}."
            )
        bad = array[(array < 0) | (array >= self._num_classes)]
        if bad.size:
            raise ValueError(
                f"prediction_to_eval_class maps to ids {_format_values(bad)} outside "
                f"[0, {self._num_classes}) of {self._dataset_name!r}."
            )
        return array.astype(np.int64)

    def reset(self):
        """Start a new evaluation: zero the (N+1, N+1) confusion matrix."""
        n_bins = self._num_classes + 1
        self._conf_matrix = np.zeros((n_bins, n_bins), dtype=np.int64)
        self._num_images = 0
        self._saved_stems: set = set()

    def _gt_file(self, input: dict) -> str:
        """Ground-truth path of one dataset dict (fallback: the DatasetCatalog's mapping)."""
        path = input.get("sem_seg_file_name")
        if path:
            return path
        if self._file_to_gt is None:
            self._file_to_gt = {
                record["file_name"]: record["sem_seg_file_name"]
                for record in DatasetCatalog.get(self._dataset_name)
                if "sem_seg_file_name" in record
            }
        file_name = input.get("file_name")
        if file_name not in self._file_to_gt:
            raise KeyError(
                f"Input {file_name!r} has no sem_seg_file_name and is not listed in "
                f"DatasetCatalog {self._dataset_name!r}; keep sem_seg_file_name in the mapped "
                "dataset dicts (the dataset mapper should copy it)."
            )
        return self._file_to_gt[file_name]

    def process(self, inputs, outputs):
        """Accumulate the confusion matrix for a batch.

        Args:
            inputs: mapped dataset dicts with ``file_name`` and (preferably) ``sem_seg_file_name``,
                the label file at the original resolution.
            outputs: dicts with ``sem_seg``, a (C, H, W) float tensor of per-class scores at the
                original resolution. argmax runs on the tensor's device; only the (H, W) int64
                labels move to the CPU.
        """
        if len(inputs) != len(outputs):
            raise ValueError(f"Got {len(inputs)} inputs but {len(outputs)} outputs; they must pair up.")
        for input, output in zip(inputs, outputs):
            if not isinstance(output, dict) or "sem_seg" not in output:
                found = sorted(output) if isinstance(output, dict) else type(output).__name__
                raise ValueError(f"Model output must be a dict with key 'sem_seg'; got {found}.")
            scores = output["sem_seg"]
            if scores.dim() != 3:
                raise ValueError(f"sem_seg must be a (C, H, W) score tensor; got shape {tuple(scores.shape)}.")
            pred = scores.argmax(dim=0).to(self._cpu_device, torch.int64).numpy()
            if self._pred_to_eval is not None:
                if scores.shape[0] != self._pred_to_eval.size:
                    raise ValueError(
                        f"sem_seg has {scores.shape[0]} class channels but prediction_to_eval_class "
                        f"has {self._pred_to_eval.size} entries; they must match."
                    )
                pred = self._pred_to_eval[pred]
            elif scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"sem_seg has {scores.shape[0]} class channels but {self._dataset_name!r} has "
                    f"{self._num_classes} classes; give prediction_to_eval_class to map them."
                )
            gt_file = self._gt_file(input)
            gt = read_sem_seg_label(gt_file)
            update_confusion_matrix(
                self._conf_matrix, pred, gt, self._num_classes, self._ignore_label, source=gt_file
            )
            self._num_images += 1
            if self._save_predictions:
                self._save_prediction(pred, input.get("file_name") or gt_file, gt_file)

    def _save_prediction(self, pred: np.ndarray, file_name: str, gt_file: str) -> None:
        """Write ``pred`` ((H, W) evaluation ids) to ``output_dir/<stem of file_name>.png``."""
        stem = os.path.splitext(os.path.basename(file_name))[0]
        target = os.path.join(self._output_dir, stem + ".png")
        for source in (file_name, gt_file):
            if os.path.dirname(_realpath(source)) == self._output_real:
                raise ValueError(
                    f"output_dir {self._output_dir!r} holds the input file {source}; saving "
                    f"{target} could overwrite input files. Choose another output_dir."
                )
        if stem in self._saved_stems:
            raise ValueError(
                f"Two images share the stem {stem!r}; their predictions would overwrite each other "
                f"in {self._output_dir}. Give the images unique file names."
            )
        self._saved_stems.add(stem)
        dtype = np.uint8 if self._num_classes <= MAX_CLASSES_FOR_UINT8_PNG else np.uint16
        PathManager.mkdirs(self._output_dir)
        with PathManager.open(target, "wb") as f:
            Image.fromarray(pred.astype(dtype)).save(f, format="PNG")

    def evaluate(self):
        """Sum the confusion matrices over processes and compute the metrics.

        Returns:
            ``OrderedDict({"sem_seg": metrics})`` on the main process (see
            :func:`semseg_metrics_from_confusion` for the keys), None on the other processes.
        """
        conf = self._conf_matrix
        if self._distributed:
            comm.synchronize()
            conf_list = comm.all_gather(self._conf_matrix)
            if not comm.is_main_process():
                return None
            conf = np.zeros_like(self._conf_matrix)
            for part in conf_list:
                conf += part

        res = semseg_metrics_from_confusion(conf, self._class_names)
        valid_pixels = int(conf[:-1, :-1].sum())
        if valid_pixels == 0:
            logger.warning(
                "No valid ground-truth pixel was evaluated for %s; all metrics are NaN.",
                self._dataset_name,
            )
        background = (
            f"; background by score threshold {self._background_by_threshold}"
            if self._background_by_threshold is not None
            else ""
        )
        logger.info(
            "Semantic segmentation on %s: mIoU %.2f, mIoU_d2v0.6 %.2f over %d valid pixels. %s. "
            "Class names from %s%s.",
            self._dataset_name, res["mIoU"], res["mIoU_d2v0.6"], valid_pixels,
            MIOU_DEFINITION, self._class_name_source, background,
        )
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, CONFUSION_FILE_NAME), "wb") as f:
                np.save(f, conf)
            summary = {
                "dataset": self._dataset_name,
                "definition": MIOU_DEFINITION,
                "class_names": self._class_name_source,
                "sem_seg": {k: (None if np.isnan(v) else v) for k, v in res.items()},
            }
            with PathManager.open(os.path.join(self._output_dir, RESULTS_FILE_NAME), "w") as f:
                json.dump(summary, f, indent=1)
        return OrderedDict({"sem_seg": res})
