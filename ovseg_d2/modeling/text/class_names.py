"""Class-name parsing: one vocabulary entry may list synonyms as "a, b" or "a; b"."""
from __future__ import annotations

import re
from typing import Sequence

__all__ = ["split_synonyms", "SYNONYM_RULES"]

SYNONYM_RULES = ("first", "mean")
_SEPARATORS = re.compile(r"\s*[,;]\s*")


def split_synonyms(name: str) -> list[str]:
    """"cat, kitten; kitty" -> ["cat", "kitten", "kitty"]. Empty names raise ValueError."""
    synonyms = [s for s in _SEPARATORS.split(name.strip()) if s]
    if not synonyms:
        raise ValueError(f"class name {name!r} is empty")
    return synonyms


def check_vocabulary(class_names: Sequence[str]) -> None:
    """Reject an empty vocabulary or duplicate names with a message naming them."""
    if len(class_names) == 0:
        raise ValueError("the vocabulary is empty: give at least one class name")
    seen: dict[str, int] = {}
    duplicates = []
    for name in class_names:
        key = name.strip().lower()
        if key in seen:
            duplicates.append(name)
        seen[key] = 1
    if duplicates:
        raise ValueError(f"the vocabulary names these classes more than once: {duplicates}")
