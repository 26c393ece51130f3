"""ovseg_d2: open-vocabulary semantic segmentation for detectron2.

Importing the package applies the environment remedies (before anything imports
torchvision), then registers every meta-architecture, head, backbone and data set.
"""
from ._environment import apply_environment_remedies as _apply_environment_remedies

_apply_environment_remedies()  # must run before anything imports torchvision

from .config import add_ovseg_config  # noqa: E402
from . import modeling  # noqa: E402,F401  (registers backbones, heads, meta-architectures)
from .data import register_all as _register_all_datasets  # noqa: E402

_register_all_datasets()  # data sets under $DETECTRON2_DATASETS (default ./datasets); no disk access

from .engine.predictor import OpenVocabPredictor  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_ovseg_config", "OpenVocabPredictor", "__version__"]
