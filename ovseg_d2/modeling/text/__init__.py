"""Text side shared by every method: templates, class-name parsing, encoder and cache."""
from .build import build_prompt_text_encoder
from .cache import TextEmbeddingCache, parameter_version_fingerprint
from .disk_cache import PersistentTextEmbeddingCache, resolve_cache_directory, text_weights_fingerprint
from .class_names import check_vocabulary, parse_vocabulary, split_synonyms
from .templates import TEMPLATE_SETS, resolve_templates
from .text_encoder import PromptTextEncoder, average_templates

__all__ = [
    "build_prompt_text_encoder",
    "TextEmbeddingCache",
    "parameter_version_fingerprint",
    "PersistentTextEmbeddingCache",
    "resolve_cache_directory",
    "text_weights_fingerprint",
    "check_vocabulary",
    "parse_vocabulary",
    "split_synonyms",
    "TEMPLATE_SETS",
    "resolve_templates",
    "PromptTextEncoder",
    "average_templates",
]
