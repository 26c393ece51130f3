"""In-memory text-embedding cache keyed by vocabulary, templates and the text tower's state.

Evaluation encodes the same vocabulary for every image; the cache makes that a one-off. The
key includes a fingerprint of the text tower's parameters built from each tensor's identity
and in-place version counter: an optimizer step, ``load_state_dict`` or any in-place update
bumps the counter, so embeddings made before a weight change are never served after it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Iterable, Optional

import torch

__all__ = ["TextEmbeddingCache", "parameter_version_fingerprint"]


def parameter_version_fingerprint(params: Iterable[torch.Tensor]) -> tuple:
    """A cheap key that changes whenever any of ``params`` is replaced or modified in place."""
    return tuple((id(p), p._version, p.device.type, p.dtype) for p in params)


class TextEmbeddingCache:
    """A small LRU map from a hashable key to a detached embedding tensor."""

    def __init__(self, max_entries: int = 8):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: "OrderedDict[Hashable, torch.Tensor]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Optional[torch.Tensor]:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        self._entries[key] = value.detach()
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
