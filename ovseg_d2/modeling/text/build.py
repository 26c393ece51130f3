"""Build the shared prompt text encoder on a CLIP backbone's text tower from config."""
from __future__ import annotations

import open_clip

from .templates import resolve_templates
from .text_encoder import PromptTextEncoder

__all__ = ["build_prompt_text_encoder"]


def build_prompt_text_encoder(cfg, backbone) -> PromptTextEncoder:
    """``PromptTextEncoder`` over ``backbone.encode_text`` with ``MODEL.TEXT`` templates/synonyms."""
    return PromptTextEncoder(
        encode_tokens=backbone.encode_text,
        tokenizer=open_clip.get_tokenizer(cfg.MODEL.CLIP.MODEL_NAME),
        templates=resolve_templates(cfg.MODEL.TEXT.TEMPLATE_SET, cfg.MODEL.TEXT.TEMPLATES),
        synonym_rule=cfg.MODEL.TEXT.SYNONYMS,
        parameters=backbone.text_parameters,
    )
