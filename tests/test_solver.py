"""Optimizer construction: LR multipliers, weight-decay classes, full-model gradient clipping."""
import logging

import ovseg_d2  # noqa: F401  (environment remedies before detectron2/torchvision)

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from ovseg_d2.config import add_ovseg_config
from ovseg_d2.solver import build_optimizer, build_param_groups

BASE_LR = 0.1
WD, WD_NORM, WD_BIAS, WD_EMBED = 0.05, 0.001, 0.002, 0.003


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(10, 4)
        self.positional_embedding = nn.Parameter(torch.zeros(5, 4))
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 3)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.ones([]))


def _per_param(groups):
    out = {}
    for g in groups:
        for name, p in zip(g["param_names"], g["params"]):
            assert name not in out, f"{name} in two groups"
            out[name] = (g["lr"], g["weight_decay"], p)
    return out


def _groups(model, multipliers=()):
    return build_param_groups(
        model,
        base_lr=BASE_LR,
        weight_decay=WD,
        weight_decay_norm=WD_NORM,
        weight_decay_bias=WD_BIAS,
        weight_decay_embed=WD_EMBED,
        lr_multipliers=multipliers,
    )


def test_lr_and_weight_decay_per_parameter(caplog):
    model = TinyModel()
    multipliers = [(r"^backbone\.0\.", 0.1), (r"backbone", 0.5), (r"head\.bias", 3.0), (r"no_such_param", 2.0)]
    with caplog.at_level(logging.WARNING, logger="ovseg_d2.solver.build"):
        groups = _groups(model, multipliers)
    per = _per_param(groups)
    expected = {
        "token_embedding.weight": (BASE_LR, WD_EMBED),
        "positional_embedding": (BASE_LR, WD_EMBED),
        "logit_scale": (BASE_LR, WD_EMBED),
        "backbone.0.weight": (BASE_LR * 0.1, WD),  # first regex wins over "backbone"
        "backbone.0.bias": (BASE_LR * 0.1, WD_BIAS),
        "backbone.1.weight": (BASE_LR * 0.5, WD_NORM),
        "backbone.1.bias": (BASE_LR * 0.5, WD_NORM),  # norm layer beats bias
        "head.weight": (BASE_LR, WD),
        "head.bias": (BASE_LR * 3.0, WD_BIAS),
    }
    assert set(per) == set(expected)  # frozen.* excluded
    for name, (lr, wd) in expected.items():
        assert per[name][0] == pytest.approx(lr), name
        assert per[name][1] == pytest.approx(wd), name
        assert per[name][2] is model.get_parameter(name)
    # one group per distinct (lr, weight decay)
    keys = [(g["lr"], g["weight_decay"]) for g in groups]
    assert len(keys) == len(set(keys)) == len(set(expected.values()))
    for g in groups:
        assert g["lr"] == pytest.approx(BASE_LR * g["lr_multiplier"])
    # the typo guard names the regex that matched nothing, once
    warnings = [r.getMessage() for r in caplog.records if "no_such_param" in r.getMessage()]
    assert len(warnings) == 1


def test_none_decays_follow_weight_decay_and_shared_params_once():
    model = TinyModel()
    model.tied = model.head  # the same parameters reachable twice
    groups = build_param_groups(
        model, base_lr=1.0, weight_decay=WD, weight_decay_norm=None, weight_decay_bias=None,
        weight_decay_embed=None, lr_multipliers=[],
    )
    per = _per_param(groups)
    assert {wd for _, wd, _ in per.values()} == {WD}
    assert len(per) == sum(p.requires_grad for p in model.parameters())


def test_optimizer_accepts_groups_and_scheduler_works():
    from detectron2.solver import build_lr_scheduler

    cfg = add_ovseg_config(get_cfg())
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.LR_MULTIPLIERS = [["backbone", 0.5]]
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS = 10, 0, (5,)
    model = TinyModel()
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(6):
        opt.step()
        sched.step()
    for g in opt.param_groups:  # per-group LR kept its multiplier through the schedule
        assert g["lr"] == pytest.approx(BASE_LR * g["lr_multiplier"] * cfg.SOLVER.GAMMA)
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert "param_names" in state["param_groups"][0]


@pytest.mark.parametrize("name,cls", [("ADAMW", torch.optim.AdamW), ("adam", torch.optim.Adam), ("SGD", torch.optim.SGD)])
def test_optimizer_choices(name, cls):
    cfg = add_ovseg_config(get_cfg())
    cfg.SOLVER.OPTIMIZER = name
    opt = build_optimizer(cfg, TinyModel())
    assert type(opt) is cls


def test_errors():
    cfg = add_ovseg_config(get_cfg())
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="ADAMW"):
        build_optimizer(cfg, TinyModel())
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    for bad in (["backbone", 0.5], [["backbone"]], [["backbone", "x"]], [["(", 1.0]], [["a", -1.0]]):
        cfg.SOLVER.LR_MULTIPLIERS = bad
        with pytest.raises(ValueError, match="LR_MULTIPLIERS"):
            build_optimizer(cfg, TinyModel())
    cfg.SOLVER.LR_MULTIPLIERS = []
    frozen = TinyModel().requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        build_optimizer(cfg, frozen)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "global"
    with pytest.raises(ValueError, match="full_model"):
        build_optimizer(cfg, TinyModel())


def _sgd_cfg(clip_type, clip_value):
    cfg = add_ovseg_config(get_cfg())
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = cfg.SOLVER.WEIGHT_DECAY_NORM = cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    return cfg


def _set_grads(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 3.0
    return params


@pytest.mark.parametrize("clip_value", [0.5, 1e6])
def test_full_model_clipping_uses_one_global_norm(clip_value):
    torch.manual_seed(0)
    model = TinyModel()
    opt = build_optimizer(_sgd_cfg("full_model", clip_value), model)
    params = _set_grads(model)
    before = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    total_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = min(1.0, clip_value / (float(total_norm) + 1e-6))  # clip_grad_norm_'s coefficient
    opt.step()
    updates = [b - p.detach() for b, p in zip(before, params)]  # SGD lr=1: update = used gradient
    for u, g in zip(updates, grads):
        torch.testing.assert_close(u, g * scale)
    used_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(u) for u in updates]))
    assert float(used_norm) == pytest.approx(min(float(total_norm), clip_value), rel=1e-4)
    assert "FullModelGradientClip" in type(opt).__name__


def test_detectron2_per_parameter_clipping_still_available():
    model = TinyModel()
    clip = 0.5
    opt = build_optimizer(_sgd_cfg("norm", clip), model)
    params = _set_grads(model)
    before = [p.detach().clone() for p in params]
    opt.step()
    for b, p in zip(before, params):  # each parameter's own update is clipped to the norm
        assert float(torch.linalg.vector_norm(b - p.detach())) <= clip + 1e-5
