"""Text side shared by every method: templates, class-name parsing, encoder and cache."""
from .cache import TextEmbeddingCache, parameter_version_fingerprint
from .class_names import check_vocabulary, split_synonyms
from .templates import TEMPLATE_SETS, resolve_templates
from .text_encoder import PromptTextEncoder, average_templates

__all__ = [
    "TextEmbeddingCache",
    "parameter_version_fingerprint",
    "check_vocabulary",
    "split_synonyms",
    "TEMPLATE_SETS",
    "resolve_templates",
    "PromptTextEncoder",
    "average_templates",
]
