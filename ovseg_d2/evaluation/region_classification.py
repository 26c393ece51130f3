"""Zero-shot region classification (CLIPSelf's evaluation), a detectron2 ``DatasetEvaluator``.

For every ground-truth segment the model gives class scores per mode (``rois``, ``maskpool``,
``crops``; ``outputs[i]["region_scores"][mode]``: K x T). Per mode and class the evaluator counts
segments and top-1 / top-5 hits; a class's accuracy is hits / segments, and the reported
figures are **means over classes** that have at least one segment (mean per-class accuracy),
separately over thing classes, stuff classes and all classes, in percent:

    rois_top1_things, rois_top5_things, rois_top1_stuff, rois_top5_stuff, rois_top1_all, ...

A class is a thing when the data set's metadata says so (``class_is_thing``), else when its
segments are things. ``<mode>_crops_top1_agreement`` (for rois / maskpool, when crops are
computed) is the share of segments whose top-1 class equals the crops mode's top-1: how close
dense region embeddings are to the model's own crop embeddings, whatever the labels.
Only counts are kept (T x 3 per mode), so memory does not grow with the data set.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Optional

import numpy as np
import torch

import detectron2.utils.comm as comm
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

__all__ = ["RegionClassificationEvaluator", "region_accuracy_from_counts", "TOP_K"]

logger = logging.getLogger(__name__)

TOP_K = (1, 5)
AGREEMENT_REFERENCE_MODE = "crops"


def region_accuracy_from_counts(
    counts: np.ndarray, hits: dict[int, np.ndarray], class_is_thing: np.ndarray
) -> dict[str, float]:
    """Mean per-class top-k accuracy (%) over things, stuff and all classes with segments.

    Args:
        counts: (T,) segments per class. hits: k -> (T,) top-k hits per class.
        class_is_thing: (T,) bool.
    """
    present = counts > 0
    out = {}
    for k, h in hits.items():
        accuracy = np.where(present, h / np.maximum(counts, 1), np.nan)
        for group, members in (("things", class_is_thing), ("stuff", ~class_is_thing), ("all", np.ones_like(present))):
            selected = present & members
            out[f"top{k}_{group}"] = float(100.0 * accuracy[selected].mean()) if selected.any() else float("nan")
    return out


class RegionClassificationEvaluator(DatasetEvaluator):
    """Accumulate per-class top-k hits of every mode; report mean per-class accuracies."""

    def __init__(self, dataset_name: str, *, distributed: bool = True, top_k=TOP_K):
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.top_k = tuple(top_k)
        meta = MetadataCatalog.get(dataset_name)
        self.class_names = list(meta.stuff_classes)
        thing = getattr(meta, "class_is_thing", None)
        self.metadata_is_thing = np.asarray(thing, dtype=bool) if thing is not None else None
        self.reset()

    def reset(self) -> None:
        num = len(self.class_names)
        self._counts: dict[str, np.ndarray] = {}
        self._hits: dict[str, dict[int, np.ndarray]] = {}
        self._agree: dict[str, list[int]] = {}  # mode -> [agreeing segments, segments]
        self._seen_thing = np.zeros(num, dtype=bool)
        self._seen_stuff = np.zeros(num, dtype=bool)
        self._num = num

    def process(self, inputs, outputs) -> None:
        for x, out in zip(inputs, outputs):
            labels = x["region_classes"].cpu().numpy().astype(np.int64)
            if len(labels) == 0:
                continue
            if labels.max() >= self._num or labels.min() < 0:
                raise ValueError(f"{x.get('file_name')}: region class ids {labels.tolist()} outside 0..{self._num - 1}")
            thing = x["region_is_thing"].cpu().numpy().astype(bool)
            self._seen_thing[labels[thing]] = True
            self._seen_stuff[labels[~thing]] = True
            scores = out["region_scores"]
            top1 = {}
            for mode, s in scores.items():
                s = s.detach().float().cpu()
                if s.shape != (len(labels), self._num):
                    raise ValueError(f"region_scores[{mode!r}] has shape {tuple(s.shape)}, expected {(len(labels), self._num)}")
                ranked = s.topk(min(max(self.top_k), self._num), dim=1).indices.numpy()
                top1[mode] = ranked[:, 0]
                counts = self._counts.setdefault(mode, np.zeros(self._num, dtype=np.int64))
                np.add.at(counts, labels, 1)
                for k in self.top_k:
                    hit = (ranked[:, :k] == labels[:, None]).any(1)
                    per_class = self._hits.setdefault(mode, {}).setdefault(k, np.zeros(self._num, dtype=np.int64))
                    np.add.at(per_class, labels, hit.astype(np.int64))
            if AGREEMENT_REFERENCE_MODE in top1:
                for mode, t in top1.items():
                    if mode != AGREEMENT_REFERENCE_MODE:
                        agree = self._agree.setdefault(mode, [0, 0])
                        agree[0] += int((t == top1[AGREEMENT_REFERENCE_MODE]).sum())
                        agree[1] += len(t)

    def _gathered(self):
        state = (self._counts, self._hits, self._agree, self._seen_thing, self._seen_stuff)
        if not self.distributed or comm.get_world_size() == 1:
            return [state]
        comm.synchronize()
        return comm.gather(state, dst=0)

    def evaluate(self) -> Optional[OrderedDict]:
        parts = self._gathered()
        if not comm.is_main_process():
            return None
        counts: dict[str, np.ndarray] = {}
        hits: dict[str, dict[int, np.ndarray]] = {}
        agree: dict[str, list[int]] = {}
        seen_thing = np.zeros(self._num, dtype=bool)
        seen_stuff = np.zeros(self._num, dtype=bool)
        for c, h, a, st, ss in parts:
            for mode, v in c.items():
                counts[mode] = counts.get(mode, 0) + v
            for mode, per_k in h.items():
                for k, v in per_k.items():
                    hits.setdefault(mode, {})[k] = hits.get(mode, {}).get(k, 0) + v
            for mode, (n_agree, n) in a.items():
                total = agree.setdefault(mode, [0, 0])
                total[0] += n_agree
                total[1] += n
            seen_thing |= st
            seen_stuff |= ss
        if not counts:
            logger.warning("RegionClassificationEvaluator on %s: no segment was evaluated", self.dataset_name)
            return OrderedDict({"region_classification": {}})
        is_thing = self.metadata_is_thing if self.metadata_is_thing is not None else (seen_thing & ~seen_stuff)
        results = OrderedDict()
        for mode in counts:
            for name, value in region_accuracy_from_counts(counts[mode], hits[mode], is_thing).items():
                results[f"{mode}_{name}"] = value
        for mode, (n_agree, n) in agree.items():
            results[f"{mode}_{AGREEMENT_REFERENCE_MODE}_top1_agreement"] = 100.0 * n_agree / max(n, 1)
        any_mode = next(iter(counts))
        results["num_segments"] = int(counts[any_mode].sum())
        logger.info(
            "Region classification on %s (mean per-class accuracy, %%; %d segments):\n%s",
            self.dataset_name,
            results["num_segments"],
            "\n".join(f"  {k}: {v:.2f}" for k, v in results.items() if k != "num_segments"),
        )
        return OrderedDict({"region_classification": results})
