"""Class-name parsing: one vocabulary entry may list synonyms as "a, b" or "a; b"."""
from __future__ import annotations

import re
from typing import Sequence

__all__ = ["split_synonyms", "check_vocabulary", "parse_vocabulary", "SYNONYM_RULES"]

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


def parse_vocabulary(class_names: Sequence[str], synonym_rule: str) -> list[list[str]]:
    """Per class, the synonyms the method encodes (``synonym_rule`` "first": the first only;
    "mean": all). Raises a ValueError naming the problem: not a list of strings, empty
    vocabulary, an empty name, or two names that are the same class (same encoded synonyms,
    case-insensitive, e.g. "cat" and "Cat, kitten" under the "first" rule)."""
    if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
        raise ValueError(f"the vocabulary must be a list of class-name strings, got {class_names!r}")
    if synonym_rule not in SYNONYM_RULES:
        raise ValueError(f"synonym rule {synonym_rule!r} is not one of {SYNONYM_RULES}")
    check_vocabulary(class_names)
    parsed, owners, duplicates = [], {}, []
    for name in class_names:
        synonyms = split_synonyms(name)
        used = synonyms[:1] if synonym_rule == "first" else synonyms
        key = tuple(s.lower() for s in used)
        if key in owners:
            duplicates.append(f"{owners[key]!r} and {name!r}")
        owners.setdefault(key, name)
        parsed.append(used)
    if duplicates:
        raise ValueError(
            f"the vocabulary names the same class more than once (synonym rule {synonym_rule!r}): "
            + "; ".join(duplicates) + ". Remove or merge the duplicates."
        )
    return parsed
