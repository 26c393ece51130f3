"""OpenCLIPBackbone against slow references built from open_clip's own (packed) modules."""
import copy
import math

import numpy as np
import pytest
import torch

from ovseg_d2.modeling.backbone import (
    OpenCLIPBackbone,
    build_open_clip_model,
    pack_split_qkv_state_dict,
    resize_clip_position_embedding,
    split_packed_qkv_,
)

TINY = "ovseg-tiny-vit8"


@pytest.fixture(scope="module")
def reference_clip():
    torch.manual_seed(0)
    model = build_open_clip_model(TINY, "", force_quick_gelu=True).eval()
    # Random init leaves some tensors at exactly 0/1 (biases, norms): perturb them all so every
    # term of the computation is exercised.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def make_backbone(clip, mode, taps=(), vision="qv", text="qv"):
    return OpenCLIPBackbone(
        clip_model=copy.deepcopy(clip),
        dense_last_block=mode,
        intermediate_layers=taps,
        vision_trainable=vision,
        text_trainable=text,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    ).eval()


def slow_dense_reference(clip, images, mode, taps=()):
    """Token by token, from the packed open_clip model (in_proj_weight slices)."""
    v = clip.visual
    grid = (images.shape[-2] // 8, images.shape[-1] // 8)
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
    x = x + resize_clip_position_embedding(v.positional_embedding, grid)
    x = v.ln_pre(x)
    inter = {}
    for i, block in enumerate(v.transformer.resblocks[:-1]):
        x = block(x)
        if i in taps:
            inter[i] = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
    last = v.transformer.resblocks[-1]
    d = last.attn.embed_dim
    w_v, b_v = last.attn.in_proj_weight[2 * d :], last.attn.in_proj_bias[2 * d :]
    out = torch.empty(x.shape[0], x.shape[1], v.proj.shape[1])
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            token = x[b, t]
            u = last.attn.out_proj(last.ln_1(token) @ w_v.T + b_v)
            if mode == "value":
                y = u
            else:
                y = (x[b, 0] if mode == "value_residual_cls" else token) + u
                y = y + last.mlp(last.ln_2(y))
            out[b, t] = v.ln_post(y) @ v.proj
    return out[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid), inter


@pytest.mark.parametrize("mode", ["value", "value_residual_cls", "value_residual"])
@pytest.mark.parametrize("size", [(128, 128), (96, 144)])
def test_dense_features_match_slow_reference(reference_clip, mode, size):
    torch.manual_seed(1)
    images = torch.randn(2, 3, *size)
    backbone = make_backbone(reference_clip, mode, taps=(0, 2))
    with torch.no_grad():
        got = backbone(images)
        want, inter = slow_dense_reference(reference_clip, images, mode, taps=(0, 2))
    assert got["dense"].shape == (2, 64, size[0] // 8, size[1] // 8)
    torch.testing.assert_close(got["dense"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["layer0"], inter[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["layer2"], inter[2], rtol=1e-5, atol=1e-5)


def test_global_embedding_and_text_unchanged_by_split(reference_clip):
    backbone = make_backbone(reference_clip, "value")
    images = torch.randn(2, 3, 128, 128)
    tokens = torch.randint(1, 1000, (3, 32))
    tokens[:, -1] = 49407
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_image(images), reference_clip.encode_image(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(backbone.encode_text(tokens), reference_clip.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_split_and_pack_are_inverse(reference_clip):
    backbone = make_backbone(reference_clip, "value")
    split_sd = backbone.clip.state_dict()
    assert not any(k.endswith("in_proj_weight") for k in split_sd)
    packed = pack_split_qkv_state_dict(split_sd)
    fresh = build_open_clip_model(TINY, "", force_quick_gelu=True)
    fresh.load_state_dict(packed, strict=True)
    for key, value in reference_clip.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def test_split_attention_same_output():
    attn = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    want = attn(x, x, x, need_weights=False)[0]
    split_packed_qkv_(attn)
    assert attn.in_proj_weight is None and attn.q_proj_weight.shape == (16, 16)
    torch.testing.assert_close(attn(x, x, x, need_weights=False)[0], want, rtol=1e-6, atol=1e-6)


def _bicubic_weights(t, a=-0.75):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def _resize_1d(n_in, n_out):
    """Matrix n_out x n_in of PyTorch's bicubic (a=-0.75, align_corners=False, clamped borders)."""
    m = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for o in range(n_out):
        src = (o + 0.5) * scale - 0.5
        base = math.floor(src)
        for k in range(base - 1, base + 3):
            m[o, min(max(k, 0), n_in - 1)] += _bicubic_weights(src - k)
    return m


@pytest.mark.parametrize("grid", [(6, 6), (4, 7)])
def test_position_embedding_resize_against_numpy_bicubic(grid):
    torch.manual_seed(0)
    table = torch.randn(1 + 4 * 4, 3)
    got = resize_clip_position_embedding(table, grid)
    rows, cols = _resize_1d(4, grid[0]), _resize_1d(4, grid[1])
    square = table[1:].numpy().reshape(4, 4, 3)
    want = np.einsum("ri,ij c,sj->rsc".replace(" ", ""), rows, square, cols).reshape(-1, 3)
    np.testing.assert_allclose(got[1:].numpy(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[0], table[0])
    assert resize_clip_position_embedding(table, (4, 4)) is table


def test_trainable_selection(reference_clip):
    qv = make_backbone(reference_clip, "value", vision="qv", text="qv")
    names = {n for n, p in qv.named_parameters() if p.requires_grad}
    want = {f"clip.visual.transformer.resblocks.{i}.attn.{w}_proj_weight" for i in range(3) for w in "qv"}
    want |= {"clip.visual.transformer.resblocks.3.attn.v_proj_weight"}  # last block: query unused
    want |= {f"clip.transformer.resblocks.{i}.attn.{w}_proj_weight" for i in range(2) for w in "qv"}
    assert names == want
    blocks = make_backbone(reference_clip, "value_residual", vision="blocks", text="none")
    names = {n for n, p in blocks.named_parameters() if p.requires_grad}
    assert all(n.startswith("clip.visual.transformer.resblocks.") for n in names)
    assert "clip.visual.transformer.resblocks.3.mlp.c_fc.weight" in names
    assert "clip.visual.transformer.resblocks.3.attn.q_proj_weight" not in names
    frozen = make_backbone(reference_clip, "value", vision="none", text="none")
    assert not any(p.requires_grad for p in frozen.parameters())


def test_local_weights_file_and_errors(reference_clip, tmp_path):
    path = tmp_path / "tiny_clip.pt"
    torch.save(reference_clip.state_dict(), path)
    loaded = build_open_clip_model(TINY, str(path), force_quick_gelu=True)
    for key, value in reference_clip.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_open_clip_model(TINY, str(tmp_path / "missing.pt"), force_quick_gelu=True)
    with pytest.raises(ValueError, match="not an open_clip model config"):
        build_open_clip_model("ViT-Nope", "", force_quick_gelu=True)
    with pytest.raises(RuntimeError, match="local path"):
        build_open_clip_model(TINY, "openai", force_quick_gelu=True)


def test_bad_options(reference_clip):
    with pytest.raises(ValueError, match="DENSE_LAST_BLOCK"):
        make_backbone(reference_clip, "attention")
    with pytest.raises(ValueError, match="INTERMEDIATE_LAYERS"):
        make_backbone(reference_clip, "value", taps=(3,))
    with pytest.raises(ValueError, match="VISION_TRAINABLE"):
        make_backbone(reference_clip, "value", vision="all")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        make_backbone(reference_clip, "value")(torch.randn(1, 3, 100, 128))
