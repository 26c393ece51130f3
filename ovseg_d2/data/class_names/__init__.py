"""Class-name lists shipped with the package, one JSON list per data set.

Each ``<name>.json`` in this folder is a JSON list of strings in class-index order; a name with
synonyms is written ``"a, b"``. Registrars read them with :func:`load_class_names` and put them
in ``MetadataCatalog`` as ``stuff_classes``, so the vocabulary a result was computed with is
always a file in the package, never a list typed into code.
"""
from __future__ import annotations

import json
from importlib import resources

__all__ = ["load_class_names", "available_class_name_files"]

_JSON_SUFFIX = ".json"


def available_class_name_files() -> list[str]:
    """Names ``<name>`` of every ``<name>.json`` shipped in this folder, sorted."""
    folder = resources.files(__name__)
    return sorted(
        entry.name[: -len(_JSON_SUFFIX)]
        for entry in folder.iterdir()
        if entry.name.endswith(_JSON_SUFFIX)
    )


def load_class_names(name: str) -> list[str]:
    """Read the class names of data set ``name`` from ``ovseg_d2/data/class_names/<name>.json``.

    Returns:
        The names in class-index order (index ``i`` of the list is label value ``i``).

    Raises:
        FileNotFoundError: no such file is shipped (the message lists the ones that are).
        ValueError: the file is not a JSON list of non-empty strings.
    """
    resource = resources.files(__name__).joinpath(name + _JSON_SUFFIX)
    if not resource.is_file():
        raise FileNotFoundError(
            f"No class-name file {name + _JSON_SUFFIX!r} in package {__name__}; "
            f"available: {available_class_name_files()}"
        )
    names = json.loads(resource.read_text(encoding="utf-8"))
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{name + _JSON_SUFFIX} must be a JSON list of non-empty strings")
    return names
