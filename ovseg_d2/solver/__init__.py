"""Optimizer construction (LR multipliers, weight-decay classes, full-model gradient clipping)."""
from .build import build_optimizer, build_param_groups

__all__ = ["build_optimizer", "build_param_groups"]
