"""ovseg_d2: open-vocabulary semantic segmentation for detectron2."""
from ._environment import apply_environment_remedies as _apply_environment_remedies

_apply_environment_remedies()  # must run before anything imports torchvision
