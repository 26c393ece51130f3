"""OvsegCheckpointer: atomic saves, weights_only loading, bare state dicts, periodic hook."""
import os
import pickle

import ovseg_d2  # noqa: F401  (environment remedies before detectron2/torchvision)

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.solver import build_lr_scheduler
from torch import nn

from ovseg_d2.checkpoint import OvsegCheckpointer, build_checkpointer, build_periodic_checkpointer_hook
from ovseg_d2.config import add_ovseg_config
from ovseg_d2.solver import build_optimizer


class CustomObject:  # module-level so that plain pickle can store it
    def __init__(self, value):
        self.value = value


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _optimizer_and_scheduler(model):
    """ovseg_d2's optimizer (param groups carry names and multipliers) and detectron2's scheduler:
    their state must survive weights_only loading."""
    cfg = add_ovseg_config(get_cfg())
    cfg.SOLVER.LR_MULTIPLIERS = [["^0\\.", 0.1]]
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = 20, 5
    optimizer = build_optimizer(cfg, model)
    return optimizer, build_lr_scheduler(cfg, optimizer)


def test_round_trip_with_optimizer_and_scheduler(tmp_path):
    src = _model(0)
    opt, sched = _optimizer_and_scheduler(src)
    for _ in range(3):
        src(torch.randn(5, 3)).sum().backward()
        opt.step()
        sched.step()
    OvsegCheckpointer(src, str(tmp_path), optimizer=opt, scheduler=sched).save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]  # no temp files left

    dst = _model(1)
    dst_opt, dst_sched = _optimizer_and_scheduler(dst)
    ckpt = OvsegCheckpointer(dst, str(tmp_path), optimizer=dst_opt, scheduler=dst_sched)
    assert ckpt.has_checkpoint()
    extra = ckpt.resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    _assert_same_state(src, dst)
    assert dst_sched.last_epoch == sched.last_epoch == 3
    assert [g["lr"] for g in dst_opt.param_groups] == [g["lr"] for g in opt.param_groups]
    for s, d in zip(opt.state.values(), dst_opt.state.values()):
        assert torch.equal(s["exp_avg"], d["exp_avg"])


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model = _model(0)
    ckpt = OvsegCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000004")
    old_bytes = (tmp_path / "model_0000004.pth").read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(len(old_bytes) // 2)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    for name in ("model_0000009", "model_0000004"):  # a new file, and overwriting the old one
        with pytest.raises(OSError, match="simulated"):
            ckpt.save(name)
        assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth"]
        assert (tmp_path / "model_0000004.pth").read_bytes() == old_bytes
        assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"

    def interrupt(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000014")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth"]


def test_weights_only_refuses_pickled_objects_and_opt_out(tmp_path):
    src = _model(0)
    path = str(tmp_path / "trusted.pth")
    torch.save({"model": src.state_dict(), "meta": CustomObject(3)}, path)

    with pytest.raises(pickle.UnpicklingError, match="MODEL.WEIGHTS_UNSAFE_PICKLE"):
        OvsegCheckpointer(_model(1)).load(path)

    cfg = add_ovseg_config(get_cfg())
    cfg.MODEL.WEIGHTS_UNSAFE_PICKLE = True
    dst = _model(1)
    extra = build_checkpointer(cfg, dst).load(path)
    assert isinstance(extra["meta"], CustomObject) and extra["meta"].value == 3
    _assert_same_state(src, dst)


def test_bare_state_dict_and_safetensors(tmp_path):
    import safetensors.torch

    src = _model(0)
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    dst = _model(1)
    OvsegCheckpointer(dst).load(str(tmp_path / "bare.pth"))
    _assert_same_state(src, dst)

    safetensors.torch.save_file(src.state_dict(), str(tmp_path / "bare.safetensors"))
    dst = _model(2)
    OvsegCheckpointer(dst).load(str(tmp_path / "bare.safetensors"))
    _assert_same_state(src, dst)


def test_detectron2_pkl_still_loads(tmp_path):
    src = _model(0)
    data = {"model": {k: v.numpy() for k, v in src.state_dict().items()}, "__author__": "test"}
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump(data, f)
    dst = _model(1)
    OvsegCheckpointer(dst).load(str(tmp_path / "zoo.pkl"))
    _assert_same_state(src, dst)


def test_periodic_checkpointer_keeps_newest(tmp_path):
    cfg = add_ovseg_config(get_cfg())
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = 2
    hook = build_periodic_checkpointer_hook(cfg, OvsegCheckpointer(_model(0), str(tmp_path)))
    assert hook.max_to_keep == 2 and hook.period == 2
    for it in range(8):
        hook.step(it)
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".pth")) == [
        "model_0000005.pth",
        "model_0000007.pth",
    ]
    cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = 0
    assert build_periodic_checkpointer_hook(cfg, OvsegCheckpointer(_model(0))).max_to_keep is None
