"""Talk2DINO's feature cache (tools/extract_features.py, INPUT.CAPTION.FEATURE_CACHE_DIR).

A tiny random Talk2DINO (2-block DINOv2-reg, tiny CLIP) whose frozen weights are saved to files,
so the extraction tool and every trainer build the same frozen weights. The cache is checked
against independent computations (DINOv2 run per image, softmax-weighted sum by hand; the CLIP
text tower on each caption), the loss and ψ's gradient from the cache against those from images
on the same batch, two training runs (cache / images) against each other, and the refusals: stale
weights, changed data set, other image size, an existing folder not overwritten.
"""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import importlib.util
import json
import os
import random

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from ovseg_d2.data import register_all
from ovseg_d2.data.feature_cache import (
    MANIFEST_NAME,
    FeatureCacheError,
    FeatureCacheReader,
    check_feature_cache,
    dataset_fingerprint,
    write_feature_cache,
)
from ovseg_d2.data.mappers import CaptionDatasetMapper
from ovseg_d2.modeling.backbone.dinov2 import build_dinov2
from ovseg_d2.modeling.backbone.open_clip_loading import build_open_clip_model

from .conftest import REPO_ROOT, quickstart_cfg

DATASET = "ovseg_feature_cache_test_captions"
NUM_IMAGES = 8
DINO_NAME = "vit_small_patch14_reg4_dinov2.lvd142m"
TINY_DINO = {"embed_dim": 32, "depth": 2, "num_heads": 4}
IMAGE_SIZE = 56  # 4 x 4 patches of 14


def _load_tool():
    spec = importlib.util.spec_from_file_location("extract_features_tool", os.path.join(REPO_ROOT, "tools", "extract_features.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_dinov2(path, seed):
    torch.manual_seed(seed)
    vit = build_dinov2(DINO_NAME, "", img_size=IMAGE_SIZE, model_kwargs=TINY_DINO)
    with torch.no_grad():  # non-trivial values everywhere (LayerScale, norms and tokens start constant)
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    torch.save(vit.state_dict(), path)
    return str(path)


def _opts(files, **extra):
    opts = {
        "MODEL.META_ARCHITECTURE": "Talk2DINO",
        "MODEL.DINOV2.MODEL_NAME": DINO_NAME,
        "MODEL.DINOV2.PRETRAINED": files["dinov2"],
        "MODEL.DINOV2.EMBED_DIM": "32",
        "MODEL.DINOV2.DEPTH": "2",
        "MODEL.DINOV2.NUM_HEADS": "4",
        "MODEL.DINOV2.IMAGE_SIZE": str(IMAGE_SIZE),
        "MODEL.CLIP.PRETRAINED": files["clip"],
        "MODEL.TALK2DINO.WINDOW": str(IMAGE_SIZE),
        "MODEL.TALK2DINO.WINDOW_STRIDE": "28",
        "INPUT.CAPTION.IMAGE_SIZE": str(IMAGE_SIZE),
        "DATASETS.TRAIN": f"('{DATASET}',)",
        "DATASETS.TEST": "()",
        "DATALOADER.NUM_WORKERS": "0",
        "TEST.EVAL_BEFORE_TRAIN": "False",
    }
    opts.update(extra)
    return [x for kv in opts.items() for x in kv]


def _cfg(files, **extra):
    return quickstart_cfg("configs/quickstart/Base-quickstart.yaml", *_opts(files, **extra))


def _register_subset(name, dicts):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(evaluator_type="captions")


@pytest.fixture(scope="module")
def setup(shapes_root, tmp_path_factory):
    """Frozen-weight files, the test caption set (NUM_IMAGES images, their captions) and a cache
    written by the command-line tool."""
    register_all()
    source = DatasetCatalog.get("ovseg_shapes_train_captions")
    keep = sorted({d["image_id"] for d in source})[:NUM_IMAGES]
    dicts = [d for d in source if d["image_id"] in keep]
    _register_subset(DATASET, dicts)
    root = tmp_path_factory.mktemp("feature_cache")
    clip = build_open_clip_model("ovseg-tiny-vit8", "", force_quick_gelu=True)
    torch.save(clip.state_dict(), root / "clip.pt")
    files = {"dinov2": _save_dinov2(root / "dinov2.pth", seed=0), "clip": str(root / "clip.pt")}
    cache = str(root / "cache")
    config = os.path.join(REPO_ROOT, "configs/quickstart/Base-quickstart.yaml")
    tool = _load_tool()
    # batch 3: the last batch is short, and no extraction batch is a training batch
    args = tool.build_parser().parse_args(
        ["--config-file", config, "--output", cache, "--batch-size", "3", "--datasets", DATASET, *_opts(files)]
    )
    manifest = tool.main(args)
    return {"files": files, "cache": cache, "dicts": dicts, "manifest": manifest, "root": root, "tool": tool, "config": config}


def _model(cfg):
    from ovseg_d2.engine import OvsegTrainer

    torch.manual_seed(7)  # ψ's initialisation
    return OvsegTrainer.build_model(cfg)


def test_manifest_records_weights_data_set_and_size(setup):
    manifest = setup["manifest"]
    with open(os.path.join(setup["cache"], MANIFEST_NAME)) as f:
        assert json.load(f) == manifest
    assert manifest["image_size"] == IMAGE_SIZE and manifest["heads"] == 4 and manifest["vision_dim"] == 32
    assert list(manifest["datasets"]) == [DATASET]
    entry = manifest["datasets"][DATASET]
    assert entry["num_images"] == NUM_IMAGES and entry["num_captions"] == len(setup["dicts"])
    assert entry["fingerprint"] == dataset_fingerprint(setup["dicts"])
    assert manifest["model_config"]["MODEL.DINOV2.PRETRAINED"] == setup["files"]["dinov2"]
    assert set(manifest["frozen_weights"]) == {"dinov2", "clip_text"}


def test_cached_features_match_independent_computation(setup):
    """Per image: DINOv2 on that image alone, the CLS->patch softmax and the weighted sum of the
    patch tokens written out here; per caption: the CLIP text tower on that caption alone."""
    cfg = _cfg(setup["files"])
    model = _model(cfg).eval()
    reader = FeatureCacheReader(setup["cache"], [DATASET], cfg=cfg)
    image_mapper = CaptionDatasetMapper(cfg, [], is_train=True)  # no cache: images
    seen = set()
    for d in setup["dicts"]:
        cached = reader.lookup(d["image_id"], d["caption_id"])
        tokens = model.text_encoder.tokenizer([d["caption"]])
        with torch.no_grad():
            expected_text = model.text_tower.clip.encode_text(tokens, normalize=False)[0]
        # Batched extraction vs one caption alone: same math, other GEMM shapes, so float32
        # summation order differs (up to ~1.5e-6 abs on AMD EPYC / AVX2 MKL).
        torch.testing.assert_close(cached["caption_text_feature"], expected_text, rtol=1e-4, atol=1e-5)
        if d["image_id"] in seen:
            continue
        seen.add(d["image_id"])
        image = image_mapper(d)["image"].float()[None]  # RGB 0-255, 56 x 56
        assert image.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        with torch.no_grad():
            out = model.dinov2(model.dinov2.normalize(image))
        tokens, logits = out["patch_tokens"][0].double(), out["cls_attention_logits"][0].double()  # N x D, heads x N
        weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
        weights = weights / weights.sum(dim=1, keepdim=True)
        expected = torch.stack([(w[:, None] * tokens).sum(dim=0) for w in weights]).float()  # heads x D
        assert cached["dino_head_embeddings"].dtype == torch.float32
        torch.testing.assert_close(cached["dino_head_embeddings"], expected, rtol=1e-5, atol=1e-6)
    assert len(seen) == NUM_IMAGES


def test_loss_from_cache_equals_loss_from_images(setup):
    """The same batch through the caption mapper with and without the cache: same loss and the
    same gradient on ψ (and the cached batch carries no image, so DINOv2 and CLIP never run)."""
    files = setup["files"]
    image_cfg = _cfg(files)
    cache_cfg = _cfg(files, **{"INPUT.CAPTION.FEATURE_CACHE_DIR": setup["cache"]})
    model = _model(image_cfg).train()
    check_feature_cache(cache_cfg, model, [DATASET])  # the model's frozen weights are the cache's
    from_images = CaptionDatasetMapper(image_cfg, [DATASET], is_train=True)
    from_cache = CaptionDatasetMapper(cache_cfg, [DATASET], is_train=True)
    assert from_images.feature_cache is None and from_cache.feature_cache is not None
    rng = random.Random(0)
    batch = rng.sample(setup["dicts"], 6)  # captions of several images, in a shuffled order
    image_batch = [from_images(d) for d in batch]
    cache_batch = [from_cache(d) for d in batch]
    assert all("image" in x and "caption" in x for x in image_batch)
    assert all("image" not in x and set(x) >= {"dino_head_embeddings", "caption_text_feature"} for x in cache_batch)

    def loss_and_grad(inputs):
        model.zero_grad(set_to_none=True)
        loss = model(inputs)["loss_talk2dino"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.projection.parameters()]

    calls = []
    hook = model.dinov2.register_forward_hook(lambda *a: calls.append("dinov2"))
    text_calls = []
    original = model.text_tower.encode_text
    model.text_tower.encode_text = lambda tokens: text_calls.append(1) or original(tokens)
    try:
        loss_cache, grad_cache = loss_and_grad(cache_batch)
        assert calls == [] and text_calls == []  # only ψ ran
        loss_images, grad_images = loss_and_grad(image_batch)
        assert calls == ["dinov2"] and text_calls == [1]
    finally:
        hook.remove()
        model.text_tower.encode_text = original
    assert torch.isfinite(loss_images) and loss_images.item() > 0
    torch.testing.assert_close(loss_cache, loss_images, rtol=1e-6, atol=1e-6)
    for a, b in zip(grad_cache, grad_images):
        # Features equal to float32 rounding give gradients equal to rounding relative to their scale.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    print(f"loss from images {loss_images.item():.9f}, from cache {loss_cache.item():.9f}, "
          f"difference {abs(loss_images.item() - loss_cache.item()):.3g}")


def _train(cfg, tmp_path):
    from ovseg_d2.engine import OvsegTrainer

    torch.manual_seed(7)
    np.random.seed(7)  # TrainingSampler's seed
    random.seed(7)
    cfg.OUTPUT_DIR = str(tmp_path)
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.results = trainer.train()
    return trainer


def test_training_from_cache_equals_training_from_images(setup, tmp_path):
    """Three iterations through OvsegTrainer, from images and from the cache, then retrieval on the
    cached set (from the cache in the second run): same ψ and same metrics."""
    files = setup["files"]
    common = {
        "SOLVER.IMS_PER_BATCH": "4", "SOLVER.MAX_ITER": "3", "SOLVER.WARMUP_ITERS": "0", "SOLVER.BASE_LR": "0.01",
        "DATASETS.TEST": f"('{DATASET}',)",
    }
    images = _train(_cfg(files, **common), tmp_path / "images")
    cached = _train(_cfg(files, **common, **{"INPUT.CAPTION.FEATURE_CACHE_DIR": setup["cache"]}), tmp_path / "cache")
    retrieval_images, retrieval_cache = images.results["retrieval"], cached.results["retrieval"]
    assert retrieval_images["num_captions"] == len(setup["dicts"])
    assert retrieval_cache == pytest.approx(retrieval_images)
    moved = False
    start = _model(_cfg(files)).projection.state_dict()
    for (name, a), b in zip(images.model.projection.state_dict().items(), cached.model.projection.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved |= not torch.equal(a, start[name])
    assert moved  # training changed ψ


def test_stale_weights_are_refused_by_the_trainer(setup, tmp_path):
    from ovseg_d2.engine import OvsegTrainer

    other = _save_dinov2(setup["root"] / "dinov2_other.pth", seed=1)
    cfg = _cfg(
        {**setup["files"], "dinov2": other},
        **{"INPUT.CAPTION.FEATURE_CACHE_DIR": setup["cache"], "SOLVER.MAX_ITER": "1", "OUTPUT_DIR": str(tmp_path)},
    )
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(FeatureCacheError, match=r"stale.*DINOv2 .*MODEL\.DINOV2\.PRETRAINED.*tools/extract_features\.py") as info:
        trainer.train()
    assert "CLIP text tower" not in str(info.value)  # only the part that changed is named
    assert trainer.iter == 0  # refused before the first step
    evaluate = cfg.clone()
    evaluate.DATASETS.TEST = (DATASET,)
    with pytest.raises(FeatureCacheError, match="stale"):  # evaluation reading the cache refuses it too
        OvsegTrainer.test(evaluate, trainer.model)


def test_changed_data_set_other_size_and_missing_set_are_refused(setup):
    cfg = _cfg(setup["files"], **{"INPUT.CAPTION.FEATURE_CACHE_DIR": setup["cache"]})
    changed = [dict(d) for d in setup["dicts"]]
    changed[0]["caption"] = "a photo of something else"
    _register_subset(DATASET, changed)
    try:
        with pytest.raises(FeatureCacheError, match=f"stale for data set '{DATASET}'.*tools/extract_features.py"):
            CaptionDatasetMapper(cfg, [DATASET], is_train=True)
    finally:
        _register_subset(DATASET, setup["dicts"])
    CaptionDatasetMapper(cfg, [DATASET], is_train=True)  # restored: accepted again
    # two cached sets sharing image ids cannot be looked up together
    overlap = "ovseg_feature_cache_test_overlap"
    _register_subset(overlap, setup["dicts"][:3])
    both = str(setup["root"] / "both")
    write_feature_cache(_model(cfg), cfg, [DATASET, overlap], both, progress=False)
    with pytest.raises(FeatureCacheError, match=f"image id .* is in both '{DATASET}' and '{overlap}'"):
        FeatureCacheReader(both, [DATASET, overlap])
    FeatureCacheReader(both, [overlap])  # one at a time is fine
    other_size = _cfg(setup["files"], **{"INPUT.CAPTION.FEATURE_CACHE_DIR": setup["cache"], "INPUT.CAPTION.IMAGE_SIZE": "42"})
    with pytest.raises(FeatureCacheError, match="56-px images, but INPUT.CAPTION.IMAGE_SIZE is 42"):
        CaptionDatasetMapper(other_size, [DATASET], is_train=True)
    with pytest.raises(FeatureCacheError, match=r"not \['ovseg_shapes_val_captions'\]"):
        CaptionDatasetMapper(cfg, ["ovseg_shapes_val_captions"], is_train=True)
    # a test set the cache does not hold is read from images
    assert CaptionDatasetMapper(cfg, ["ovseg_shapes_val_captions"], is_train=False).feature_cache is None
    with pytest.raises(FeatureCacheError, match="does not exist.*tools/extract_features.py"):
        CaptionDatasetMapper(_cfg(setup["files"], **{"INPUT.CAPTION.FEATURE_CACHE_DIR": str(setup["root"] / "nowhere")}), [DATASET])


def test_existing_folders_are_not_overwritten(setup, tmp_path):
    cfg = _cfg(setup["files"])
    model = _model(cfg)
    # a user's folder: refused with and without --overwrite, left as it was
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="[Cc]hoose another --output"):
            write_feature_cache(model, cfg, [DATASET], str(users), overwrite=overwrite, progress=False)
        assert (users / "notes.txt").read_text() == "keep me" and os.listdir(users) == ["notes.txt"]
    # an existing cache: refused without the flag (through the tool too), replaced with it
    cache = str(tmp_path / "cache")
    write_feature_cache(model, cfg, [DATASET], cache, progress=False)
    manifest_path = os.path.join(cache, MANIFEST_NAME)
    before = open(manifest_path).read()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_feature_cache(model, cfg, [DATASET], cache, progress=False)
    args = setup["tool"].build_parser().parse_args(["--config-file", setup["config"], "--output", cache, *_opts(setup["files"])])
    with pytest.raises(SystemExit, match="pass --overwrite"):
        setup["tool"].main(args)
    assert open(manifest_path).read() == before
    old_heads = np.load(os.path.join(cache, DATASET, "head_embeddings.npy"))
    write_feature_cache(model, cfg, [DATASET], cache, overwrite=True, batch_size=5, num_workers=1, progress=False)
    assert json.load(open(manifest_path))["datasets"][DATASET]["num_images"] == NUM_IMAGES
    # other batching, images read in a worker process: the same features
    np.testing.assert_allclose(np.load(os.path.join(cache, DATASET, "head_embeddings.npy")), old_heads, rtol=1e-6, atol=1e-7)
    assert sorted(os.listdir(tmp_path)) == ["cache", "mine"]  # no temporary folder left behind
    # a failed extraction leaves the old cache and no temporary folder
    with pytest.raises(ValueError, match="'no_such_set' is not registered; registered caption sets: .*ovseg_shapes_train_captions"):
        write_feature_cache(model, cfg, ["no_such_set"], cache, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="not a caption data set"):
        write_feature_cache(model, cfg, ["ovseg_shapes_train_sem_seg"], cache, overwrite=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["cache", "mine"] and os.path.isfile(manifest_path)


def test_feature_cache_needs_talk2dino(setup):
    from tests.caption_stand_in import stand_in_cfg

    model = _model(stand_in_cfg())
    with pytest.raises(FeatureCacheError, match="work with MODEL.META_ARCHITECTURE Talk2DINO"):
        check_feature_cache(_cfg(setup["files"], **{"INPUT.CAPTION.FEATURE_CACHE_DIR": setup["cache"]}), model, [DATASET])


def test_reader_pickles_without_its_arrays(setup):
    """Data-loader workers started by spawn get the index, not a copy of the arrays."""
    import pickle

    cfg = _cfg(setup["files"])
    reader = FeatureCacheReader(setup["cache"], [DATASET], cfg=cfg)
    d = setup["dicts"][-1]
    expected = reader.lookup(d["image_id"], d["caption_id"])
    blob = pickle.dumps(reader)
    arrays = os.path.getsize(os.path.join(setup["cache"], DATASET, "head_embeddings.npy"))
    assert len(blob) < arrays / 2
    again = pickle.loads(blob).lookup(d["image_id"], d["caption_id"])
    for key in expected:
        assert torch.equal(expected[key], again[key])
    with pytest.raises(FeatureCacheError, match="caption 1 belongs to image"):
        reader.lookup(setup["dicts"][-1]["image_id"], 1)
