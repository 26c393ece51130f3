"""Evaluation for ovseg_d2: the open-vocabulary semantic-segmentation evaluator and its helpers."""
from .region_classification import RegionClassificationEvaluator, region_accuracy_from_counts
from .retrieval import RetrievalEvaluator, recall_metrics, retrieval_ranks
from .sem_seg_evaluation import (
    MIOU_DEFINITION,
    OpenVocabSemSegEvaluator,
    read_sem_seg_label,
    semseg_metrics_from_confusion,
    update_confusion_matrix,
)

__all__ = [
    "MIOU_DEFINITION",
    "OpenVocabSemSegEvaluator",
    "RegionClassificationEvaluator",
    "RetrievalEvaluator",
    "recall_metrics",
    "retrieval_ranks",
    "region_accuracy_from_counts",
    "read_sem_seg_label",
    "semseg_metrics_from_confusion",
    "update_confusion_matrix",
]
