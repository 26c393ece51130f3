"""Prompt-template sets, by name (``MODEL.TEXT.TEMPLATE_SET``). Each template has one ``{}``."""
from __future__ import annotations

from typing import Sequence

__all__ = ["TEMPLATE_SETS", "resolve_templates"]

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    # CAT-Seg's released configs: a single template.
    "catseg": ("A photo of a {} in the scene",),
    # Talk2DINO's seven inference templates; raw embeddings are averaged before its projection.
    "talk2dino": (
        "itap of a {}.",
        "a bad photo of a {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ),
    # The plain CLIP prompt.
    "photo": ("a photo of a {}.",),
}


def resolve_templates(template_set: str, explicit: Sequence[str] = ()) -> tuple[str, ...]:
    """The templates to use: ``explicit`` when given, else the named set.

    Raises a ValueError naming the known sets, or the template lacking its ``{}``.
    """
    if explicit:
        templates = tuple(explicit)
    elif template_set in TEMPLATE_SETS:
        templates = TEMPLATE_SETS[template_set]
    else:
        raise ValueError(f"MODEL.TEXT.TEMPLATE_SET={template_set!r} is unknown; known sets: {sorted(TEMPLATE_SETS)}")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' for the class name")
    return templates
