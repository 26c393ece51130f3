"""Build an open_clip model from a config name and a weights source, offline-friendly.

``MODEL.CLIP.PRETRAINED`` may be an open_clip pretrained tag (``"openai"``), a local
checkpoint file, or ``""`` for random initialisation; tests use the last two with the very
same code path a user's file takes. Model configs shipped in ``clip_model_configs/`` (tiny
quickstart models) are registered with open_clip on first use, never at import time.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch.nn as nn

__all__ = ["build_open_clip_model", "looks_like_path", "SHIPPED_CONFIG_DIR"]

logger = logging.getLogger(__name__)

SHIPPED_CONFIG_DIR = Path(__file__).with_name("clip_model_configs")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_registered_shipped_configs = False


def _register_shipped_configs() -> None:
    global _registered_shipped_configs
    if not _registered_shipped_configs:
        import open_clip

        open_clip.add_model_config(SHIPPED_CONFIG_DIR)
        _registered_shipped_configs = True


def looks_like_path(source: str) -> bool:
    """True when a weights source names a file rather than a hub tag."""
    return os.sep in source or source.endswith(_CHECKPOINT_SUFFIXES) or os.path.exists(source)


def build_open_clip_model(model_name: str, pretrained: str, *, force_quick_gelu: bool) -> nn.Module:
    """Create an open_clip CLIP model.

    Args:
        model_name: open_clip config name, e.g. "ViT-B-16" or the shipped "ovseg-tiny-vit8".
        pretrained: open_clip tag ("openai", "laion2b_s34b_b88k", ...), a local checkpoint
            path, or "" for random initialisation.
        force_quick_gelu: use QuickGELU (OpenAI-architecture weights need it; open_clip's
            plain "ViT-B-16" config uses GELU and silently gives wrong features otherwise).
    """
    import open_clip

    _register_shipped_configs()
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"MODEL.CLIP.MODEL_NAME={model_name!r} is not an open_clip model config. Known configs "
            f"include {sorted(open_clip.list_models())[:8]}...; configs shipped with ovseg_d2 live "
            f"in {SHIPPED_CONFIG_DIR}."
        )
    kwargs = dict(force_quick_gelu=force_quick_gelu, weights_only=True)
    if not pretrained:
        logger.info("CLIP %s: random initialisation (MODEL.CLIP.PRETRAINED is empty)", model_name)
        return open_clip.create_model(model_name, pretrained=None, **kwargs)
    if looks_like_path(pretrained):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"MODEL.CLIP.PRETRAINED={pretrained!r} looks like a file path but no such file exists."
            )
        logger.info("CLIP %s: loading local weights %s", model_name, pretrained)
        return open_clip.create_model(model_name, pretrained=pretrained, **kwargs)
    try:
        logger.info("CLIP %s: loading open_clip pretrained tag %r", model_name, pretrained)
        return open_clip.create_model(model_name, pretrained=pretrained, **kwargs)
    except Exception as err:  # network, cache or unknown tag
        raise RuntimeError(
            f"Could not load open_clip weights {model_name!r} / {pretrained!r}: {err}. Without network "
            "access (or with HF_HUB_OFFLINE=1 and no cached copy) hub weights cannot be fetched: download "
            "the checkpoint where you have network and set MODEL.CLIP.PRETRAINED to its local path, "
            "or set it to \"\" for random initialisation."
        ) from err
