"""CLIPSelf recipe configs at their real architecture (random weights, CPU, tiny overrides):
configs/clipself_vitb16.yaml distils for two iterations with the spec's optimizer, and its
export drives configs/catseg_vitb_384_clipself.yaml by MODEL.CLIP.PRETRAINED."""
import os

import pytest
import torch

from ovseg_d2.engine import OvsegTrainer
from ovseg_d2.engine.clip_export_hook import CLIPExportHook
from ovseg_d2.modeling.backbone.clip_export import save_open_clip_checkpoint

from .conftest import quickstart_cfg

CLIPSELF = "configs/clipself_vitb16.yaml"
CATSEG = "configs/catseg_vitb_384_clipself.yaml"
SHAPES = ("DATASETS.TRAIN", "('ovseg_shapes_train_sem_seg',)", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0")
# CAT-Seg at a 96-px crop (6 x 6 tokens) instead of 384: the same architecture, a CPU-sized input
CATSEG_SMALL = ("INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.CROP.SIZE", "(96, 96)", "INPUT.SIZE_DIVISIBILITY", "96",
                "MODEL.CATSEG.CLIP_INPUT_SIZE", "96", "MODEL.CATSEG.FEATURE_RESOLUTION", "[6, 6]", "MODEL.CATSEG.WINDOW_SIZE", "6")
TWO_ITERATIONS = ("SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1000", "SOLVER.AMP.ENABLED", "False")


def trainer_without_file_hooks(cfg):
    """An OvsegTrainer that writes no ViT-B-sized checkpoint or export (tested at tiny scale)."""
    from detectron2.engine import hooks

    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer._hooks = [h for h in trainer._hooks if not isinstance(h, (hooks.PeriodicCheckpointer, CLIPExportHook))]
    return trainer


def test_recipe_values_are_the_spec():
    cfg = quickstart_cfg(CLIPSELF)
    assert (cfg.MODEL.CLIP.MODEL_NAME, cfg.MODEL.CLIP.PRETRAINED, cfg.MODEL.CLIP.FORCE_QUICK_GELU) == ("ViT-B-16", "openai", True)
    assert cfg.MODEL.CLIPSELF.STUDENT_SIZE == 1024 and cfg.MODEL.CLIPSELF.ENSEMBLE_ALPHA == 0.7
    assert (cfg.MODEL.CLIPSELF.MAX_REGIONS, cfg.MODEL.CLIPSELF.GRID_MAX_SPLITS) == (20, 6)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train_images",) and cfg.DATASETS.TEST == ("coco_2017_val_panoptic_regions",)
    s = cfg.SOLVER
    assert (s.OPTIMIZER, s.BASE_LR, s.WEIGHT_DECAY, tuple(s.BETAS), s.EPS) == ("ADAMW", 1e-5, 0.1, (0.9, 0.98), 1e-6)
    assert (s.LR_SCHEDULER_NAME, s.WARMUP_ITERS, s.IMS_PER_BATCH) == ("WarmupCosineLR", 1000, 16)
    assert s.MAX_ITER == 6 * -(-118287 // 16)  # 6 epochs of COCO train2017
    assert s.AMP.ENABLED
    catseg = quickstart_cfg(CATSEG)
    assert os.path.normpath(catseg.MODEL.CLIP.PRETRAINED) == os.path.normpath(os.path.join(cfg.OUTPUT_DIR, "clip_export_final.pt"))
    assert catseg.MODEL.CLIP.MODEL_NAME == "ViT-B-16" and catseg.MODEL.CLIP.FORCE_QUICK_GELU


@pytest.fixture(scope="module")
def vitb_export(tmp_path_factory, shapes_root):
    """Two distillation iterations of the ViT-B/16 recipe; yields (trainer, exported file)."""
    out = tmp_path_factory.mktemp("clipself_vitb16")
    torch.manual_seed(0)
    cfg = quickstart_cfg(CLIPSELF, "MODEL.DEVICE", "cpu", "MODEL.CLIP.PRETRAINED", "", *SHAPES, *TWO_ITERATIONS,
                         "MODEL.CLIPSELF.STUDENT_SIZE", "32", "MODEL.CLIPSELF.MAX_REGIONS", "1",
                         "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "1e-3", "OUTPUT_DIR", str(out))
    trainer = trainer_without_file_hooks(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    path = out / "clip_export_final.pt"
    save_open_clip_checkpoint(trainer.model.export_state_dict(cfg.MODEL.CLIPSELF.ENSEMBLE_ALPHA), str(path))
    yield trainer, before, str(path)
    path.unlink()


def test_clipself_vitb16_distils_two_iterations(vitb_export):
    trainer, before, _ = vitb_export
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(0.0 <= v <= 2.0 for v in losses)
    model = trainer.model
    assert tuple(model.teacher.image_size) == (224, 224) and model.crop_size == 224
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    last = "backbone.clip.visual.transformer.resblocks.11."
    assert moved and all(n.startswith("backbone.clip.visual.transformer.resblocks.") for n in moved)
    assert last + "attn.q_proj_weight" not in moved and last + "attn.k_proj_weight" not in moved
    assert last + "attn.v_proj_weight" in moved and "backbone.clip.visual.transformer.resblocks.0.attn.q_proj_weight" in moved
    decay = {n: g["weight_decay"] for g in trainer.optimizer.param_groups for n in g["param_names"]}
    assert decay["backbone.clip.visual.transformer.resblocks.0.attn.v_proj_weight"] == 0.1
    assert decay["backbone.clip.visual.transformer.resblocks.0.mlp.c_fc.weight"] == 0.1
    assert decay["backbone.clip.visual.transformer.resblocks.0.ln_1.weight"] == 0.0
    assert decay["backbone.clip.visual.transformer.resblocks.0.mlp.c_fc.bias"] == 0.0
    assert decay["backbone.clip.visual.transformer.resblocks.0.attn.in_proj_bias"] == 0.0
    betas = {tuple(g["betas"]) for g in trainer.optimizer.param_groups}
    assert betas == {(0.9, 0.98)}


def test_catseg_trains_on_the_exported_vitb16_by_config(vitb_export, tmp_path):
    student_trainer, _, path = vitb_export
    cfg = quickstart_cfg(CATSEG, "MODEL.DEVICE", "cpu", "MODEL.CLIP.PRETRAINED", path, *SHAPES, *TWO_ITERATIONS,
                         *CATSEG_SMALL, "OUTPUT_DIR", str(tmp_path))
    trainer = trainer_without_file_hooks(cfg)
    student = student_trainer.model.backbone.clip.visual.state_dict()
    catseg_visual = trainer.model.backbone.clip.visual.state_dict()
    alpha = student_trainer.cfg.MODEL.CLIPSELF.ENSEMBLE_ALPHA
    teacher = student_trainer.model.teacher.state_dict()
    key = "transformer.resblocks.4.mlp.c_proj.weight"
    torch.testing.assert_close(catseg_visual[key], alpha * student[key] + (1 - alpha) * teacher[key])
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)


# ---------------------------------------------------------------- quickstart chain (tiny CLIP)
def test_quickstart_chain_baseline_to_clipself_to_catseg_and_baseline(tmp_path, shapes_root):
    """configs/quickstart/clipself_tiny_from_baseline.yaml starts from a baseline export (teacher =
    that CLIP), trains two iterations; its export drives configs/quickstart/catseg_tiny_clipself.yaml
    and the baseline config by MODEL.CLIP.PRETRAINED, with the student's dense features."""
    import copy

    from ovseg_d2.modeling.backbone.clip_export import open_clip_state_dict
    from ovseg_d2.modeling.meta_arch import CATSeg, MaskCLIPBaseline

    torch.manual_seed(0)
    baseline = MaskCLIPBaseline(quickstart_cfg("configs/quickstart/baseline_maskclip_tiny.yaml"))
    with torch.no_grad():  # stands in for the baseline's training
        for p in baseline.parameters():
            p.add_(0.02 * torch.randn_like(p))
    baseline_file = str(tmp_path / "baseline_clip.pt")
    save_open_clip_checkpoint(open_clip_state_dict(baseline.backbone.clip), baseline_file)

    cfg = quickstart_cfg("configs/quickstart/clipself_tiny_from_baseline.yaml", "MODEL.CLIP.PRETRAINED", baseline_file,
                         "MODEL.CLIPSELF.STUDENT_SIZE", "64", "MODEL.CLIPSELF.MAX_REGIONS", "2", "SOLVER.IMS_PER_BATCH", "2",
                         "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.BASE_LR", "1e-3", "DATALOADER.NUM_WORKERS", "0",
                         "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "clipself"))
    assert (cfg.MODEL.CLIPSELF.GRID_MAX_SPLITS, cfg.SOLVER.BASE_LR, cfg.MODEL.CLIP.MODEL_NAME) == (3, 1e-3, "ovseg-tiny-vit8")
    assert quickstart_cfg("configs/quickstart/clipself_tiny_from_baseline.yaml").SOLVER.BASE_LR == 2e-5
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    want_teacher = {k[len("visual."):]: v for k, v in torch.load(baseline_file, weights_only=True).items() if k.startswith("visual.")}
    assert all(torch.equal(model.teacher.state_dict()[k], v) for k, v in want_teacher.items())
    trainer.train()
    export = tmp_path / "clipself" / "clip_export_final.pt"
    assert export.is_file()
    student_file = str(tmp_path / "student.pt")
    save_open_clip_checkpoint(model.export_state_dict(1.0), student_file)
    model.eval()
    images = torch.randn(2, 3, 48, 64)
    for config, arch, mode in (("configs/quickstart/catseg_tiny_clipself.yaml", CATSeg, "value_residual_cls"),
                               ("configs/quickstart/baseline_maskclip_tiny.yaml", MaskCLIPBaseline, "value")):
        other = arch(quickstart_cfg(config, "MODEL.CLIP.PRETRAINED", student_file)).eval()
        student = copy.deepcopy(model.backbone).eval()
        student.dense_last_block = mode  # the same weights, read out the way the other method reads them
        with torch.no_grad():
            torch.testing.assert_close(other.backbone(images)["dense"], student(images)["dense"], rtol=1e-5, atol=1e-5)
    # the hook's ensembled file loads the same way
    CATSeg(quickstart_cfg("configs/quickstart/catseg_tiny_clipself.yaml", "MODEL.CLIP.PRETRAINED", str(export)))


def test_make_clipself_quickstart_chains_the_steps_into_a_fresh_folder():
    """`make -n clipself-quickstart`: baseline -> export -> CLIPSelf on that export -> export -> eval
    of the exported file, all under one new time-stamped folder (setup not re-run here)."""
    from .conftest import assert_steps, make_dry_run_steps

    root, steps = make_dry_run_steps("clipself-quickstart", "CLIPSELF_CATSEG=1",
                                     output_root_pattern=r"OUTPUT_DIR (output/quickstart/clipself_from_baseline/\d{8}-\d{6})/baseline")
    want = [
        ("train_net.py", "baseline_maskclip_tiny.yaml", f"OUTPUT_DIR {root}/baseline"),
        ("export_clip.py", f"{root}/baseline/config.yaml", f"--output {root}/baseline_clip.pt"),
        ("train_net.py", "clipself_tiny_from_baseline.yaml", f"MODEL.CLIP.PRETRAINED {root}/baseline_clip.pt OUTPUT_DIR {root}/clipself"),
        ("export_clip.py", f"{root}/clipself/model_final.pth", f"--output {root}/clipself_clip.pt"),
        ("train_net.py", "--eval-only", f"MODEL.CLIP.PRETRAINED {root}/clipself_clip.pt"),
        ("train_net.py", "catseg_tiny_clipself.yaml", f"MODEL.CLIP.PRETRAINED {root}/clipself_clip.pt OUTPUT_DIR {root}/catseg"),
    ]
    assert_steps(steps, want)
