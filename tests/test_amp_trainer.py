"""AutocastTrainer: bf16 autocast on CPU, float16 guard, unscale before (full-model) clipping."""
import contextlib
import copy
import math

import ovseg_d2  # noqa: F401  (environment remedies before detectron2/torchvision)

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import EventStorage
from torch import nn

from ovseg_d2.config import add_ovseg_config
from ovseg_d2.engine import AutocastTrainer, build_trainer_step
from ovseg_d2.solver import build_optimizer

LOSS_SCALE = 2.0 ** 10
CLIP_VALUE = 0.1  # small enough that clipping is active for the test model


class LossModel(nn.Module):
    """Returns a dict of losses like a detectron2 meta-architecture in training mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 1)

    def forward(self, batch):
        x, y = batch
        pred = self.fc2(torch.relu(self.fc1(x))).float()
        return {"loss_mse": (pred - y).pow(2).mean(), "loss_l1": (pred - y).abs().mean()}


def _data(n=3):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 8, generator=gen), torch.randn(4, 1, generator=gen)) for _ in range(n)]


def _cfg(clip=True):
    cfg = add_ovseg_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = clip
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = CLIP_VALUE
    return cfg


def _run_steps(trainer, n):
    with EventStorage(0) as storage:
        for it in range(n):
            trainer.iter = storage.iter = it
            trainer.run_step()
    return storage


def test_bf16_on_cpu_runs_in_bf16_and_writes_metrics():
    model = LossModel()
    seen = []
    for layer in (model.fc1, model.fc2):
        layer.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    trainer = AutocastTrainer(
        model, _data(), build_optimizer(_cfg(), model), device_type="cpu", dtype=torch.bfloat16
    )
    assert trainer.grad_scaler is None
    before = copy.deepcopy(model.state_dict())
    storage = _run_steps(trainer, 1)
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert math.isfinite(storage.history("total_loss").latest())
    assert {"loss_mse", "loss_l1", "data_time"} <= set(storage.histories())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_float16_on_cpu_is_refused():
    model = LossModel()
    with pytest.raises(ValueError, match="bfloat16"):
        AutocastTrainer(model, _data(), build_optimizer(_cfg(), model), device_type="cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match="float32"):
        AutocastTrainer(model, _data(), build_optimizer(_cfg(), model), device_type="cpu", dtype=torch.float32)


class RecordingScaler:
    """Stands in for GradScaler: records the call order and scales by a power of two."""

    def __init__(self, calls):
        self.calls = calls
        self.scale_value = LOSS_SCALE

    def scale(self, loss):
        self.calls.append("scale")
        return loss * self.scale_value

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(self.scale_value)

    def step(self, optimizer):
        self.calls.append("step")
        optimizer.step()

    def update(self):
        self.calls.append("update")

    def state_dict(self):
        return {"scale": self.scale_value}

    def load_state_dict(self, state):
        self.scale_value = state["scale"]


def _reference_grad_norm():
    """Global gradient norm of the first step, computed without any loss scaling."""
    model = LossModel()
    x = _data()[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = sum(model(x).values())
    losses.backward()
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))


def test_unscale_happens_before_full_model_clipping(monkeypatch):
    calls, norms = [], []
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, norm_type=2.0, **kwargs):
        calls.append("clip")
        norm = real_clip(params, max_norm, norm_type, **kwargs)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    model = LossModel()
    trainer = AutocastTrainer(
        model, _data(), build_optimizer(_cfg(), model), device_type="cpu", dtype=torch.bfloat16,
        grad_scaler=RecordingScaler(calls),
    )
    _run_steps(trainer, 1)
    assert calls == ["scale", "unscale_", "step", "clip", "update"]
    reference = _reference_grad_norm()
    assert reference > CLIP_VALUE  # clipping is active
    assert norms[0] == pytest.approx(reference, rel=1e-3)  # clipping saw unscaled gradients

    state = trainer.state_dict()
    assert state["grad_scaler"] == {"scale": LOSS_SCALE}
    trainer.grad_scaler.scale_value = 1.0
    trainer.load_state_dict(state)
    assert trainer.grad_scaler.scale_value == LOSS_SCALE


def test_real_grad_scaler_gives_the_unscaled_update():
    """With torch's GradScaler (CPU backend) the update equals the one without loss scaling."""
    updated = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=LOSS_SCALE)):
        model = LossModel()
        trainer = AutocastTrainer(
            model, _data(), build_optimizer(_cfg(), model), device_type="cpu", dtype=torch.bfloat16,
            grad_scaler=scaler,
        )
        _run_steps(trainer, 2)
        updated.append(model.state_dict())
    for k in updated[0]:
        torch.testing.assert_close(updated[0][k], updated[1][k], rtol=1e-4, atol=1e-6)


def test_build_trainer_step():
    model = LossModel()
    cfg = _cfg()
    opt = build_optimizer(cfg, model)
    assert type(build_trainer_step(cfg, model, _data(), opt)) is SimpleTrainer

    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.DTYPE = "bfloat16"
    trainer = build_trainer_step(cfg, model, _data(), opt)
    assert isinstance(trainer, AutocastTrainer)
    assert (trainer.device_type, trainer.dtype, trainer.grad_scaler) == ("cpu", torch.bfloat16, None)

    cfg.SOLVER.AMP.DTYPE = "float16"
    with pytest.raises(ValueError, match="bfloat16"):
        build_trainer_step(cfg, model, _data(), opt)

    cfg.MODEL.DEVICE = "cuda:0"  # constructing needs no GPU (the scaler disables itself without one)
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        trainer = build_trainer_step(cfg, model, _data(), opt)
    assert (trainer.device_type, trainer.dtype) == ("cuda", torch.float16)
    assert isinstance(trainer.grad_scaler, torch.amp.GradScaler)

    cfg.SOLVER.AMP.DTYPE = "float32"
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE"):
        build_trainer_step(cfg, model, _data(), opt)

