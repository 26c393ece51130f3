"""End to end through OvsegTrainer and tools/train_net.py on the built-in data set."""
import os
import subprocess
import sys

import pytest
import torch

from ovseg_d2.data import register_all
from ovseg_d2.engine import OvsegTrainer

from .conftest import REPO_ROOT, quickstart_cfg


@pytest.fixture(scope="module")
def registered(shapes_root):
    register_all()  # pick up the test DETECTRON2_DATASETS
    return shapes_root


def small_cfg(output_dir, *opts):
    cfg = quickstart_cfg(
        "configs/quickstart/baseline_maskclip_tiny.yaml",
        "OUTPUT_DIR", str(output_dir),
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.WARMUP_ITERS", "0",
        "TEST.EVAL_BEFORE_TRAIN", "False",
        *opts,
    )
    return cfg


def test_loss_decreases(registered, tmp_path):
    cfg = small_cfg(tmp_path, "SOLVER.MAX_ITER", "40", "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "()", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()")
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)


def _optimizer_state(trainer):
    state = trainer.optimizer.state_dict()["state"]
    return {k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)} for k, v in state.items()}


def test_resume_continues_with_the_same_optimizer_state(registered, tmp_path):
    opts = ("SOLVER.CHECKPOINT_PERIOD", "5", "DATASETS.TEST", "()", "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR")
    first = OvsegTrainer(small_cfg(tmp_path, "SOLVER.MAX_ITER", "10", *opts))
    first.resume_or_load(resume=False)
    first.train()
    saved_state = _optimizer_state(first)
    saved_lr = first.optimizer.param_groups[0]["lr"]
    assert sorted(os.listdir(tmp_path)).count("model_final.pth") == 1
    assert open(tmp_path / "last_checkpoint").read().strip() == "model_final.pth"

    second = OvsegTrainer(small_cfg(tmp_path, "SOLVER.MAX_ITER", "10", *opts))
    second.resume_or_load(resume=True)
    assert second.start_iter == 10
    restored = _optimizer_state(second)
    assert restored.keys() == saved_state.keys() and len(restored) > 0
    for key in saved_state:
        for name, tensor in saved_state[key].items():
            assert torch.equal(restored[key][name], tensor), (key, name)
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(saved_lr)

    longer = OvsegTrainer(small_cfg(tmp_path, "SOLVER.MAX_ITER", "13", *opts))
    longer.resume_or_load(resume=True)
    longer.train()
    iterations = [it for _, it in longer.storage.history("total_loss").values()]
    assert iterations == [10, 11, 12]


def _run_train_net(*args, env_root):
    env = dict(os.environ, DETECTRON2_DATASETS=str(env_root), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"), *args],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600,
    )


def test_train_net_cli_trains_evaluates_and_protects_outputs(registered, tmp_path):
    config = os.path.join(REPO_ROOT, "configs/quickstart/baseline_maskclip_tiny.yaml")
    common = ["--config-file", config]
    opts = ["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "4", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
    run = _run_train_net(*common, *opts, env_root=registered)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Evaluation before and after training" in run.stdout and "mIoU" in run.stdout
    before = (tmp_path / "model_final.pth").stat().st_mtime_ns

    again = _run_train_net(*common, *opts, env_root=registered)
    assert again.returncode != 0 and "--resume" in again.stderr + again.stdout
    assert (tmp_path / "model_final.pth").stat().st_mtime_ns == before  # nothing overwritten

    evaluated = _run_train_net(*common, "--eval-only", *opts, "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"), env_root=registered)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "copypaste: mIoU,fwIoU,mACC,pACC" in evaluated.stderr + evaluated.stdout


def test_before_after_table_for_one_and_several_datasets():
    from ovseg_d2.engine import format_before_after

    one = format_before_after({"sem_seg": {"mIoU": 0.577}}, {"sem_seg": {"mIoU": 95.136}}, ["a"])
    assert "| a          | mIoU     |     0.58 |   95.14 | +94.56 |" in one
    many = format_before_after(
        {"a": {"sem_seg": {"mIoU": 10.0}}, "b": {"sem_seg": {"pACC": 50.0}}},
        {"a": {"sem_seg": {"mIoU": 5.0}}, "b": {"sem_seg": {"pACC": 75.5}}},
        ["a", "b"],
    )
    assert "-5.00" in many and "+25.50" in many
