"""Training: the mixed-precision trainer step and ``OvsegTrainer`` (detectron2 DefaultTrainer)."""
from .amp import AutocastTrainer, build_trainer_step
from .predictor import OpenVocabPredictor
from .setup import setup_cfg
from .trainer import OvsegTrainer, format_before_after

__all__ = ["OpenVocabPredictor", "AutocastTrainer", "build_trainer_step", "OvsegTrainer", "format_before_after", "setup_cfg"]
