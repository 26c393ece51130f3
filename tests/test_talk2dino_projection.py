"""ψ (Talk2DINOProjection): values, registry, legacy names, and released files through MODEL.WEIGHTS."""
import ovseg_d2  # noqa: F401

import pytest
import torch
import torch.nn as nn

from ovseg_d2.checkpoint import OvsegCheckpointer
from ovseg_d2.checkpoint.layouts import detect_layout
from ovseg_d2.modeling.heads import TALK2DINO_PROJECTION_REGISTRY, Talk2DINOProjection

RELEASED_DIMS = {"vitb": 768, "vitl": 1024}
TEXT_DIM = 512


def released_state_dict(vision_dim, *, legacy=False, seed=0):
    """A released-layout ψ file's content: random tensors of the released shapes."""
    g = torch.Generator().manual_seed(seed)
    second = "linear_layer2" if legacy else "hidden_layers.0"
    return {
        "linear_layer.weight": torch.randn(vision_dim, TEXT_DIM, generator=g),
        "linear_layer.bias": torch.randn(vision_dim, generator=g),
        f"{second}.weight": torch.randn(vision_dim, vision_dim, generator=g),
        f"{second}.bias": torch.randn(vision_dim, generator=g),
    }


def test_forward_is_linear_tanh_linear():
    torch.manual_seed(0)
    psi = Talk2DINOProjection(text_dim=8, vision_dim=6)
    t = torch.randn(3, 8)
    w1, b1 = psi.linear_layer.weight, psi.linear_layer.bias
    w2, b2 = psi.hidden_layers[0].weight, psi.hidden_layers[0].bias
    expected = torch.tanh(t @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(psi(t), expected)


def test_released_parameter_count_and_registry():
    psi = TALK2DINO_PROJECTION_REGISTRY.get("Talk2DINOProjection")(text_dim=TEXT_DIM, vision_dim=768)
    assert sum(p.numel() for p in psi.parameters()) == 984_576  # the spec's ~0.98 M for ViT-B
    assert set(psi.state_dict()) == {"linear_layer.weight", "linear_layer.bias", "hidden_layers.0.weight", "hidden_layers.0.bias"}


@pytest.mark.parametrize("legacy", [False, True])
def test_module_load_state_dict_accepts_legacy_names(legacy):
    psi = Talk2DINOProjection(text_dim=TEXT_DIM, vision_dim=768)
    sd = released_state_dict(768, legacy=legacy)
    psi.load_state_dict(sd, strict=True)
    second = "linear_layer2" if legacy else "hidden_layers.0"
    assert torch.equal(psi.hidden_layers[0].weight, sd[f"{second}.weight"])
    assert torch.equal(psi.linear_layer.bias, sd["linear_layer.bias"])


class ToyTalk2DINO(nn.Module):
    """The meta-architecture's layout: ψ under ``projection`` next to frozen backbones."""

    def __init__(self, vision_dim):
        super().__init__()
        self.projection = Talk2DINOProjection(text_dim=TEXT_DIM, vision_dim=vision_dim)
        self.dinov2 = nn.Linear(4, 4)


@pytest.mark.parametrize("size", sorted(RELEASED_DIMS))
@pytest.mark.parametrize("legacy", [False, True])
def test_released_file_loads_by_value_through_checkpointer(tmp_path, size, legacy):
    dim = RELEASED_DIMS[size]
    sd = released_state_dict(dim, legacy=legacy, seed=1)
    path = tmp_path / "talk2dino_psi.pth"
    torch.save(sd, path)
    assert detect_layout(sd).name == "talk2dino_release"
    model = ToyTalk2DINO(dim)
    backbone_before = {k: v.clone() for k, v in model.dinov2.state_dict().items()}
    OvsegCheckpointer(model).load(str(path))
    second = "linear_layer2" if legacy else "hidden_layers.0"
    assert torch.equal(model.projection.linear_layer.weight, sd["linear_layer.weight"])
    assert torch.equal(model.projection.linear_layer.bias, sd["linear_layer.bias"])
    assert torch.equal(model.projection.hidden_layers[0].weight, sd[f"{second}.weight"])
    assert torch.equal(model.projection.hidden_layers[0].bias, sd[f"{second}.bias"])
    for k, v in model.dinov2.state_dict().items():  # the rest keeps its weights
        assert torch.equal(v, backbone_before[k])


def test_missing_and_unknown_keys_are_listed(tmp_path):
    sd = released_state_dict(768)
    del sd["hidden_layers.0.bias"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(KeyError, match=r"projection\.hidden_layers\.0\.bias"):
        OvsegCheckpointer(ToyTalk2DINO(768)).load(str(tmp_path / "partial.pth"))
    # a file with a key that is not ψ's is not taken for a ψ release, and strict loading lists it
    sd = released_state_dict(768)
    sd["temperature"] = torch.tensor(0.07)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(KeyError, match="unknown to the model(.|\n)*temperature"):
        OvsegCheckpointer(ToyTalk2DINO(768)).load(str(tmp_path / "extra.pth"))


def test_wrong_size_is_a_shape_error(tmp_path):
    torch.save(released_state_dict(1024), tmp_path / "vitl.pth")
    with pytest.raises(KeyError, match=r"shape mismatch(.|\n)*projection\.linear_layer\.weight: checkpoint \(1024, 512\) vs model \(768, 512\)"):
        OvsegCheckpointer(ToyTalk2DINO(768)).load(str(tmp_path / "vitl.pth"))
