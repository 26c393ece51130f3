"""``OvsegTrainer``: detectron2's ``DefaultTrainer`` with ovseg_d2's parts plugged in.

What differs from ``DefaultTrainer``:
* data: the ``INPUT.DATASET_MAPPER_NAME`` mapper for training and testing, except that data sets
  whose ``evaluator_type`` has its own mapper (``ovseg_d2.data.mappers.DATASET_TYPE_MAPPERS``)
  use it: region-classification test sets, and caption sets (train and test);
* evaluator chosen from the data set's metadata (``evaluator_type``, :data:`EVALUATORS`): semantic
  segmentation, region classification or image-text retrieval (caption sets);
* models with ``export_state_dict`` (CLIPSelf) get the open_clip export hook;
* optimizer with per-parameter-group LR multipliers, no weight decay on norms, biases and
  embeddings, and full-model gradient clipping (``ovseg_d2.solver``);
* optional autocast (fp16 with loss scaling, or bf16) on any device (``ovseg_d2.engine.amp``);
* atomic checkpoints loaded with ``weights_only=True`` (``ovseg_d2.checkpoint``);
* per-data-set test vocabularies (each test set is evaluated with its own class names);
* ``TEST.EVAL_BEFORE_TRAIN``: evaluate before the first iteration and print a before/after table;
* ``INPUT.CAPTION.FEATURE_CACHE_DIR`` (Talk2DINO): a cache written with other frozen weights than
  the model's (after ``MODEL.WEIGHTS`` is loaded) is refused when training or evaluation starts
  (``ovseg_d2.data.feature_cache.check_feature_cache``).
Distributed training, ``--resume`` and ``--eval-only`` behave as in detectron2.
"""
from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from typing import Mapping, Optional

from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from ..checkpoint import build_checkpointer, build_periodic_checkpointer_hook
from ..data.feature_cache import check_feature_cache
from ..data.mappers import build_dataset_mapper
from ..evaluation import OpenVocabSemSegEvaluator, RegionClassificationEvaluator, RetrievalEvaluator
from ..modeling.vocabulary import class_names_of
from ..solver import build_optimizer
from .amp import build_trainer_step
from .clip_export_hook import build_clip_export_hook

__all__ = ["OvsegTrainer", "format_before_after", "SEM_SEG_EVALUATOR_TYPES", "EVALUATORS"]

logger = logging.getLogger(__name__)

#: metadata ``evaluator_type`` values evaluated with OpenVocabSemSegEvaluator
SEM_SEG_EVALUATOR_TYPES = ("ovseg_sem_seg", "sem_seg")
#: metadata ``evaluator_type`` of region-classification sets (RegionClassificationEvaluator)
REGION_EVALUATOR_TYPE = "region_classification"
#: metadata ``evaluator_type`` of caption sets (RetrievalEvaluator); they have no test vocabulary
CAPTIONS_EVALUATOR_TYPE = "captions"
#: metrics shown in the before/after table, per result task
SUMMARY_METRICS = {
    "sem_seg": ("mIoU", "fwIoU", "mACC", "pACC"),
    "region_classification": (
        "rois_top1_all", "rois_top1_things", "rois_top1_stuff", "maskpool_top1_all", "crops_top1_all",
        "rois_crops_top1_agreement", "maskpool_crops_top1_agreement",
    ),
    "retrieval": ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"),
}


def _sem_seg_evaluator(cfg, dataset_name, output_folder):
    return OpenVocabSemSegEvaluator(
        dataset_name,
        distributed=True,
        output_dir=output_folder or f"{cfg.OUTPUT_DIR}/inference/{dataset_name}",
        save_predictions=cfg.TEST.SAVE_PREDICTIONS,
    )


def _region_evaluator(cfg, dataset_name, output_folder):
    return RegionClassificationEvaluator(dataset_name, distributed=True)


def _retrieval_evaluator(cfg, dataset_name, output_folder):
    return RetrievalEvaluator(dataset_name, distributed=True)


#: metadata ``evaluator_type`` -> ``factory(cfg, dataset_name, output_folder)``
EVALUATORS = {
    **{t: _sem_seg_evaluator for t in SEM_SEG_EVALUATOR_TYPES},
    REGION_EVALUATOR_TYPE: _region_evaluator,
    CAPTIONS_EVALUATOR_TYPE: _retrieval_evaluator,
}


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _per_dataset(results: Mapping, dataset_names) -> dict[str, dict]:
    """detectron2 returns one data set's results unnested; nest them by data set name."""
    if len(dataset_names) == 1 and dataset_names[0] not in results:
        return {dataset_names[0]: dict(results)}
    return {name: dict(results.get(name, {})) for name in dataset_names}


def format_before_after(before: Mapping, after: Mapping, dataset_names) -> str:
    """A table of the summary metrics of each test set before and after training."""
    before, after = _per_dataset(before, dataset_names), _per_dataset(after, dataset_names)
    rows = []
    for name in dataset_names:
        for task, metrics in SUMMARY_METRICS.items():
            b = before[name].get(task, {})
            a = after[name].get(task, {})
            for metric in metrics:
                if metric in a or metric in b:
                    vb, va = b.get(metric, float("nan")), a.get(metric, float("nan"))
                    rows.append([name, metric, f"{vb:.2f}", f"{va:.2f}", f"{va - vb:+.2f}"])
    return tabulate(rows, headers=["data set", "metric", "before", "after", "gain"], tablefmt="pipe", disable_numparse=True, colalign=("left", "left", "right", "right", "right"))


class OvsegTrainer(DefaultTrainer):
    """DefaultTrainer with ovseg_d2's data, evaluation, optimizer, AMP and checkpointing."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = build_trainer_step(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = build_checkpointer(cfg, model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def state_dict(self):
        """Iteration, hook states and the step's state (optimizer, grad scaler).

        detectron2 v0.6's DefaultTrainer leaves out the inner trainer, so ``--resume`` would
        restart Adam's moments from zero; upstream detectron2 saves it under ``_trainer``.
        """
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("checkpoint has no optimizer state (written by another trainer): optimizer starts fresh")

    def build_hooks(self):
        periodic = build_periodic_checkpointer_hook(self.cfg, self.checkpointer)
        built = [periodic if isinstance(h, hooks.PeriodicCheckpointer) else h for h in super().build_hooks()]
        if hasattr(_unwrap(self.model), "export_state_dict"):
            # before the evaluation hook, so that the final export exists when evaluation runs
            at = next((i for i, h in enumerate(built) if isinstance(h, hooks.EvalHook)), len(built))
            built.insert(at, build_clip_export_hook(self.cfg, self.model))
        return built

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, cfg.DATASETS.TRAIN, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_dataset_mapper(cfg, [dataset_name], is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
        if evaluator_type not in EVALUATORS:
            raise NotImplementedError(
                f"no evaluator for data set {dataset_name!r} with evaluator_type={evaluator_type!r}; "
                f"ovseg_d2 evaluates {sorted(EVALUATORS)}"
            )
        return EVALUATORS[evaluator_type](cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on every ``DATASETS.TEST`` set, each with its own class names."""
        results = OrderedDict()
        core = _unwrap(model)
        check_feature_cache(cfg, core, cfg.DATASETS.TEST)
        previous = list(getattr(core, "test_class_names", []))
        previous_background = bool(getattr(core, "test_background_by_threshold", False))
        try:
            for index, name in enumerate(cfg.DATASETS.TEST):
                is_captions = getattr(MetadataCatalog.get(name), "evaluator_type", None) == CAPTIONS_EVALUATOR_TYPE
                if is_captions:
                    pass  # retrieval needs no class vocabulary
                elif hasattr(core, "set_test_dataset"):  # vocabulary and protocol from the metadata
                    core.set_test_dataset(name)
                elif hasattr(core, "set_test_vocabulary"):
                    background = bool(getattr(MetadataCatalog.get(name), "background_by_threshold", False))
                    core.set_test_vocabulary(class_names_of(name), background_by_threshold=background)
                single = cfg.clone()
                single.defrost()
                single.DATASETS.TEST = (name,)
                chosen = None if evaluators is None else [evaluators[index]]
                results[name] = super(OvsegTrainer, cls).test(single, model, chosen)
        finally:
            if hasattr(core, "set_test_vocabulary"):
                core.set_test_vocabulary(previous, background_by_threshold=previous_background)
        return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results

    def train(self):
        check_feature_cache(self.cfg, _unwrap(self.model), self.cfg.DATASETS.TRAIN)
        before: Optional[Mapping] = None
        if self.cfg.TEST.EVAL_BEFORE_TRAIN and self.start_iter == 0 and len(self.cfg.DATASETS.TEST):
            logger.info("TEST.EVAL_BEFORE_TRAIN: evaluating the untrained model")
            before = self.test(self.cfg, self.model)
        super().train()
        # DefaultTrainer.train only returns results when TEST.EXPECTED_RESULTS is set.
        results = getattr(self, "_last_eval_results", None)
        if before is not None and results and comm.is_main_process():
            table = format_before_after(before, results, list(self.cfg.DATASETS.TEST))
            logger.info("Before/after training:\n%s", table)
            print("\nEvaluation before and after training:\n" + table + "\n", flush=True)
        return results
