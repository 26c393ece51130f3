"""Reading COCO annotation JSONs and checking the files they list, for the lazy COCO loaders.

Shared by the caption, image-list and panoptic loaders so that they fail the same way as the
semantic-segmentation sets: a :class:`FileNotFoundError` naming what is missing, where it was
expected, ``$DETECTRON2_DATASETS`` and how to get the data, raised at first use (never at
registration).

``instances_train2017.json`` is 448 MB, nearly all of it instance masks; listing its images must
not cost a full parse (tens of seconds, several GB of memory), so :func:`read_top_level_list`
decodes just the one top-level array it is asked for.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from .register_sem_seg import DATASETS_ROOT_ENV, DEFAULT_DATASETS_ROOT

__all__ = ["missing_data_error", "require_file", "require_folder", "read_json", "read_top_level_list", "check_files_present"]

#: How many missing files an error message lists before summarising the rest.
_MAX_LISTED_MISSING = 5


def missing_data_error(name: str, problem: str, expected: Mapping[str, Any], prepare_hint: str) -> FileNotFoundError:
    """The error every COCO loader raises when data is absent: what, where, and how to fix it."""
    env_value = os.environ.get(DATASETS_ROOT_ENV)
    env_text = (
        f"{DATASETS_ROOT_ENV}={env_value}" if env_value else f"{DATASETS_ROOT_ENV} is unset, so ./{DEFAULT_DATASETS_ROOT} is used"
    )
    listed = "".join(f"\n  expected {what}: {path}" for what, path in expected.items())
    return FileNotFoundError(
        f"Data set '{name}' is not ready: {problem}{listed}\n"
        f"  data sets are looked up under $DETECTRON2_DATASETS ({env_text})\n"
        f"  to prepare it: {prepare_hint}"
    )


def require_file(path: Path, what: str, name: str, expected: Mapping[str, Any], prepare_hint: str) -> None:
    if not Path(path).is_file():
        raise missing_data_error(name, f"the {what} {path} does not exist.", expected, prepare_hint)


def require_folder(path: Path, what: str, name: str, expected: Mapping[str, Any], prepare_hint: str) -> None:
    if not Path(path).is_dir():
        raise missing_data_error(name, f"the {what} folder {path} does not exist.", expected, prepare_hint)


def read_json(path: Path) -> Any:
    """Parse a whole JSON file; a malformed file raises ValueError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot parse {path}: {err}. Re-download or re-extract it.") from err


def read_top_level_list(path: Path, key: str, *, required_fields: Iterable[str] = ()) -> list:
    """The list stored under top-level ``key`` of a JSON object file, without parsing the rest.

    COCO files are objects whose keys map to large arrays; a quoted key followed by ``:`` can
    only be a key (string contents escape their quotes), so the first ``"key": [`` whose array
    decodes and whose items carry ``required_fields`` is taken. A file whose text does not end
    the object (a truncated download) or holds no such array is parsed in full as a fallback,
    which reports what is wrong with it.
    """
    text = Path(path).read_text(encoding="utf-8")
    fields = tuple(required_fields)
    if text.rstrip().endswith("}"):
        decoder = json.JSONDecoder()
        for match in re.finditer(r'"%s"\s*:\s*\[' % re.escape(key), text):
            try:
                value, _ = decoder.raw_decode(text, match.end() - 1)
            except ValueError:
                continue
            if all(isinstance(item, dict) and all(f in item for f in fields) for item in value):
                return value
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ValueError(f"cannot parse {path}: {err}. Re-download or re-extract it.") from err
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise ValueError(f"{path} has no top-level '{key}' list; is it a COCO annotation file?")
    return value


def check_files_present(
    folder: Path, file_names: Iterable[str], what: str, name: str, expected: Mapping[str, Any], prepare_hint: str
) -> None:
    """Every name in ``file_names`` exists in ``folder`` (one directory listing, no per-file stat)."""
    present = set(os.listdir(folder))
    wanted = list(dict.fromkeys(file_names))
    missing = [n for n in wanted if n not in present]
    if missing:
        listed = ", ".join(str(Path(folder) / n) for n in missing[:_MAX_LISTED_MISSING])
        more = f" and {len(missing) - _MAX_LISTED_MISSING} more" if len(missing) > _MAX_LISTED_MISSING else ""
        raise missing_data_error(
            name, f"{len(missing)} of {len(wanted)} {what} are missing: {listed}{more}.", expected, prepare_hint
        )
