"""``CLIPExportHook``: write weight-ensembled open_clip checkpoints during training (CLIPSelf).

At the end of every ``period`` iterations (one epoch by default) and at the end of training the
hook asks the model for ``export_state_dict(alpha)`` (``alpha * student + (1 - alpha) * teacher``
for the image tower) and writes it as ``OUTPUT_DIR/clip_export_<iteration>.pt`` (and
``clip_export_final.pt``), each loadable by ``open_clip.create_model(name, pretrained=file)``
and usable as ``MODEL.CLIP.PRETRAINED``.
"""
from __future__ import annotations

import logging
import math
import os

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..modeling.backbone.clip_export import save_open_clip_checkpoint

__all__ = ["CLIPExportHook", "build_clip_export_hook", "epoch_length"]

logger = logging.getLogger(__name__)

EXPORT_PREFIX = "clip_export_"


def epoch_length(cfg) -> int:
    """Iterations per epoch of ``DATASETS.TRAIN`` at ``SOLVER.IMS_PER_BATCH`` (lists the data sets)."""
    from detectron2.data import DatasetCatalog

    images = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
    return max(1, math.ceil(images / cfg.SOLVER.IMS_PER_BATCH))


class CLIPExportHook(HookBase):
    """Every ``period`` iterations and after training: ``model.export_state_dict(alpha)`` to a file."""

    def __init__(self, model, *, period: int, alpha: float, output_dir: str):
        if period < 1:
            raise ValueError(f"export period must be >= 1 iteration, got {period}")
        self._model = model.module if hasattr(model, "module") else model
        self.period = int(period)
        self.alpha = float(alpha)
        self.output_dir = output_dir
        self._last_written = -1

    def _write(self, name: str) -> None:
        if not comm.is_main_process():
            return
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"{EXPORT_PREFIX}{name}.pt")
        save_open_clip_checkpoint(self._model.export_state_dict(self.alpha), path)
        logger.info("Wrote open_clip checkpoint %s (alpha=%.3f * student + %.3f * teacher)", path, self.alpha, 1 - self.alpha)

    def after_step(self) -> None:
        iteration = self.trainer.iter + 1
        if iteration % self.period == 0:
            self._write(f"{iteration:07d}")
            self._last_written = iteration

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._write("final")


def build_clip_export_hook(cfg, model) -> CLIPExportHook:
    period = int(cfg.MODEL.CLIPSELF.EXPORT_PERIOD) or epoch_length(cfg)
    logger.info("CLIPSelf export every %d iterations, alpha %.3f", period, cfg.MODEL.CLIPSELF.ENSEMBLE_ALPHA)
    return CLIPExportHook(model, period=period, alpha=cfg.MODEL.CLIPSELF.ENSEMBLE_ALPHA, output_dir=cfg.OUTPUT_DIR)
