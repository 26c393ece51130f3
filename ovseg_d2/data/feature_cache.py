"""Talk2DINO's feature cache: the frozen backbones' outputs for a caption data set, computed once.

Talk2DINO trains only ψ; DINOv2 and CLIP's text tower are frozen and the caption images are
prepared without augmentation (resize short side + centre crop, ``caption_mapper.py``), so an
image's per-head embeddings and a caption's CLIP text feature are the same at every epoch.
``tools/extract_features.py`` (:func:`write_feature_cache`) computes them once; with
``INPUT.CAPTION.FEATURE_CACHE_DIR`` set, the caption mapper (:class:`FeatureCacheReader`) emits
them instead of the image and the caption string, and Talk2DINO then runs ψ only. The loss is the
same as from images (``tests/test_feature_cache.py``).

Layout of a cache directory::

    manifest.json                  format, frozen-weight fingerprints, image size, data sets
    <data set name>/images.json    [[image_id, file basename], ...]   row order of the arrays
    <data set name>/captions.json  [[caption_id, image_id], ...]
    <data set name>/head_embeddings.npy   float32 (num_images, heads, D_v): attention-weighted
                                          per-head embeddings (not normalised)
    <data set name>/caption_features.npy  float32 (num_captions, C): raw CLIP ``encode_text``

Arrays are plain ``.npy`` files, read memory-mapped (``np.load(mmap_mode="r")``, no pickle), so
data-loader workers share the pages and COCO's 83 k x 12 x 768 floats (3 GB) are not copied per
worker.

Staleness. The manifest records
* a SHA-256 of the frozen weights (DINOv2 parameters, buffers and pixel mean/std; the CLIP text
  tower's parameters): the trainer refuses a cache whose fingerprints differ from the model's
  after its weights are loaded (:func:`check_feature_cache`), at the start of training and of
  every evaluation that reads the cache;
* per data set, a SHA-256 of its dicts (image ids, file basenames, sizes, caption ids, caption
  texts): the mapper refuses a cache whose data set changed;
* ``INPUT.CAPTION.IMAGE_SIZE`` and the preprocessing version: the mapper refuses another size.
The image files' bytes are not hashed (that would mean reading every image again): replacing an
image file under the same name is not detected.

Which sets are read from the cache: every caption set the cache holds. A training set it does
not hold is an error (the cache was asked for); a test set it does not hold is read from images.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import weakref
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "FEATURE_CACHE_FORMAT",
    "FEATURE_CACHE_VERSION",
    "MANIFEST_NAME",
    "PREPROCESSING",
    "FeatureCacheError",
    "FeatureCacheReader",
    "open_feature_cache",
    "read_manifest",
    "dataset_fingerprint",
    "frozen_weights_fingerprints",
    "check_feature_cache",
    "write_feature_cache",
]

logger = logging.getLogger(__name__)

FEATURE_CACHE_FORMAT = "ovseg_d2.talk2dino_feature_cache"
#: bump when the meaning or layout of stored features changes
FEATURE_CACHE_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: the caption mapper's image preparation the cached embeddings were computed with
PREPROCESSING = "caption_mapper: short side to IMAGE_SIZE (bicubic), centre crop, no augmentation; v1"
_HEADS_FILE = "head_embeddings.npy"
_TEXT_FILE = "caption_features.npy"
_IMAGES_FILE = "images.json"
_CAPTIONS_FILE = "captions.json"
_CONFIG_KEY = "INPUT.CAPTION.FEATURE_CACHE_DIR"
_REWRITE_HINT = (
    "Re-run tools/extract_features.py with this config (--overwrite replaces the old cache, or choose "
    f"another --output), or set {_CONFIG_KEY} '' to train from images."
)


class FeatureCacheError(ValueError):
    """A feature cache that cannot be used as asked: missing, malformed or stale."""


# ---------------------------------------------------------------------------------------------
# fingerprints
def dataset_fingerprint(dataset_dicts: Sequence[dict]) -> str:
    """SHA-256 (hex) of what a caption set's cached features depend on: per caption, in
    (image_id, caption_id) order, the image id, file basename, height, width, caption id and text.
    Basenames, not paths: moving the data set root keeps the cache valid."""
    digest = hashlib.sha256(f"{FEATURE_CACHE_FORMAT} data set v{FEATURE_CACHE_VERSION}".encode())
    rows = sorted(
        (
            json.dumps(
                [d["image_id"], os.path.basename(d["file_name"]), d.get("height"), d.get("width"), d["caption_id"], d["caption"]]
            )
            for d in dataset_dicts
        )
    )
    for row in rows:
        digest.update(row.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _tensors_digest(tag: str, named: Iterable[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256(f"{FEATURE_CACHE_FORMAT} {tag} v{FEATURE_CACHE_VERSION}".encode())
    for name, t in named:
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# model -> (parameter versions, fingerprints): hashing ViT-B takes about a second, done once per weight version
_FINGERPRINT_MEMO: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def frozen_weights_fingerprints(model: torch.nn.Module) -> dict[str, str]:
    """``{"dinov2": sha256, "clip_text": sha256}`` of a Talk2DINO's frozen parts.

    DINOv2: every tensor of its state dict (parameters and buffers, by name) plus the pixel
    mean/std it normalises with. CLIP text: the tower's parameters (``text_parameters()``).

    Raises:
        FeatureCacheError: the model has no ``dinov2`` / ``text_tower`` (not Talk2DINO).
    """
    model = model.module if hasattr(model, "module") else model
    dinov2, text = getattr(model, "dinov2", None), getattr(model, "text_tower", None)
    if dinov2 is None or text is None or not hasattr(model, "head_embeddings_from_inputs"):
        raise FeatureCacheError(
            f"{type(model).__name__} has no frozen DINOv2 / CLIP text tower to cache features of: {_CONFIG_KEY} and "
            f"tools/extract_features.py work with MODEL.META_ARCHITECTURE Talk2DINO. Set {_CONFIG_KEY} ''."
        )
    tensors = [*dinov2.state_dict(keep_vars=True).values(), dinov2.pixel_mean, dinov2.pixel_std, *text.text_parameters()]
    version = tuple((id(t), t._version, t.data_ptr()) for t in tensors)
    memo = _FINGERPRINT_MEMO.get(model)
    if memo is not None and memo[0] == version:
        return dict(memo[1])
    named_dinov2 = [*dinov2.state_dict().items(), ("pixel_mean", dinov2.pixel_mean), ("pixel_std", dinov2.pixel_std)]
    result = {
        "dinov2": _tensors_digest("dinov2", named_dinov2),
        "clip_text": _tensors_digest("clip_text", ((str(i), p) for i, p in enumerate(text.text_parameters()))),
    }
    _FINGERPRINT_MEMO[model] = (version, result)
    return dict(result)


def _model_description(cfg) -> dict[str, Any]:
    """The config keys that chose the frozen weights (recorded for the error messages)."""
    if cfg is None:
        return {}
    d, c = cfg.MODEL.DINOV2, cfg.MODEL.CLIP
    return {
        "MODEL.META_ARCHITECTURE": cfg.MODEL.META_ARCHITECTURE,
        "MODEL.WEIGHTS": cfg.MODEL.WEIGHTS,
        "MODEL.DINOV2.MODEL_NAME": d.MODEL_NAME,
        "MODEL.DINOV2.PRETRAINED": d.PRETRAINED,
        "MODEL.DINOV2.EMBED_DIM": d.EMBED_DIM,
        "MODEL.DINOV2.DEPTH": d.DEPTH,
        "MODEL.DINOV2.NUM_HEADS": d.NUM_HEADS,
        "MODEL.CLIP.MODEL_NAME": c.MODEL_NAME,
        "MODEL.CLIP.PRETRAINED": c.PRETRAINED,
        "MODEL.CLIP.FORCE_QUICK_GELU": c.FORCE_QUICK_GELU,
        "SEED": cfg.SEED,  # randomly initialised frozen parts (PRETRAINED "") depend on it
    }


# ---------------------------------------------------------------------------------------------
# reading
def _dataset_dir(directory: str, name: str) -> str:
    if os.sep in name or (os.altsep and os.altsep in name) or name in ("", ".", ".."):
        raise FeatureCacheError(f"data set name {name!r} cannot name a cache folder")
    return os.path.join(directory, name)


def read_manifest(directory: str) -> dict:
    """The manifest of the cache in ``directory``.

    Raises:
        FeatureCacheError: no such directory, no manifest (not a cache, or an extraction that did
            not finish), or a manifest of another format/version.
    """
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isdir(directory):
        raise FeatureCacheError(
            f"{_CONFIG_KEY}={directory!r} does not exist. Write it with tools/extract_features.py --output {directory!r}, "
            f"or set {_CONFIG_KEY} '' to train from images."
        )
    if not os.path.isfile(path):
        raise FeatureCacheError(
            f"{directory!r} has no {MANIFEST_NAME}: it is not a feature cache written by tools/extract_features.py "
            "(or that run did not finish). Point it at a finished cache or re-run the extraction."
        )
    with open(path, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise FeatureCacheError(f"{path} is not valid JSON ({e}); re-run tools/extract_features.py") from e
    if manifest.get("format") != FEATURE_CACHE_FORMAT or manifest.get("version") != FEATURE_CACHE_VERSION:
        raise FeatureCacheError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, but this ovseg_d2 reads "
            f"{FEATURE_CACHE_FORMAT!r} version {FEATURE_CACHE_VERSION}. {_REWRITE_HINT}"
        )
    return manifest


class FeatureCacheReader:
    """Cached features of the caption sets ``dataset_names`` (all of which the cache must hold).

    ``lookup(image_id, caption_id)`` -> ``{"dino_head_embeddings": float32 (heads, D_v),
    "caption_text_feature": float32 (C,)}`` (fresh tensors).

    Args:
        directory: a cache written by :func:`write_feature_cache`.
        dataset_names: registered caption sets; their dicts are fingerprinted against the manifest.
        cfg: when given, ``INPUT.CAPTION.IMAGE_SIZE`` must be the cache's.

    Raises:
        FeatureCacheError: missing cache or data set, changed data set, other image size, an image
            id in two of the data sets.
    """

    def __init__(self, directory: str, dataset_names: Sequence[str], cfg=None):
        from detectron2.data import DatasetCatalog

        self.directory = directory
        self.manifest = read_manifest(directory)
        self.dataset_names = list(dataset_names)
        if cfg is not None and int(cfg.INPUT.CAPTION.IMAGE_SIZE) != int(self.manifest["image_size"]):
            raise FeatureCacheError(
                f"feature cache {directory!r} holds embeddings of {self.manifest['image_size']}-px images, but "
                f"INPUT.CAPTION.IMAGE_SIZE is {cfg.INPUT.CAPTION.IMAGE_SIZE}. Set INPUT.CAPTION.IMAGE_SIZE "
                f"{self.manifest['image_size']} to use it. {_REWRITE_HINT}"
            )
        if self.manifest.get("preprocessing") != PREPROCESSING:
            raise FeatureCacheError(
                f"feature cache {directory!r} was written with image preparation {self.manifest.get('preprocessing')!r}, "
                f"this ovseg_d2 prepares caption images as {PREPROCESSING!r}. {_REWRITE_HINT}"
            )
        missing = [n for n in self.dataset_names if n not in self.manifest["datasets"]]
        if missing:
            raise FeatureCacheError(
                f"feature cache {directory!r} holds {sorted(self.manifest['datasets'])}, not {missing}. Extract them "
                f"(tools/extract_features.py --datasets {','.join(missing)} --output <new folder>) or set {_CONFIG_KEY} ''."
            )
        self._images: dict[Any, tuple[str, int]] = {}  # image_id -> (data set, row)
        self._captions: dict[Any, tuple[str, int, Any]] = {}  # caption_id -> (data set, row, image_id)
        self._heads: dict[str, np.ndarray] = {}
        self._text: dict[str, np.ndarray] = {}
        for name in self.dataset_names:
            entry = self.manifest["datasets"][name]
            current = dataset_fingerprint(DatasetCatalog.get(name))
            if current != entry["fingerprint"]:
                raise FeatureCacheError(
                    f"feature cache {directory!r} is stale for data set {name!r}: its images or captions changed since the "
                    f"cache was written (data set fingerprint {entry['fingerprint'][:12]}, now {current[:12]}). {_REWRITE_HINT}"
                )
            folder = _dataset_dir(directory, name)
            with open(os.path.join(folder, _IMAGES_FILE), encoding="utf-8") as f:
                images = json.load(f)
            with open(os.path.join(folder, _CAPTIONS_FILE), encoding="utf-8") as f:
                captions = json.load(f)
            for row, (image_id, _) in enumerate(images):
                if image_id in self._images:
                    raise FeatureCacheError(
                        f"image id {image_id!r} is in both {self._images[image_id][0]!r} and {name!r}: the cache looks "
                        "images up by id, so train on these sets from images or from separate runs."
                    )
                self._images[image_id] = (name, row)
            for row, (caption_id, image_id) in enumerate(captions):
                if caption_id in self._captions:
                    raise FeatureCacheError(
                        f"caption id {caption_id!r} is in both {self._captions[caption_id][0]!r} and {name!r}: the cache "
                        "looks captions up by id, so train on these sets from images or from separate runs."
                    )
                self._captions[caption_id] = (name, row, image_id)
            heads, text = self._open_arrays(name)
            if heads.shape[0] != len(images) or text.shape[0] != len(captions):
                raise FeatureCacheError(
                    f"feature cache {directory!r}, {name!r}: arrays of {heads.shape[0]} images / {text.shape[0]} "
                    f"captions but index files of {len(images)} / {len(captions)}: the cache is damaged. {_REWRITE_HINT}"
                )

    def _open_arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The data set's arrays, memory-mapped read-only (opened once per process)."""
        if name not in self._heads:
            folder = _dataset_dir(self.directory, name)
            self._heads[name] = np.load(os.path.join(folder, _HEADS_FILE), mmap_mode="r", allow_pickle=False)
            self._text[name] = np.load(os.path.join(folder, _TEXT_FILE), mmap_mode="r", allow_pickle=False)
        return self._heads[name], self._text[name]

    def __getstate__(self) -> dict:
        # data-loader workers started by spawn re-open the memory maps instead of receiving copies
        state = dict(self.__dict__)
        state["_heads"], state["_text"] = {}, {}
        return state

    def lookup(self, image_id, caption_id) -> dict[str, torch.Tensor]:
        try:
            image_set, image_row = self._images[image_id]
            caption_set, caption_row, caption_image = self._captions[caption_id]
        except KeyError as e:
            raise FeatureCacheError(
                f"feature cache {self.directory!r} has no entry for image {image_id!r} / caption {caption_id!r}. {_REWRITE_HINT}"
            ) from e
        if caption_image != image_id:
            raise FeatureCacheError(
                f"feature cache {self.directory!r}: caption {caption_id!r} belongs to image {caption_image!r} there, "
                f"not {image_id!r}. {_REWRITE_HINT}"
            )
        heads, text = self._open_arrays(image_set)[0], self._open_arrays(caption_set)[1]
        return {
            "dino_head_embeddings": torch.from_numpy(np.array(heads[image_row], dtype=np.float32)),
            "caption_text_feature": torch.from_numpy(np.array(text[caption_row], dtype=np.float32)),
        }


def open_feature_cache(cfg, dataset_names: Sequence[str], is_train: bool) -> Optional[FeatureCacheReader]:
    """The reader the caption mapper uses for ``dataset_names``, or None (read images).

    None when ``INPUT.CAPTION.FEATURE_CACHE_DIR`` is empty, and for test sets the cache does not
    hold (logged). Training sets the cache does not hold are an error (:class:`FeatureCacheReader`).
    """
    directory = cfg.INPUT.CAPTION.FEATURE_CACHE_DIR
    if not directory:
        return None
    if not is_train:
        held = read_manifest(directory)["datasets"]
        absent = [n for n in dataset_names if n not in held]
        if absent:
            logger.info("feature cache %s does not hold %s: reading its images", directory, absent)
            return None
    return FeatureCacheReader(directory, dataset_names, cfg=cfg)


def check_feature_cache(cfg, model: torch.nn.Module, dataset_names: Sequence[str]) -> None:
    """Refuse a cache written with other frozen weights than ``model``'s (after weights loading).

    Does nothing when ``INPUT.CAPTION.FEATURE_CACHE_DIR`` is empty or holds none of
    ``dataset_names`` (those sets are then read from images, or refused by the mapper).

    Raises:
        FeatureCacheError: the fingerprints differ (names which part and the recorded config).
    """
    directory = cfg.INPUT.CAPTION.FEATURE_CACHE_DIR
    if not directory:
        return
    manifest = read_manifest(directory)
    if not any(n in manifest["datasets"] for n in dataset_names):
        return
    current = frozen_weights_fingerprints(model)
    recorded = manifest["frozen_weights"]
    stale = [part for part in ("dinov2", "clip_text") if recorded.get(part) != current[part]]
    if stale:
        now = _model_description(cfg)
        then = manifest.get("model_config", {})
        changed = {k: (then.get(k), v) for k, v in now.items() if then.get(k) != v and k != "MODEL.META_ARCHITECTURE"}
        parts = ", ".join(
            f"{'DINOv2' if p == 'dinov2' else 'CLIP text tower'} {recorded.get(p, '?')[:12]} in the cache, {current[p][:12]} in the model"
            for p in stale
        )
        if changed:
            config = "; config keys that differ (cache -> now): " + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        else:
            config = "; the config keys choosing them are unchanged, so the weight files (or MODEL.WEIGHTS) changed on disk"
        raise FeatureCacheError(
            f"feature cache {directory!r} is stale: it was written with other frozen weights ({parts}){config}. {_REWRITE_HINT}"
        )


# ---------------------------------------------------------------------------------------------
# writing
def _prepare_output(output: str, overwrite: bool) -> None:
    if os.path.lexists(output):
        if not os.path.isdir(output) or os.path.islink(output):
            raise FileExistsError(f"--output {output!r} exists and is not a folder; choose another --output")
        if os.listdir(output):
            if not overwrite:
                raise FileExistsError(
                    f"--output {output!r} already exists and is not empty; pass --overwrite to replace the feature cache "
                    "there, or choose another --output"
                )
            if not os.path.isfile(os.path.join(output, MANIFEST_NAME)):
                raise FileExistsError(
                    f"--output {output!r} is not empty and is not a feature cache (no {MANIFEST_NAME}); refusing to delete "
                    "it even with --overwrite. Choose another --output."
                )


class _MapBatch:
    """Collate function of the extraction loader: the caption mapper over a batch (in the workers)."""

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, batch: list[dict]) -> list[dict]:
        return [self.mapper(d) for d in batch]


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_feature_cache(
    model: torch.nn.Module,
    cfg,
    dataset_names: Sequence[str],
    output: str,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run ``model``'s frozen DINOv2 over every image and its CLIP text tower over every caption of
    ``dataset_names``, and write the cache to ``output`` (layout in the module doc).

    Images go through the caption mapper of ``cfg`` (``INPUT.CAPTION.IMAGE_SIZE``, ``INPUT.FORMAT``)
    and ``model.head_embeddings_from_inputs``; captions through ``model.encode_captions``: the code
    training from images runs, so the features are those it would compute.

    The cache is written to a temporary sibling folder and renamed onto ``output`` when complete:
    an interrupted run leaves ``output`` as it was. An existing non-empty ``output`` is an error
    unless ``overwrite`` (and then only if it is a feature cache). Returns the manifest.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from tqdm import tqdm

    from .mappers.caption_mapper import CaptionDatasetMapper

    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    output = os.path.abspath(output)
    dataset_names = list(dict.fromkeys(dataset_names))
    if not dataset_names:
        raise ValueError("no data sets to extract: give --datasets or set DATASETS.TRAIN")
    for name in dataset_names:
        if name not in DatasetCatalog.list():
            known = sorted(n for n in DatasetCatalog.list() if getattr(MetadataCatalog.get(n), "evaluator_type", None) == "captions")
            raise ValueError(f"data set {name!r} is not registered; registered caption sets: {known}")
        evaluator_type = getattr(MetadataCatalog.get(name), "evaluator_type", None)
        if evaluator_type != "captions":
            raise ValueError(
                f"{name!r} is not a caption data set (evaluator_type {evaluator_type!r}, not 'captions'): the feature cache "
                "stores Talk2DINO's caption training inputs, e.g. coco_2014_train_captions or ovseg_shapes_train_captions"
            )
        _dataset_dir(output, name)
    _prepare_output(output, overwrite)
    core = model.module if hasattr(model, "module") else model
    fingerprints = frozen_weights_fingerprints(core)  # also checks that this is a Talk2DINO
    was_training = core.training
    core.eval()
    mapper = CaptionDatasetMapper(image_size=cfg.INPUT.CAPTION.IMAGE_SIZE, image_format=cfg.INPUT.FORMAT)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    temp = os.path.join(parent, f".{os.path.basename(output)}.partial-{os.getpid()}")
    if os.path.exists(temp):
        shutil.rmtree(temp)
    manifest: dict[str, Any] = {
        "format": FEATURE_CACHE_FORMAT,
        "version": FEATURE_CACHE_VERSION,
        "frozen_weights": fingerprints,
        "model_config": _model_description(cfg),
        "image_size": int(cfg.INPUT.CAPTION.IMAGE_SIZE),
        "input_format": cfg.INPUT.FORMAT,
        "preprocessing": PREPROCESSING,
        "heads": int(core.dinov2.num_heads),
        "vision_dim": int(core.dinov2.embed_dim),
        "text_dim": int(core.text_tower.embed_dim),
        "dtype": "float32",
        "datasets": {},
    }
    try:
        os.makedirs(temp)
        for name in dataset_names:
            dicts = DatasetCatalog.get(name)
            folder = os.path.join(temp, name)
            os.makedirs(folder)
            images: dict[Any, dict] = {}
            captions: dict[Any, dict] = {}
            for d in dicts:
                first = images.setdefault(d["image_id"], d)
                if first["file_name"] != d["file_name"]:
                    raise ValueError(f"{name}: image id {d['image_id']!r} names two files, {first['file_name']} and {d['file_name']}")
                if d["caption_id"] in captions:
                    raise ValueError(f"{name}: caption id {d['caption_id']!r} appears twice; caption ids must be unique")
                captions[d["caption_id"]] = d
            image_list, caption_list = list(images.values()), list(captions.values())
            heads = np.lib.format.open_memmap(
                os.path.join(folder, _HEADS_FILE), mode="w+", dtype=np.float32,
                shape=(len(image_list), manifest["heads"], manifest["vision_dim"]),
            )
            loader = torch.utils.data.DataLoader(
                image_list, batch_size=batch_size, num_workers=num_workers, collate_fn=_MapBatch(mapper)
            )
            row = 0
            for batch in tqdm(loader, desc=f"{name}: DINOv2", unit="batch", disable=not progress):
                embeddings = core.head_embeddings_from_inputs(batch).float().cpu().numpy()
                heads[row : row + len(batch)] = embeddings
                row += len(batch)
            heads.flush()
            del heads
            text = np.lib.format.open_memmap(
                os.path.join(folder, _TEXT_FILE), mode="w+", dtype=np.float32, shape=(len(caption_list), manifest["text_dim"])
            )
            row = 0
            total = (len(caption_list) + batch_size - 1) // batch_size
            for batch in tqdm(_batches(caption_list, batch_size), total=total, desc=f"{name}: CLIP text", unit="batch", disable=not progress):
                text[row : row + len(batch)] = core.encode_captions([d["caption"] for d in batch]).float().cpu().numpy()
                row += len(batch)
            text.flush()
            del text
            with open(os.path.join(folder, _IMAGES_FILE), "w", encoding="utf-8") as f:
                json.dump([[d["image_id"], os.path.basename(d["file_name"])] for d in image_list], f)
            with open(os.path.join(folder, _CAPTIONS_FILE), "w", encoding="utf-8") as f:
                json.dump([[d["caption_id"], d["image_id"]] for d in caption_list], f)
            manifest["datasets"][name] = {
                "fingerprint": dataset_fingerprint(dicts),
                "num_images": len(image_list),
                "num_captions": len(caption_list),
            }
        with open(os.path.join(temp, MANIFEST_NAME), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        if os.path.exists(output):  # checked by _prepare_output: empty, or a cache with overwrite
            old = os.path.join(parent, f".{os.path.basename(output)}.old-{os.getpid()}")
            os.replace(output, old)
            os.replace(temp, output)
            shutil.rmtree(old)
        else:
            os.replace(temp, output)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        core.train(was_training)
    return manifest
