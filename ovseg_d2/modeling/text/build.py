"""Build the shared prompt text encoder on a CLIP backbone's text tower from config."""
from __future__ import annotations

import open_clip

from .disk_cache import PersistentTextEmbeddingCache, resolve_cache_directory
from .templates import resolve_templates
from .text_encoder import PromptTextEncoder

__all__ = ["build_prompt_text_encoder"]


def build_prompt_text_encoder(cfg, backbone) -> PromptTextEncoder:
    """``PromptTextEncoder`` over ``backbone.encode_prompts`` (``encode_text`` run over each
    prompt's own tokens; ``encode_text`` for backbones without it) with ``MODEL.TEXT``
    templates/synonyms and the persistent cache under ``MODEL.TEXT.EMBEDDING_CACHE_DIR`` (off
    when empty)."""
    directory = resolve_cache_directory(cfg.MODEL.TEXT.EMBEDDING_CACHE_DIR)
    return PromptTextEncoder(
        encode_tokens=getattr(backbone, "encode_prompts", backbone.encode_text),
        tokenizer=open_clip.get_tokenizer(cfg.MODEL.CLIP.MODEL_NAME),
        templates=resolve_templates(cfg.MODEL.TEXT.TEMPLATE_SET, cfg.MODEL.TEXT.TEMPLATES),
        synonym_rule=cfg.MODEL.TEXT.SYNONYMS,
        parameters=backbone.text_parameters,
        disk_cache=PersistentTextEmbeddingCache(directory) if directory else None,
    )
