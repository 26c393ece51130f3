"""Class names -> CLIP text embeddings with prompt templates, synonyms and caching.

Shared by every method: CAT-Seg (one template, first synonym), Talk2DINO (seven templates
averaged before its projection) and the baseline. Returns raw (not normalised) embeddings per
template so that each method combines them its own way.

Two cache levels: an in-memory LRU per vocabulary (keyed with the parameters' in-place version
counters, so nothing is hashed on a hit) and an optional persistent per-class-name cache on disk
(``disk_cache.py``, keyed with a content hash of the text tower computed once per weight version).
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from .cache import TextEmbeddingCache, parameter_version_fingerprint
from .disk_cache import PersistentTextEmbeddingCache, text_weights_fingerprint
from .class_names import SYNONYM_RULES, check_vocabulary, split_synonyms

__all__ = ["PromptTextEncoder", "average_templates"]


def average_templates(embeddings: torch.Tensor, *, normalize_first: bool = True) -> torch.Tensor:
    """T x P x C per-template embeddings -> T x C unit vectors (the usual prompt ensemble).

    With ``normalize_first`` each template's embedding is L2-normalised before the mean (CLIP's
    ensembling); otherwise raw embeddings are averaged (Talk2DINO). The mean is renormalised.
    """
    if normalize_first:
        embeddings = F.normalize(embeddings, dim=-1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


class PromptTextEncoder:
    """Encodes a vocabulary through a CLIP text tower.

    Args:
        encode_tokens: token ids N x L -> embeddings N x C (e.g. ``OpenCLIPBackbone.encode_text``).
        tokenizer: open_clip tokenizer, list[str] -> N x L ids.
        templates: prompt templates, each with one "{}".
        synonym_rule: "first" keeps the first synonym of "a, b"; "mean" averages them.
        parameters: the tensors the text embedding depends on (cache fingerprint).
        max_cached_vocabularies: LRU size of the in-memory cache.
        disk_cache: persistent per-class-name cache shared across processes (None: memory only).

    ``encoder_calls`` counts calls of ``encode_tokens`` (tests and benchmarks read it).
    """

    def __init__(
        self,
        *,
        encode_tokens: Callable[[torch.Tensor], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        templates: Sequence[str],
        synonym_rule: str,
        parameters: Callable[[], Iterable[torch.Tensor]],
        max_cached_vocabularies: int = 8,
        disk_cache: Optional[PersistentTextEmbeddingCache] = None,
    ):
        if synonym_rule not in SYNONYM_RULES:
            raise ValueError(f"MODEL.TEXT.SYNONYMS={synonym_rule!r} is not one of {SYNONYM_RULES}")
        self.encode_tokens = encode_tokens
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.synonym_rule = synonym_rule
        self.parameters = parameters
        self.cache = TextEmbeddingCache(max_cached_vocabularies)
        self.disk_cache = disk_cache
        self.encoder_calls = 0
        self._weights_fingerprint: Optional[tuple] = None  # (version fingerprint, content hash)

    def weights_fingerprint(self) -> str:
        """Content hash of the text tower, recomputed only when a parameter's version changes."""
        params = list(self.parameters())
        version = parameter_version_fingerprint(params)
        if self._weights_fingerprint is None or self._weights_fingerprint[0] != version:
            self._weights_fingerprint = (version, text_weights_fingerprint(params))
        return self._weights_fingerprint[1]

    def prompts_for(self, class_name: str) -> list[list[str]]:
        """Prompts of one class: one list per synonym used, each with one prompt per template."""
        synonyms = split_synonyms(class_name)
        if self.synonym_rule == "first":
            synonyms = synonyms[:1]
        return [[template.format(s) for template in self.templates] for s in synonyms]

    def _encode(self, class_names: Sequence[str], device: torch.device) -> torch.Tensor:
        prompts, owners = [], []
        for index, name in enumerate(class_names):
            for synonym_prompts in self.prompts_for(name):
                prompts += synonym_prompts
                owners.append(index)
        tokens = self.tokenizer(prompts).to(device)
        self.encoder_calls += 1
        features = self.encode_tokens(tokens)  # (S*P) x C, S synonyms in total
        per_synonym = features.view(len(owners), len(self.templates), -1)  # S x P x C
        owners_t = torch.tensor(owners, device=features.device)
        sums = torch.zeros(len(class_names), *per_synonym.shape[1:], device=features.device, dtype=features.dtype)
        sums = sums.index_add(0, owners_t, per_synonym)
        counts = torch.bincount(owners_t, minlength=len(class_names)).clamp(min=1).to(features.dtype)
        return sums / counts.view(-1, 1, 1)  # T x P x C

    def __call__(self, class_names: Sequence[str], *, device: torch.device, use_cache: Optional[bool] = None) -> torch.Tensor:
        """Embeddings T x P x C (raw) of ``class_names`` under each of the P templates.

        ``use_cache`` defaults to "no gradient can flow into the text tower" (gradients off, or
        no text parameter requires grad): training a text tower recomputes (differentiable)
        embeddings every step; evaluation, inference and training with a frozen text tower use
        the caches, which the fingerprints keep fresh after every weight change.
        """
        check_vocabulary(class_names)
        if use_cache is None:
            use_cache = not torch.is_grad_enabled() or not any(p.requires_grad for p in self.parameters())
        if not use_cache:
            return self._encode(class_names, device)
        key = (
            tuple(class_names),
            self.templates,
            self.synonym_rule,
            str(device),
            parameter_version_fingerprint(self.parameters()),
        )
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        # Cached embeddings are computed in full precision whatever autocast is active, so an
        # entry never depends on the precision of the run that made it.
        with torch.no_grad(), torch.autocast(torch.device(device).type, enabled=False):
            embeddings = self._encode_with_disk_cache(class_names, device)
        self.cache.put(key, embeddings)
        return embeddings

    def _encode_with_disk_cache(self, class_names: Sequence[str], device: torch.device) -> torch.Tensor:
        """Per class name: the disk entry if present and sound, else one encoder call for all the
        missing names (whose entries are then written)."""
        if self.disk_cache is None or not self.disk_cache.enabled:
            return self._encode(class_names, device)
        fingerprint = self.weights_fingerprint()
        found = {name: self.disk_cache.get(fingerprint, self.templates, self.synonym_rule, name) for name in class_names}
        missing = [name for name, value in found.items() if value is None]
        if missing:
            encoded = self._encode(missing, device)
            for name, embedding in zip(missing, encoded):
                self.disk_cache.put(fingerprint, self.templates, self.synonym_rule, name, embedding)
                found[name] = embedding
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)
        return torch.stack([found[name].to(device=device, dtype=dtype) for name in class_names])
