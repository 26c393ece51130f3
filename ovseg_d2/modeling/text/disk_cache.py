"""Persistent text-embedding cache: one small file per (text-tower weights, templates, class name).

Shared by training, evaluation, the predictor and the demo, across processes and runs: a second
run with the same vocabulary (or any vocabulary sharing class names) never calls the text encoder.

Key of an entry: a content hash of the text tower's parameters (``text_weights_fingerprint``),
the prompt templates, the synonym rule and the class name, plus ``FORMAT_VERSION``. An entry is a
``torch.save`` file holding the P x C float32 embedding (one row per template), the key text and
a SHA-256 of the tensor bytes; it is read with ``torch.load(weights_only=True)``. Writes go to a
temporary file renamed over the entry (``os.replace``), so concurrent processes never see half a
file; an entry that fails to load, names another key or fails its checksum is reported, removed
and recomputed, never trusted. Disk errors (read-only or full disk) turn the cache off for the
process with a warning: it is an optimisation, never a reason to fail.

Layout: ``<directory>/<weights fingerprint[:16]>/<sha256 of the key text>.pt``; deleting the
directory is always safe.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from typing import Iterable, Optional, Sequence

import torch

from ...checkpoint import atomic_write

__all__ = [
    "PersistentTextEmbeddingCache",
    "text_weights_fingerprint",
    "resolve_cache_directory",
    "DEFAULT_CACHE_DIR_VALUE",
    "FORMAT_VERSION",
]

logger = logging.getLogger(__name__)

#: bump when the meaning of a stored embedding changes (encoder output convention, file layout)
FORMAT_VERSION = 1
#: ``MODEL.TEXT.EMBEDDING_CACHE_DIR`` value meaning "the user cache directory"
DEFAULT_CACHE_DIR_VALUE = "auto"
_CACHE_SUBDIR = os.path.join("ovseg_d2", "text_embeddings")
_FINGERPRINT_DIR_CHARS = 16  # weights-fingerprint characters naming an entry's folder
_ENTRY_SUFFIX = ".pt"


def resolve_cache_directory(value: str) -> Optional[str]:
    """Directory named by ``MODEL.TEXT.EMBEDDING_CACHE_DIR``: ``""`` -> None (cache off);
    ``"auto"`` -> ``$XDG_CACHE_HOME/ovseg_d2/text_embeddings`` (default ``~/.cache/...``);
    anything else -> that path with ``~`` and environment variables expanded."""
    if not value:
        return None
    if value == DEFAULT_CACHE_DIR_VALUE:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, _CACHE_SUBDIR)
    return os.path.expanduser(os.path.expandvars(value))


def text_weights_fingerprint(params: Iterable[torch.Tensor]) -> str:
    """SHA-256 (hex) of the text tower's parameters: order, shapes, dtypes and raw bytes.

    Costs one pass over the weights (about 0.3 s for ViT-B/16's text tower on a CPU core);
    ``PromptTextEncoder`` computes it once per weight version, not per call.
    """
    digest = hashlib.sha256(f"ovseg_d2 text tower v{FORMAT_VERSION}".encode())
    for p in params:
        t = p.detach()
        digest.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        t = t.to("cpu").contiguous()
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _entry_key_text(weights_fingerprint: str, templates: Sequence[str], synonym_rule: str, class_name: str) -> str:
    return json.dumps(
        {"format": FORMAT_VERSION, "weights": weights_fingerprint, "templates": list(templates),
         "synonyms": synonym_rule, "class": class_name},
        sort_keys=True,
    )


def _tensor_checksum(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


class PersistentTextEmbeddingCache:
    """Per-class-name embeddings on disk under ``directory`` (created on first write).

    ``hits``/``misses``/``corrupt`` count lookups, for tests and logs.
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def entry_path(self, weights_fingerprint: str, templates: Sequence[str], synonym_rule: str, class_name: str) -> str:
        key = _entry_key_text(weights_fingerprint, templates, synonym_rule, class_name)
        name = hashlib.sha256(key.encode()).hexdigest() + _ENTRY_SUFFIX
        return os.path.join(self.directory, weights_fingerprint[:_FINGERPRINT_DIR_CHARS], name)

    def _disable(self, action: str, path: str, error: OSError) -> None:
        self.enabled = False
        logger.warning(
            "text-embedding cache turned off for this process: could not %s %s (%s). Set "
            "MODEL.TEXT.EMBEDDING_CACHE_DIR to a writable directory, or '' to silence this.", action, path, error
        )

    def get(self, weights_fingerprint: str, templates: Sequence[str], synonym_rule: str, class_name: str) -> Optional[torch.Tensor]:
        """The P x C float32 CPU embedding of ``class_name``, or None (absent, corrupt or disabled)."""
        if not self.enabled:
            return None
        path = self.entry_path(weights_fingerprint, templates, synonym_rule, class_name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as e:
            self._disable("read", path, e)
            return None
        key = _entry_key_text(weights_fingerprint, templates, synonym_rule, class_name)
        try:
            entry = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            embedding = entry["embedding"]
            problem = None
            if entry.get("key") != key:
                problem = "it belongs to another key"
            elif not isinstance(embedding, torch.Tensor) or embedding.dim() != 2 or embedding.shape[0] != len(templates):
                problem = "its tensor has the wrong shape"
            elif entry.get("checksum") != _tensor_checksum(embedding):
                problem = "its checksum does not match"
        except Exception as e:  # truncated or garbled file: torch raises various error types
            problem = f"it cannot be read ({type(e).__name__}: {e})"
        if problem is not None:
            self.corrupt += 1
            self.misses += 1
            logger.warning("text-embedding cache entry %s is corrupt (%s): recomputing it", path, problem)
            try:
                os.unlink(path)
            except OSError:
                pass
            return None
        self.hits += 1
        return embedding

    def put(self, weights_fingerprint: str, templates: Sequence[str], synonym_rule: str, class_name: str, embedding: torch.Tensor) -> None:
        """Store a P x C embedding atomically (float32, CPU)."""
        if not self.enabled:
            return
        path = self.entry_path(weights_fingerprint, templates, synonym_rule, class_name)
        embedding = embedding.detach().to("cpu", torch.float32).contiguous().clone()
        entry = {
            "key": _entry_key_text(weights_fingerprint, templates, synonym_rule, class_name),
            "embedding": embedding,
            "checksum": _tensor_checksum(embedding),
        }
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, lambda f: torch.save(entry, f))
        except OSError as e:
            self._disable("write", path, e)
