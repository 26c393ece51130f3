"""DINOv2 image backbone (timm ``VisionTransformer``) from timm's hub, a local file or random init.

Where the weights come from (``MODEL.DINOV2.PRETRAINED``):

* ``""``: random initialisation (tests, or training from scratch);
* ``"timm"``: timm's published weights for ``MODEL_NAME`` (Hugging Face hub, or its local cache);
* a local file (``.pth``/``.pt``/``.bin``/``.safetensors``) in either key layout:
    - timm's (``cls_token``, ``reg_token``, ``pos_embed`` over patch positions only, ...), e.g. a
      file saved from a timm model or downloaded from timm's hub repository;
    - the official facebookresearch/dinov2 one (``dinov2_vitb14_reg4_pretrain.pth``: ``cls_token``,
      ``register_tokens``, ``mask_token``, ``pos_embed`` including the CLS position, over a 37x37
      grid for 518 px). timm's ``checkpoint_filter_fn`` recognises it by ``mask_token``, drops the
      mask token, renames ``register_tokens`` -> ``reg_token``, folds the CLS position into
      ``cls_token`` and keeps the patch positions (timm's DINOv2 models have ``no_embed_class``).

Either way the patch position embeddings are resampled (bicubic, antialiased, timm's
``resample_abs_pos_embed``) when the file's grid differs from ``img_size // 14``.

timm reads local torch files with ``torch.load(weights_only=True)`` (safetensors for
``.safetensors``) and loads them strictly: a missing or unexpected key is an error listing them.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import timm
from timm.models.vision_transformer import VisionTransformer

__all__ = ["build_dinov2", "PRETRAINED_TIMM", "PRETRAINED_NONE"]

PRETRAINED_TIMM = "timm"  # load timm's published weights for the model name
PRETRAINED_NONE = ""  # random initialisation
_CONFIG_KEY = "MODEL.DINOV2.PRETRAINED"


def build_dinov2(
    model_name: str,
    pretrained: str,
    *,
    img_size: int,
    dynamic_img_size: bool = True,
    model_kwargs: Optional[Mapping[str, Any]] = None,
) -> VisionTransformer:
    """Create a timm DINOv2 ViT and load its weights.

    Args:
        model_name: timm model name, e.g. ``"vit_base_patch14_reg4_dinov2.lvd142m"``.
        pretrained: ``""`` (random init), ``"timm"`` (timm's weights for ``model_name``; needs the
            hub or its cache) or the path of a local weights file (timm or official DINOv2 layout).
        img_size: input side the position embeddings are built for (448 -> a 32x32 patch grid
            for patch size 14).
        dynamic_img_size: let the model accept other input sizes by interpolating the position
            embeddings on the fly (sliding-window inference, training crops).
        model_kwargs: further ``timm.create_model`` arguments that change the architecture, e.g.
            ``{"embed_dim": 32, "depth": 2, "num_heads": 2}`` for a tiny random model (tests,
            quickstart). A weights file must then hold that architecture.

    Returns:
        The timm ``VisionTransformer`` with no classifier head (``num_classes=0``). Its
        ``forward_features`` maps images ``[B, 3, H, W]`` to tokens ``[B, 1 + R + H/14 * W/14, D]``
        (CLS, R register tokens, patches), normalised by the final LayerNorm. Nothing is frozen.

    Raises:
        ValueError: ``model_name`` is not a timm model.
        FileNotFoundError: ``pretrained`` is neither ``""`` nor ``"timm"`` and no such file exists.
        RuntimeError: the weights cannot be obtained or do not fit the model (the message names the
            file and the missing/unexpected keys or mismatched shapes).
    """
    if not timm.is_model(model_name):
        raise ValueError(
            f"{model_name!r} is not a timm model. DINOv2 models in this timm: "
            f"{timm.list_models('*dinov2*', pretrained=True)}."
        )
    kwargs = dict(model_kwargs or {}, img_size=img_size, dynamic_img_size=dynamic_img_size)

    if pretrained == PRETRAINED_NONE:
        return timm.create_model(model_name, pretrained=False, **kwargs)

    if pretrained == PRETRAINED_TIMM:
        try:
            return timm.create_model(model_name, pretrained=True, pretrained_strict=True, **kwargs)
        except Exception as e:
            raise RuntimeError(
                f"Could not load timm's pretrained weights for {model_name!r}: {type(e).__name__}: {e}\n"
                f"These come from the Hugging Face hub (or its local cache), which needs network access. "
                f"Without it, download the weights elsewhere and set {_CONFIG_KEY} to the local file's "
                f"path (.pth/.safetensors, timm or official DINOv2 layout)."
            ) from e

    path = os.path.expanduser(pretrained)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"DINOv2 weights file not found: {pretrained!r}. {_CONFIG_KEY} must be "
            f"{PRETRAINED_TIMM!r} (timm's weights), {PRETRAINED_NONE!r} (random init) or the path of an "
            f"existing .pth/.pt/.bin/.safetensors file."
        )
    try:
        return timm.create_model(
            model_name,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=path),
            pretrained_strict=True,
            **kwargs,
        )
    except Exception as e:
        if "weights_only" in str(e):
            hint = (
                "The file pickles objects other than tensors, which torch.load(weights_only=True) "
                "refuses because unpickling can run arbitrary code. If you trust it, re-save its "
                "state dict alone (torch.save(state_dict)) or as .safetensors."
            )
        else:
            hint = (
                "The file must hold this architecture's weights, in timm's key layout or the "
                "official DINOv2 one (recognised by its 'mask_token' entry)."
            )
        raise RuntimeError(
            f"Could not load DINOv2 weights from {path} into {model_name!r}: "
            f"{type(e).__name__}: {e}\n{hint}"
        ) from e
