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

# Sets taken from open_clip on first use (open_clip is not imported at ovseg_d2's import time):
# name -> attribute of ``open_clip.zero_shot_metadata`` (a list of ``lambda c: ...`` templates).
OPEN_CLIP_TEMPLATE_SETS: dict[str, str] = {
    # OpenAI's 80 ImageNet prompts, the usual prompt ensemble of zero-shot CLIP evaluation
    # (CLIPSelf's region classification).
    "openai_imagenet": "OPENAI_IMAGENET_TEMPLATES",
}


def _open_clip_templates(name: str) -> tuple[str, ...]:
    from open_clip import zero_shot_metadata

    return tuple(template("{}") for template in getattr(zero_shot_metadata, OPEN_CLIP_TEMPLATE_SETS[name]))


def resolve_templates(template_set: str, explicit: Sequence[str] = ()) -> tuple[str, ...]:
    """The templates to use: ``explicit`` when given, else the named set.

    Raises a ValueError naming the known sets, or the template lacking its ``{}``.
    """
    if explicit:
        templates = tuple(explicit)
    elif template_set in TEMPLATE_SETS:
        templates = TEMPLATE_SETS[template_set]
    elif template_set in OPEN_CLIP_TEMPLATE_SETS:
        templates = _open_clip_templates(template_set)
    else:
        known = sorted(TEMPLATE_SETS) + sorted(OPEN_CLIP_TEMPLATE_SETS)
        raise ValueError(f"MODEL.TEXT.TEMPLATE_SET={template_set!r} is unknown; known sets: {known}")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' for the class name")
    return templates
