"""Talk2DINO's configs: the recipe values are the spec's, and each config builds and trains for
two iterations on CPU with random weights (the ViT-B / ViT-L configs at their real widths and head
counts, one DINOv2 block, on a tiny COCO Captions 2014 written in the real on-disk layout; the
quickstart on the built-in shapes captions), then evaluates retrieval on the held-out captions."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import json
import os

import numpy as np
import pytest
import torch
from detectron2.engine import hooks
from PIL import Image

from ovseg_d2.data import register_all
from ovseg_d2.data.datasets.coco import register_coco
from ovseg_d2.engine import OvsegTrainer

from .conftest import quickstart_cfg

COCO_CAPTIONS_2014_TRAIN = 414113  # captions in captions_train2014.json
SIZES = {"configs/talk2dino_vitb.yaml": (768, 12, 0.55), "configs/talk2dino_vitl.yaml": (1024, 16, 0.54)}
# CPU-sized: random weights, one DINOv2 block (width and heads stay the real ones), 56-px images (4 x 4 patches)
SMALL = ("MODEL.DEVICE", "cpu", "MODEL.DINOV2.PRETRAINED", "", "MODEL.DINOV2.DEPTH", "1", "MODEL.DINOV2.IMAGE_SIZE", "56",
         "MODEL.CLIP.PRETRAINED", "", "INPUT.CAPTION.IMAGE_SIZE", "56", "DATALOADER.NUM_WORKERS", "0")
TWO_ITERATIONS = ("SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1000")


@pytest.mark.parametrize("config", sorted(SIZES))
def test_recipe_values_are_the_spec(config):
    cfg = quickstart_cfg(config)
    width, heads, threshold = SIZES[config]
    assert cfg.MODEL.META_ARCHITECTURE == "Talk2DINO"
    tag = {768: "vit_base_patch14_reg4_dinov2.lvd142m", 1024: "vit_large_patch14_reg4_dinov2.lvd142m"}[width]
    assert (cfg.MODEL.DINOV2.MODEL_NAME, cfg.MODEL.DINOV2.PRETRAINED, cfg.MODEL.DINOV2.IMAGE_SIZE) == (tag, "timm", 448)
    assert (cfg.MODEL.DINOV2.EMBED_DIM, cfg.MODEL.DINOV2.DEPTH, cfg.MODEL.DINOV2.NUM_HEADS) == (0, 0, 0)
    assert (cfg.MODEL.CLIP.MODEL_NAME, cfg.MODEL.CLIP.PRETRAINED, cfg.MODEL.CLIP.FORCE_QUICK_GELU) == ("ViT-B-16", "openai", True)
    assert cfg.MODEL.TEXT.TEMPLATE_SET == "talk2dino" and cfg.MODEL.BACKGROUND_THRESHOLD == threshold
    t = cfg.MODEL.TALK2DINO
    assert (t.TEMPERATURE, t.SLIDING_SHORT_SIDE, t.SLIDING_MAX_LONG_SIDE, t.WINDOW, t.WINDOW_STRIDE) == (0.07, 448, 2048, 448, 224)
    assert (t.BACKGROUND_CLEANING_LAMBDA, t.PAMR_ITERATIONS, list(t.PAMR_DILATIONS)) == (0.2, 10, [1, 2, 4, 8, 12, 24])
    assert t.GATHER_NEGATIVES
    assert cfg.DATASETS.TRAIN == ("coco_2014_train_captions",) and cfg.DATASETS.TEST == ("coco_2014_val_captions",)
    assert cfg.INPUT.CAPTION.IMAGE_SIZE == 448 and cfg.INPUT.FORMAT == "RGB"
    s = cfg.SOLVER
    assert (s.OPTIMIZER, s.BASE_LR, s.WEIGHT_DECAY, s.IMS_PER_BATCH) == ("ADAM", 1e-4, 0.0, 128)
    assert (s.LR_SCHEDULER_NAME, tuple(s.STEPS), s.WARMUP_ITERS) == ("WarmupMultiStepLR", (), 0)  # constant
    assert s.MAX_ITER == 100 * -(-COCO_CAPTIONS_2014_TRAIN // 128) and not s.CLIP_GRADIENTS.ENABLED
    assert cfg.SEED == 123


def _write_captions(root, split, n_images, seed):
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(1, n_images + 1):
        name = f"COCO_{split}_{i:012d}.jpg"
        h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        os.makedirs(root / "coco" / split, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "coco" / split / name)
        images.append({"id": i, "file_name": name, "height": h, "width": w})
        annotations += [{"image_id": i, "id": 10 * i + k, "caption": f"caption {k} of image {i}"} for k in range(2)]
    os.makedirs(root / "coco" / "annotations", exist_ok=True)
    (root / "coco" / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": annotations}))


@pytest.fixture(scope="module")
def coco_captions(tmp_path_factory, shapes_root):
    """COCO Captions 2014 in the real layout (train: 6 images, val: 3, two captions each)."""
    root = tmp_path_factory.mktemp("coco_captions_root")
    _write_captions(root, "train2014", 6, 0)
    _write_captions(root, "val2014", 3, 1)
    previous = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    register_coco()
    yield root
    os.environ["DETECTRON2_DATASETS"] = previous if previous is not None else str(shapes_root)
    register_coco()


def train_two_iterations(cfg):
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    # no ViT-sized checkpoint written by the test (checkpointing is tested elsewhere)
    trainer._hooks = [h for h in trainer._hooks if not isinstance(h, hooks.PeriodicCheckpointer)]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    results = trainer.train()
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    return trainer, results, moved, losses


PSI = {"projection.linear_layer.weight", "projection.linear_layer.bias", "projection.hidden_layers.0.weight", "projection.hidden_layers.0.bias"}


@pytest.mark.parametrize("config", sorted(SIZES))
def test_recipe_config_trains_two_iterations_on_coco_captions(config, coco_captions, tmp_path):
    width, heads, _ = SIZES[config]
    torch.manual_seed(0)
    cfg = quickstart_cfg(config, *SMALL, *TWO_ITERATIONS, "OUTPUT_DIR", str(tmp_path))
    trainer, results, moved, losses = train_two_iterations(cfg)
    model = trainer.model
    assert model.dinov2.embed_dim == width and model.dinov2.num_heads == heads
    assert tuple(model.projection.linear_layer.weight.shape) == (width, 512)  # CLIP ViT-B/16 text: 512-d
    assert tuple(model.projection.hidden_layers[0].weight.shape) == (width, width)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert moved == PSI  # only psi trains
    (group,) = [g for g in trainer.optimizer.param_groups if g["params"]]
    assert isinstance(trainer.optimizer, torch.optim.Adam) and group["lr"] == 1e-4 and group["weight_decay"] == 0.0
    metrics = results["retrieval"]
    assert (metrics["num_images"], metrics["num_captions"]) == (3, 6)


def test_quickstart_trains_two_iterations_on_shapes_captions(shapes_root, tmp_path):
    register_all()
    torch.manual_seed(0)
    cfg = quickstart_cfg("configs/quickstart/talk2dino_tiny.yaml", "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "2",
                         "TEST.EVAL_BEFORE_TRAIN", "False", "OUTPUT_DIR", str(tmp_path))
    assert cfg.DATASETS.TRAIN == ("ovseg_shapes_train_captions",) and cfg.DATASETS.TEST[0] == "ovseg_shapes_val_captions"
    trainer, results, moved, losses = train_two_iterations(cfg)
    assert moved == PSI and len(losses) == 2 and all(np.isfinite(losses))
    retrieval = results["retrieval"] if "retrieval" in results else results["ovseg_shapes_val_captions"]["retrieval"]
    assert (retrieval["num_images"], retrieval["num_captions"]) == (48, 144)


@pytest.mark.parametrize("legacy", [False, True])
def test_released_psi_file_loads_into_the_vitb_model_by_value(tmp_path, legacy, shapes_root):
    """MODEL.WEIGHTS <released psi .pth> (CUDA-saved plain state dict; older files say linear_layer2.*)
    fills the real-width model's projection, and the class embeddings use it."""
    from detectron2.modeling import build_model

    from ovseg_d2.checkpoint import build_checkpointer

    g = torch.Generator().manual_seed(3)
    second = "linear_layer2" if legacy else "hidden_layers.0"
    released = {
        "linear_layer.weight": torch.randn(768, 512, generator=g) * 0.05, "linear_layer.bias": torch.randn(768, generator=g),
        f"{second}.weight": torch.randn(768, 768, generator=g) * 0.05, f"{second}.bias": torch.randn(768, generator=g),
    }
    path = tmp_path / "vitb_mlp_infonce.pth"
    torch.save(released, path)
    cfg = quickstart_cfg("configs/talk2dino_vitb.yaml", *SMALL, "MODEL.WEIGHTS", str(path), "DATASETS.TEST", "()")
    model = build_model(cfg).eval()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("projection.")}
    build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    p = model.projection
    assert torch.equal(p.linear_layer.weight, released["linear_layer.weight"]) and torch.equal(p.linear_layer.bias, released["linear_layer.bias"])
    assert torch.equal(p.hidden_layers[0].weight, released[f"{second}.weight"]) and torch.equal(p.hidden_layers[0].bias, released[f"{second}.bias"])
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items() if k in frozen)
    with torch.no_grad():
        raw = model.text_encoder(["apple"], device=torch.device("cpu")).mean(dim=1)  # 7 templates averaged raw
        hidden = torch.tanh(raw @ released["linear_layer.weight"].T + released["linear_layer.bias"])
        expected = torch.nn.functional.normalize(hidden @ released[f"{second}.weight"].T + released[f"{second}.bias"], dim=-1)
        torch.testing.assert_close(model.class_embeddings(["apple"]), expected, rtol=1e-5, atol=1e-6)


def test_semantic_test_images_reach_the_model_at_their_original_size(shapes_root):
    """INPUT.MIN_SIZE_TEST 0: no mapper resize before the model's own keep-ratio resize to 448
    (detectron2's default 800 would resize twice)."""
    from detectron2.data import DatasetCatalog

    from ovseg_d2.data.mappers import build_dataset_mapper

    register_all()
    cfg = quickstart_cfg("configs/talk2dino_vitb.yaml")
    assert cfg.INPUT.MIN_SIZE_TEST == 0
    record = DatasetCatalog.get("ovseg_shapes_val_sem_seg")[0]
    out = build_dataset_mapper(cfg, ["ovseg_shapes_val_sem_seg"], is_train=False)(record)
    assert tuple(out["image"].shape[-2:]) == (record["height"], record["width"]) == (128, 128)
