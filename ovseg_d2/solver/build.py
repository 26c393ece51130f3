"""Optimizer construction: per-parameter LR multipliers, weight-decay classes, gradient clipping.

Open-vocabulary segmenters fine-tune a large pretrained backbone (CLIP, DINOv2) next to small
freshly initialised heads. They need

* a much smaller LR on the backbone than on the head (``SOLVER.LR_MULTIPLIERS``: regexes over
  full parameter names, first match wins),
* no weight decay on normalisation layers, biases and embeddings (decaying a positional
  embedding or ``logit_scale`` towards zero destroys what pretraining learned), and
* optionally one gradient norm over the whole model (``CLIP_TYPE: full_model``), the clipping
  used by DETR/Mask2Former/CAT-Seg, instead of detectron2's per-parameter clipping.

Parameters are grouped by identical (LR multiplier, weight decay) so a model with hundreds of
tensors still gets a handful of groups (multi-tensor optimizer kernels are much faster that way).
Each group also carries ``"param_names"`` (torch >= 2.6 understands this key natively and keeps
it in ``optimizer.state_dict()``) and ``"lr_multiplier"`` (informational; detectron2's
``LRMultiplier`` scheduler scales each group's initial LR and ignores it).
"""
from __future__ import annotations

import logging
import math
import numbers
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

__all__ = ["build_param_groups", "build_optimizer", "NORM_MODULE_TYPES", "EMBEDDING_NAME_PATTERNS"]

logger = logging.getLogger(__name__)

# torch.nn normalisation layers. BatchNorm1d/2d/3d, SyncBatchNorm and InstanceNorm1d/2d/3d all
# derive from _NormBase. Any other module whose class name contains "Norm" (timm's LayerNorm2d,
# RMSNorm variants, detectron2's FrozenBatchNorm2d / NaiveSyncBatchNorm, ...) counts too.
NORM_MODULE_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
NORM_CLASS_NAME_MARKER = "Norm"

# Substrings of a parameter's own (last dotted) name that mark it as an embedding: open_clip's
# positional_embedding / class_embedding, timm's pos_embed / cls_token / reg_token, CAT-Seg's
# padding tokens, CLIP's logit_scale and learned softmax temperatures.
EMBEDDING_NAME_PATTERNS: Tuple[str, ...] = (
    "embedding",
    "pos_embed",
    "cls_token",
    "reg_token",
    "padding_tokens",
    "padding_guidance",
    "logit_scale",
    "temperature",
)

# Optimizer names accepted in SOLVER.OPTIMIZER.
_OPTIMIZER_CHOICES = ("ADAMW", "ADAM", "SGD")
# SOLVER.CLIP_GRADIENTS.CLIP_TYPE values.
_CLIP_TYPE_FULL_MODEL = "full_model"
_CLIP_TYPES_DETECTRON2 = ("value", "norm")


def _is_norm_module(module: nn.Module) -> bool:
    return isinstance(module, NORM_MODULE_TYPES) or NORM_CLASS_NAME_MARKER in type(module).__name__


def _is_bias(param_name: str) -> bool:
    # "bias" (nn.Linear, nn.Conv*) and "*_bias" (nn.MultiheadAttention.in_proj_bias, BEiT's q_bias)
    return param_name == "bias" or param_name.endswith("_bias")


def _is_embedding(module: nn.Module, param_name: str) -> bool:
    if isinstance(module, nn.Embedding):
        return True
    return any(pattern in param_name for pattern in EMBEDDING_NAME_PATTERNS)


def _compile_lr_multipliers(lr_multipliers: Sequence[Any]) -> List[Tuple[str, "re.Pattern[str]", float]]:
    """Validate ``[[regex, multiplier], ...]`` and compile the regexes (raises ValueError)."""
    compiled = []
    for index, entry in enumerate(lr_multipliers):
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
            raise ValueError(
                f"SOLVER.LR_MULTIPLIERS[{index}] = {entry!r} is not a [regex, multiplier] pair. "
                'Write it as e.g. [["backbone\\\\.", 0.1]].'
            )
        pattern, multiplier = entry
        if not isinstance(pattern, str):
            raise ValueError(
                f"SOLVER.LR_MULTIPLIERS[{index}]: the regex must be a string, got {pattern!r}."
            )
        if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real):
            raise ValueError(
                f"SOLVER.LR_MULTIPLIERS[{index}]: the multiplier of {pattern!r} must be a number, "
                f"got {multiplier!r}."
            )
        if not math.isfinite(multiplier) or multiplier < 0:
            raise ValueError(
                f"SOLVER.LR_MULTIPLIERS[{index}]: the multiplier of {pattern!r} must be finite and "
                f">= 0, got {multiplier!r}."
            )
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(
                f"SOLVER.LR_MULTIPLIERS[{index}]: {pattern!r} is not a valid regular expression ({e})."
            ) from e
        compiled.append((pattern, regex, float(multiplier)))
    return compiled


def build_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: Optional[float],
    weight_decay_bias: Optional[float],
    weight_decay_embed: Optional[float],
    lr_multipliers: Sequence[Tuple[str, float]] = (),
) -> List[Dict[str, Any]]:
    """Split ``model``'s trainable parameters into optimizer parameter groups.

    Args:
        model: the module to optimise; only parameters with ``requires_grad`` are included, each
            once even when shared between modules.
        base_lr: LR before multipliers.
        weight_decay: decay of every parameter that is not in one of the classes below.
        weight_decay_norm: decay of parameters of normalisation layers (see ``NORM_MODULE_TYPES``);
            None means ``weight_decay``.
        weight_decay_bias: decay of biases (``bias``, ``*_bias``) outside normalisation layers;
            None means ``weight_decay`` (detectron2's convention for SOLVER.WEIGHT_DECAY_BIAS).
        weight_decay_embed: decay of embeddings: ``nn.Embedding`` weights and parameters whose own
            name contains one of ``EMBEDDING_NAME_PATTERNS``; None means ``weight_decay``.
        lr_multipliers: ``(regex, multiplier)`` pairs. A parameter's LR is ``base_lr`` times the
            multiplier of the first regex that ``re.search``-matches its full name (e.g.
            ``"backbone.blocks.0.attn.qkv.weight"``); 1.0 when none matches.

    Precedence of the weight-decay classes: norm layer, then bias, then embedding.

    Returns:
        A list of dicts, one per distinct (LR multiplier, weight decay), with keys ``params``
        (tensors), ``param_names`` (their full names), ``lr``, ``weight_decay`` and
        ``lr_multiplier``, ready for any ``torch.optim.Optimizer``.

    Raises:
        ValueError: malformed ``lr_multipliers``, or no trainable parameter in ``model``.
    """
    compiled = _compile_lr_multipliers(lr_multipliers)
    decay_norm = weight_decay if weight_decay_norm is None else weight_decay_norm
    decay_bias = weight_decay if weight_decay_bias is None else weight_decay_bias
    decay_embed = weight_decay if weight_decay_embed is None else weight_decay_embed

    groups: Dict[Tuple[float, float], Dict[str, Any]] = {}
    matched_patterns = set()
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            full_name = f"{module_name}.{param_name}" if module_name else param_name

            multiplier = 1.0
            for pattern, regex, value in compiled:
                if regex.search(full_name):
                    multiplier = value
                    matched_patterns.add(pattern)
                    break

            if _is_norm_module(module):
                decay = decay_norm
            elif _is_bias(param_name):
                decay = decay_bias
            elif _is_embedding(module, param_name):
                decay = decay_embed
            else:
                decay = weight_decay

            key = (multiplier, float(decay))
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "param_names": [],
                    "lr": base_lr * multiplier,
                    "weight_decay": float(decay),
                    "lr_multiplier": multiplier,
                }
            groups[key]["params"].append(param)
            groups[key]["param_names"].append(full_name)

    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no parameter with requires_grad=True, so there is nothing "
            "to optimise. Check which parts of the model the config freezes."
        )
    unmatched = [pattern for pattern, _, _ in compiled if pattern not in matched_patterns]
    if unmatched:
        logger.warning(
            "SOLVER.LR_MULTIPLIERS: regex(es) %s match no trainable parameter (typo, or the "
            "parameters they target are frozen or shadowed by an earlier regex).",
            unmatched,
        )
    return list(groups.values())


def _with_full_model_gradient_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float, norm_type: float
) -> Type[torch.optim.Optimizer]:
    """Subclass ``optimizer_type`` so that ``step()`` first clips one gradient norm over all
    parameters of all groups to ``max_norm`` (``torch.nn.utils.clip_grad_norm_``): every gradient
    is scaled by the same factor ``min(1, max_norm / total_norm)``, keeping their direction.

    With a ``closure`` the closure runs first (it computes the gradients), then clipping, then
    the update, so the clipped gradients are the ones used.
    """

    class _FullModelClipped(optimizer_type):  # type: ignore[misc, valid-type]
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            all_params = [p for group in self.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(all_params, max_norm, norm_type)
            super().step()
            return loss

    _FullModelClipped.__name__ = optimizer_type.__name__ + "WithFullModelGradientClip"
    _FullModelClipped.__qualname__ = _FullModelClipped.__name__
    return _FullModelClipped


def _maybe_add_clipping(cfg: CfgNode, optimizer_type: Type[torch.optim.Optimizer]) -> Type[torch.optim.Optimizer]:
    clip_cfg = cfg.SOLVER.CLIP_GRADIENTS
    if not clip_cfg.ENABLED:
        return optimizer_type
    clip_type = clip_cfg.CLIP_TYPE
    if clip_type == _CLIP_TYPE_FULL_MODEL:
        return _with_full_model_gradient_clipping(
            optimizer_type, float(clip_cfg.CLIP_VALUE), float(clip_cfg.NORM_TYPE)
        )
    if clip_type in _CLIP_TYPES_DETECTRON2:
        return maybe_add_gradient_clipping(cfg, optimizer_type)
    raise ValueError(
        f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE = {clip_type!r} is not supported; choose one of "
        f"{(_CLIP_TYPE_FULL_MODEL,) + _CLIP_TYPES_DETECTRON2}."
    )


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer described by ``cfg.SOLVER`` for ``model``'s trainable parameters.

    Uses SOLVER.{OPTIMIZER, BASE_LR, WEIGHT_DECAY, WEIGHT_DECAY_NORM, WEIGHT_DECAY_BIAS,
    WEIGHT_DECAY_EMBED, LR_MULTIPLIERS, BETAS, EPS, MOMENTUM, NESTEROV, CLIP_GRADIENTS.*}.
    See :func:`build_param_groups` for how parameters are grouped.
    """
    solver = cfg.SOLVER
    name = str(solver.OPTIMIZER).upper()
    if name not in _OPTIMIZER_CHOICES:
        raise ValueError(
            f"SOLVER.OPTIMIZER = {solver.OPTIMIZER!r} is not supported; choose one of {_OPTIMIZER_CHOICES}."
        )
    if solver.BIAS_LR_FACTOR != 1.0:
        raise ValueError(
            f"SOLVER.BIAS_LR_FACTOR = {solver.BIAS_LR_FACTOR} is not supported by ovseg_d2's optimizer; "
            'leave it at 1.0 and use SOLVER.LR_MULTIPLIERS, e.g. [["\\\\.bias$", 2.0]].'
        )
    param_groups = build_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        lr_multipliers=solver.LR_MULTIPLIERS,
    )
    if name == "SGD":
        optimizer_type: Type[torch.optim.Optimizer] = torch.optim.SGD
        kwargs = dict(momentum=solver.MOMENTUM, nesterov=solver.NESTEROV)
    else:
        optimizer_type = torch.optim.AdamW if name == "ADAMW" else torch.optim.Adam
        if len(solver.BETAS) != 2:
            raise ValueError(f"SOLVER.BETAS must hold two numbers (beta1, beta2), got {solver.BETAS!r}.")
        kwargs = dict(betas=tuple(float(b) for b in solver.BETAS), eps=float(solver.EPS))
    optimizer_type = _maybe_add_clipping(cfg, optimizer_type)
    return optimizer_type(param_groups, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY, **kwargs)
