"""configs/quickstart/catseg_tiny_from_baseline.yaml and `make catseg-quickstart`: CAT-Seg
fine-tunes the tiny CLIP exported from the baseline quickstart (loaded by value), the CLIP at a
100x smaller learning rate, and evaluates through the sliding-window path."""
import pytest
import torch

from ovseg_d2.engine import OvsegTrainer
from ovseg_d2.modeling.backbone.clip_export import open_clip_state_dict, save_open_clip_checkpoint

from .conftest import assert_steps, make_dry_run_steps, quickstart_cfg

CONFIG = "configs/quickstart/catseg_tiny_from_baseline.yaml"


@pytest.fixture()
def baseline_export(tmp_path):
    """An open_clip file of a perturbed tiny CLIP (stands in for the baseline's trained CLIP)."""
    from ovseg_d2.modeling.meta_arch import MaskCLIPBaseline

    torch.manual_seed(0)
    baseline = MaskCLIPBaseline(quickstart_cfg("configs/quickstart/baseline_maskclip_tiny.yaml"))
    with torch.no_grad():
        for p in baseline.backbone.clip.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = str(tmp_path / "baseline_clip.pt")
    save_open_clip_checkpoint(open_clip_state_dict(baseline.backbone.clip), path)
    return path


def test_from_baseline_loads_the_export_trains_with_a_small_clip_lr_and_evaluates_sliding(baseline_export, tmp_path, shapes_root):
    cfg = quickstart_cfg(CONFIG, "MODEL.CLIP.PRETRAINED", baseline_export, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                         "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_BEFORE_TRAIN", "False",
                         "OUTPUT_DIR", str(tmp_path / "out"))
    c = cfg.MODEL.CATSEG
    assert (c.SLIDING_WINDOW, c.SLIDING_RESIZE, c.WINDOW, c.WINDOW_STRIDE, c.CLIP_INPUT_SIZE) == (True, 128, 96, 32, 96)
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    # the exported CLIP is what CAT-Seg starts from, tensor by tensor
    exported = torch.load(baseline_export, weights_only=True)
    clip_state = model.backbone.clip.state_dict()
    for key in ("visual.conv1.weight", "visual.proj", "token_embedding.weight", "text_projection"):
        assert torch.equal(clip_state[key], exported[key]), key
    # CLIP (query/value projections) at BASE_LR * 0.01, the aggregator at BASE_LR
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            lrs[names[id(p)]] = group["lr"]
    clip_lrs = {lr for n, lr in lrs.items() if n.startswith("backbone.clip.")}
    head_lrs = {lr for n, lr in lrs.items() if n.startswith("sem_seg_head.")}
    assert clip_lrs and head_lrs
    assert max(clip_lrs) == pytest.approx(cfg.SOLVER.BASE_LR * 0.01)
    assert max(head_lrs) == pytest.approx(cfg.SOLVER.BASE_LR)
    calls = []
    sliding = model.sliding_inference
    model.sliding_inference = lambda inputs, text: calls.append(len(inputs)) or sliding(inputs, text)
    results = trainer.train()  # 2 iterations, then the evaluation on the held-out split
    assert calls, "the evaluation did not take the sliding-window path"
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0


def test_make_catseg_quickstart_chains_baseline_export_catseg_and_the_comparison():
    root, steps = make_dry_run_steps("catseg-quickstart", "CATSEG_QUICKSTART_ITERS=1800",
                                     output_root_pattern=r"OUTPUT_DIR (output/quickstart/catseg_from_baseline/\d{8}-\d{6})/baseline")
    want = [
        ("train_net.py", "baseline_maskclip_tiny.yaml", f"OUTPUT_DIR {root}/baseline"),
        ("export_clip.py", f"{root}/baseline/model_final.pth", f"--output {root}/baseline_clip.pt"),
        ("train_net.py", "catseg_tiny_from_baseline.yaml", f"MODEL.CLIP.PRETRAINED {root}/baseline_clip.pt SOLVER.MAX_ITER 1800 OUTPUT_DIR {root}/catseg"),
        ("train_net.py", "baseline_maskclip_tiny.yaml", f"MODEL.CLIP.PRETRAINED {root}/baseline_clip.pt SOLVER.MAX_ITER 1800 OUTPUT_DIR {root}/baseline_continued"),
    ]
    assert_steps(steps, want)
