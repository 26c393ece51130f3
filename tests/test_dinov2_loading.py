"""build_dinov2: random init, local files in timm and official DINOv2 layouts, strict errors."""
import ovseg_d2  # noqa: F401  (environment remedies before timm/torchvision)

import pytest
import safetensors.torch
import torch
from timm.layers import resample_abs_pos_embed

from ovseg_d2.modeling.backbone.dinov2 import build_dinov2

MODEL_NAME = "vit_small_patch14_reg4_dinov2.lvd142m"
PATCH = 14
IMG_SIZE = 56  # 4x4 patch grid: small and fast
OFFICIAL_GRID = 37  # official DINOv2 checkpoints: 518 px / 14


def official_dinov2_state_dict_from_timm(model, grid=None, seed=0):
    """The state dict facebookresearch/dinov2's ``DinoVisionTransformer`` would hold for ``model``.

    Official layout: ``cls_token [1,1,D]``, ``pos_embed [1, 1+N, D]`` (position 0 belongs to
    CLS, added to it before the registers are inserted), ``register_tokens [1,R,D]``,
    ``mask_token [1,D]``; blocks/patch_embed/norm keys match timm's. timm folds the CLS position
    into ``cls_token``, so ``cls_token - p0`` with a random ``p0`` in position 0 round-trips.
    With ``grid`` the patch positions are replaced by a random ``grid x grid`` table (as in the
    released 518-px files) and the return also carries that table.
    """
    gen = torch.Generator().manual_seed(seed)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dim = sd["cls_token"].shape[-1]
    cls_pos = torch.randn(1, 1, dim, generator=gen) * 0.02
    patch_pos = sd.pop("pos_embed")
    if grid is not None:
        patch_pos = torch.randn(1, grid * grid, dim, generator=gen) * 0.02
    official = {
        "cls_token": sd.pop("cls_token") - cls_pos,
        "pos_embed": torch.cat([cls_pos, patch_pos], dim=1),
        "register_tokens": sd.pop("reg_token"),
        "mask_token": torch.randn(1, dim, generator=gen),
    }
    official.update(sd)
    return official, patch_pos


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = build_dinov2(MODEL_NAME, "", img_size=IMG_SIZE)
    with torch.no_grad():  # non-trivial values everywhere (gamma, norms, tokens start as constants)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _assert_equal_to(model, source, cls_token_exact=True):
    sa, sb = model.state_dict(), source.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if k == "cls_token" and not cls_token_exact:  # (cls - p0) + p0 in float32
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6)
        else:
            assert torch.equal(sa[k], sb[k]), k


def test_random_init_shapes(source):
    model = source  # built by build_dinov2(MODEL_NAME, "", ...)
    grid = IMG_SIZE // PATCH
    assert model.pos_embed.shape == (1, grid * grid, model.embed_dim)
    assert model.reg_token.shape == (1, 4, model.embed_dim)
    with torch.no_grad():  # dynamic size: another input size still works
        tokens = model.forward_features(torch.randn(1, 3, IMG_SIZE + PATCH, IMG_SIZE))
    assert tokens.shape == (1, 1 + 4 + (grid + 1) * grid, model.embed_dim)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("layout", ["timm", "official"])
def test_local_file_round_trip(tmp_path, source, layout, suffix):
    if layout == "timm":
        state = {k: v.detach().clone() for k, v in source.state_dict().items()}
    else:
        state, _ = official_dinov2_state_dict_from_timm(source)
        assert {"mask_token", "register_tokens"} <= state.keys() and "reg_token" not in state
    path = str(tmp_path / f"weights{suffix}")
    if suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    model = build_dinov2(MODEL_NAME, path, img_size=IMG_SIZE)
    _assert_equal_to(model, source, cls_token_exact=layout == "timm")


def test_official_518px_grid_is_resampled_like_timm(tmp_path, source):
    state, patch_pos = official_dinov2_state_dict_from_timm(source, grid=OFFICIAL_GRID)
    path = str(tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    torch.save(state, path)
    model = build_dinov2(MODEL_NAME, path, img_size=IMG_SIZE)
    grid = IMG_SIZE // PATCH
    expected = resample_abs_pos_embed(
        patch_pos, new_size=(grid, grid), old_size=(OFFICIAL_GRID, OFFICIAL_GRID),
        num_prefix_tokens=0, interpolation="bicubic", antialias=True,
    )
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    for k in ("blocks.3.attn.qkv.weight", "blocks.11.ls2.gamma", "reg_token", "norm.weight"):
        assert torch.equal(model.state_dict()[k], source.state_dict()[k]), k


def test_missing_and_unexpected_keys_are_listed(tmp_path, source):
    state = {k: v.detach().clone() for k, v in source.state_dict().items()}
    del state["blocks.2.ls1.gamma"]
    state["blocks.2.extra.weight"] = torch.zeros(1)
    path = str(tmp_path / "broken.pth")
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"blocks\.2\.ls1\.gamma") as info:
        build_dinov2(MODEL_NAME, path, img_size=IMG_SIZE)
    assert "blocks.2.extra.weight" in str(info.value) and path in str(info.value)


class _CustomObject:  # not in torch's weights_only allowlist
    pass


def test_pickled_objects_are_refused(tmp_path, source):
    path = str(tmp_path / "pickled.pth")
    torch.save({"model": source.state_dict(), "args": _CustomObject()}, path)
    with pytest.raises(RuntimeError, match="weights_only(.|\n)*re-save its"):
        build_dinov2(MODEL_NAME, path, img_size=IMG_SIZE)


def test_bad_sources():
    with pytest.raises(FileNotFoundError, match="no_such_dir/dinov2.pth"):
        build_dinov2(MODEL_NAME, "/no_such_dir/dinov2.pth", img_size=IMG_SIZE)
    with pytest.raises(ValueError, match="not a timm model"):
        build_dinov2("vit_tiny_dinov2_typo", "", img_size=IMG_SIZE)


def test_timm_hub_offline_error_is_explained(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never download in tests
    with pytest.raises(RuntimeError, match="local file"):
        build_dinov2(MODEL_NAME, "timm", img_size=IMG_SIZE)
