"""Mixed-precision training step for any autocast device and dtype.

detectron2's ``AMPTrainer`` only knows CUDA float16 and steps the optimizer through the
GradScaler without unscaling first, so a gradient-clipping optimizer (``SOLVER.CLIP_GRADIENTS``)
clips gradients that are still multiplied by the loss scale (e.g. 65536): the clip threshold is
then meaningless. ``AutocastTrainer`` fixes both:

* float16 (CUDA only) uses ``torch.amp.GradScaler("cuda")`` and calls ``scaler.unscale_``
  before ``scaler.step``, so clipping inside ``optimizer.step()`` sees true gradients;
* bfloat16 (CUDA or CPU) has float32's exponent range and needs no loss scaling.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional

import torch
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer

__all__ = ["AutocastTrainer", "build_trainer_step", "AMP_DTYPES"]

logger = logging.getLogger(__name__)

# SOLVER.AMP.DTYPE values.
AMP_DTYPES: Dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# The only device type float16 loss scaling is supported on here.
_FLOAT16_DEVICE_TYPE = "cuda"
_GRAD_SCALER_KEY = "grad_scaler"  # key of the scaler's state in the trainer's state_dict


class AutocastTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose forward pass (model and loss) runs under ``torch.autocast``.

    Args:
        model, data_loader, optimizer: as in ``SimpleTrainer``.
        device_type: autocast device type, ``"cuda"`` or ``"cpu"`` (no index).
        dtype: ``torch.float16`` (CUDA only, with loss scaling) or ``torch.bfloat16``.
        grad_scaler: loss scaler to use instead of the default (``torch.amp.GradScaler("cuda")``
            for float16, none for bfloat16). Anything with ``scale``/``unscale_``/``step``/
            ``update``/``state_dict``/``load_state_dict``.

    Raises:
        ValueError: unsupported dtype, or float16 on a device other than CUDA.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Any,
        optimizer: torch.optim.Optimizer,
        *,
        device_type: str,
        dtype: torch.dtype,
        grad_scaler: Optional[Any] = None,
    ) -> None:
        if dtype not in AMP_DTYPES.values():
            raise ValueError(
                f"AutocastTrainer: dtype {dtype} is not supported; use torch.float16 or torch.bfloat16."
            )
        if ":" in device_type:
            raise ValueError(
                f"AutocastTrainer: device_type must be a device type such as 'cuda' or 'cpu', "
                f"without an index; got {device_type!r}."
            )
        if dtype == torch.float16 and device_type != _FLOAT16_DEVICE_TYPE:
            raise ValueError(
                f"float16 mixed precision is only supported on CUDA here, not on {device_type!r}. "
                "Use bfloat16 instead (SOLVER.AMP.DTYPE: bfloat16), or disable SOLVER.AMP.ENABLED."
            )
        super().__init__(model, data_loader, optimizer)
        self.device_type = device_type
        self.dtype = dtype
        if grad_scaler is None and dtype == torch.float16:
            grad_scaler = torch.amp.GradScaler(device_type)
        self.grad_scaler = grad_scaler

    def run_step(self) -> None:
        """One iteration: load data, forward under autocast, (scaled) backward, write metrics,
        (unscale,) optimizer step."""
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        if self.grad_scaler is None:
            losses.backward()
        else:
            self.grad_scaler.scale(losses).backward()

        self._write_metrics(loss_dict, data_time)

        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            # Unscale first so that gradient clipping inside optimizer.step() sees true gradients;
            # scaler.step then skips the step if any gradient is inf/NaN.
            self.grad_scaler.unscale_(self.optimizer)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret[_GRAD_SCALER_KEY] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is None:
            return
        if _GRAD_SCALER_KEY in state_dict:
            self.grad_scaler.load_state_dict(state_dict[_GRAD_SCALER_KEY])
        else:
            logger.warning("The checkpoint has no loss-scaler state; the loss scale starts afresh.")


def build_trainer_step(
    cfg: CfgNode, model: torch.nn.Module, data_loader: Any, optimizer: torch.optim.Optimizer
) -> SimpleTrainer:
    """The per-iteration trainer for ``cfg``: ``SimpleTrainer`` when ``SOLVER.AMP.ENABLED`` is
    False, else ``AutocastTrainer`` on the device type of ``MODEL.DEVICE`` ("cpu", "cuda",
    "cuda:0", ...) with ``SOLVER.AMP.DTYPE`` ("float16" | "bfloat16")."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    dtype_name = cfg.SOLVER.AMP.DTYPE
    if dtype_name not in AMP_DTYPES:
        raise ValueError(
            f"SOLVER.AMP.DTYPE = {dtype_name!r} is not supported; choose one of {tuple(AMP_DTYPES)}."
        )
    device_type = torch.device(cfg.MODEL.DEVICE).type
    return AutocastTrainer(
        model, data_loader, optimizer, device_type=device_type, dtype=AMP_DTYPES[dtype_name]
    )
