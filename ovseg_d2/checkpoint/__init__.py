"""Atomic, weights_only-by-default checkpointing on top of detectron2's DetectionCheckpointer."""
from .checkpointer import (
    OvsegCheckpointer,
    atomic_write,
    build_checkpointer,
    build_periodic_checkpointer_hook,
)

__all__ = ["OvsegCheckpointer", "atomic_write", "build_checkpointer", "build_periodic_checkpointer_hook"]
