"""Data-set registrars. Importing this package registers nothing; call :func:`register_all`.

Every registrar goes through :func:`register_sem_seg_dataset`, which touches no file, so
``register_all()`` is cheap, safe to call repeatedly, and picks up the current
``$DETECTRON2_DATASETS`` each time.

The registrar modules are imported lazily (on first attribute access or ``register_all()``),
so ``python -m ovseg_d2.data.datasets.builtin_shapes`` runs its module exactly once.
"""
import importlib

from .register_sem_seg import datasets_root, load_sem_seg_dicts, register_sem_seg_dataset

__all__ = [
    "register_all",
    "register_builtin_shapes",
    "register_sem_seg_dataset",
    "load_sem_seg_dicts",
    "datasets_root",
    "generate_shapes_dataset",
    "present_classes",
]

#: Public name -> submodule defining it, imported on first access.
_LAZY_ATTRIBUTES = {
    "register_builtin_shapes": "builtin_shapes",
    "generate_shapes_dataset": "builtin_shapes",
    "present_classes": "builtin_shapes",
}


def __getattr__(name: str):
    if name in _LAZY_ATTRIBUTES:
        module = importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_all() -> None:
    """Register every data set ovseg_d2 knows (idempotent; no disk access)."""
    from .ade20k import register_ade20k
    from .builtin_shapes import register_builtin_shapes
    from .cityscapes import register_cityscapes
    from .coco import register_coco
    from .pascal_context import register_pascal_context
    from .pascal_voc import register_pascal_voc

    register_builtin_shapes()
    register_coco()
    register_pascal_voc()
    register_pascal_context()
    register_ade20k()
    register_cityscapes()
