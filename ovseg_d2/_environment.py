"""Environment remedies applied on ``import ovseg_d2``, before anything imports torchvision.

Two known breakages of the CPU stack described in ``install.md``, each fixed only where it
occurs; where the real thing works, each remedy does nothing:

* **torchvision ops.** The registry's torchvision wheels are CUDA builds. Next to a CPU torch
  their compiled library fails to load, and ``import torchvision`` then dies with
  ``operator torchvision::nms does not exist`` (its fake-kernel registration runs anyway),
  which also breaks ``import timm`` and ``import open_clip``. The remedy declares the
  ``torchvision::nms`` / ``torchvision::qnms`` schemas and gives them a pure-torch kernel.
* **detectron2._C.** The registry's detectron2 is installed without its C extension. A
  placeholder module stands in for ``detectron2._C`` and raises an error naming the missing
  compiled op if anything calls it (semantic segmentation needs none).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import Callable, Optional

__all__ = ["apply_environment_remedies", "remedy_torchvision_ops", "remedy_detectron2_c", "APPLIED"]

logger = logging.getLogger(__name__)

#: Names of the remedies that were actually applied in this process.
APPLIED: list[str] = []


def _nms_reference(boxes, scores, iou_threshold: float):
    """Greedy NMS in plain torch: indices of kept boxes, sorted by decreasing score.

    Args:
        boxes: (N, 4) in (x1, y1, x2, y2). scores: (N,). Returns int64 (K,).
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.float()
    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep = []
    for idx in order.tolist():
        if suppressed[idx]:
            continue
        keep.append(idx)
        w = (torch.minimum(x2[idx], x2) - torch.maximum(x1[idx], x1)).clamp(min=0)
        h = (torch.minimum(y2[idx], y2) - torch.maximum(y1[idx], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[idx] + areas - inter).clamp(min=1e-12)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def _default_torchvision_loader() -> bool:
    """Try to load torchvision's compiled ops without importing torchvision. True if loaded."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision at all: nothing to remedy
    package_dir = Path(list(spec.submodule_search_locations)[0])
    libraries = sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(str(libraries[0]))
        return True
    except (OSError, RuntimeError, ImportError):
        return False


def remedy_torchvision_ops(load_library: Optional[Callable[[], bool]] = None) -> bool:
    """Declare torchvision's NMS op schemas when its compiled library cannot load.

    Args:
        load_library: returns True when torchvision's own ops loaded (injectable for tests).
    Returns:
        True if the remedy was applied, False if it was not needed.
    """
    if "torchvision" in sys.modules:
        return False  # too late to help, and if it imported, it works
    import torch

    if hasattr(torch.ops.torchvision, "nms"):
        return False
    if (load_library or _default_torchvision_loader)():
        return False
    library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - held below
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", _nms_reference, "CPU")
    library.impl("qnms", _nms_reference, "CPU")
    # The Library object must outlive this call or the definitions are dropped.
    _KEEP_ALIVE.append(library)
    APPLIED.append("torchvision_ops")
    logger.debug("ovseg_d2: torchvision's compiled ops did not load; declared nms/qnms in pure torch")
    return True


_KEEP_ALIVE: list = []

# Attributes of detectron2._C that only report build information (collect_env uses them).
_INFO_ATTRIBUTES = {
    "get_compiler_version": lambda: "not built (Python-only detectron2; ovseg_d2 placeholder)",
    "get_cuda_version": lambda: "not built",
    "has_cuda": lambda: False,
}

_OP_PURPOSE = {
    "box_iou_rotated": "rotated boxes",
    "nms_rotated": "rotated boxes",
    "roi_align_rotated_forward": "rotated RoIAlign",
    "roi_align_rotated_backward": "rotated RoIAlign",
    "deform_conv_forward": "deformable convolution",
    "deform_conv_backward_input": "deformable convolution",
    "deform_conv_backward_filter": "deformable convolution",
    "modulated_deform_conv_forward": "deformable convolution",
    "modulated_deform_conv_backward": "deformable convolution",
    "InstanceAnnotation": "fast COCO evaluation",
    "COCOevalEvaluateImages": "fast COCO evaluation",
    "COCOevalAccumulate": "fast COCO evaluation",
}


class MissingDetectron2Extension(RuntimeError):
    """Raised when code calls a compiled detectron2 op that this installation lacks."""


class _Detectron2CPlaceholder(types.ModuleType):
    """Stands in for ``detectron2._C``; any compiled op raises a clear error when used."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in _INFO_ATTRIBUTES:
            return _INFO_ATTRIBUTES[name]
        purpose = _OP_PURPOSE.get(name, "a compiled detectron2 op")
        raise MissingDetectron2Extension(
            f"detectron2._C.{name} ({purpose}) is not available: this detectron2 was installed "
            "without its C++/CUDA extension (the pure-Python install of tools/install_detectron2.py). "
            "Semantic segmentation in ovseg_d2 does not need it. To use it, build detectron2 from "
            "source with its extension (see detectron2's INSTALL.md) and re-run `make setup`, "
            "which keeps an importable detectron2."
        )


def remedy_detectron2_c(find_spec: Optional[Callable[[str], object]] = None) -> bool:
    """Register a placeholder ``detectron2._C`` if detectron2 is installed without it.

    Returns True if the placeholder was registered, False if not needed (no detectron2, a
    real extension present, or already imported).
    """
    if "detectron2._C" in sys.modules:
        return False
    find_spec = find_spec or importlib.util.find_spec
    try:
        if find_spec("detectron2") is None:
            return False
        if find_spec("detectron2._C") is not None:
            return False
    except (ImportError, ValueError):
        return False
    placeholder = _Detectron2CPlaceholder("detectron2._C", "ovseg_d2 placeholder for detectron2's C extension")
    placeholder.__file__ = None  # type: ignore[assignment]
    placeholder.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", loader=None)
    sys.modules["detectron2._C"] = placeholder
    APPLIED.append("detectron2_c_placeholder")
    return True


def apply_environment_remedies() -> list[str]:
    """Apply every remedy that is needed here; returns the names of those applied."""
    remedy_torchvision_ops()
    remedy_detectron2_c()
    return list(APPLIED)
