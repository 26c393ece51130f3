"""DINOv2AttentionBackbone: patch tokens and CLS->patch attention logits vs a slow reference
computed here from the timm blocks' weights (explicit LayerNorm, qkv matmul, loops)."""
import ovseg_d2  # noqa: F401  (environment remedies before timm/torchvision)

import math

import pytest
import torch

from ovseg_d2.modeling.backbone.dinov2 import build_dinov2
from ovseg_d2.modeling.backbone.dinov2_attention import DINOv2AttentionBackbone

MODEL_NAME = "vit_small_patch14_reg4_dinov2.lvd142m"
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
IMAGE_NET_MEAN = [123.675, 116.28, 103.53]
IMAGE_NET_STD = [58.395, 57.12, 57.375]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    vit = build_dinov2(MODEL_NAME, "", img_size=56, model_kwargs=TINY)
    with torch.no_grad():  # non-trivial values everywhere (LayerScale, norms and tokens start constant)
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return DINOv2AttentionBackbone(vit=vit, pixel_mean=IMAGE_NET_MEAN, pixel_std=IMAGE_NET_STD)


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def slow_reference(vit, images):
    """(patch tokens [B,N,D], logits [B,heads,N]) from the blocks' weights, by explicit loops."""
    with torch.no_grad():
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)  # CLS (+ its position) and registers, dynamic position resize
        for block in vit.blocks[:-1]:
            x = block(x)
        last = vit.blocks[-1]
        h = _layer_norm(x, last.norm1.weight, last.norm1.bias, last.norm1.eps)
        qkv = h @ last.attn.qkv.weight.T + last.attn.qkv.bias  # B x T x 3D
        heads, dim = last.attn.num_heads, vit.embed_dim
        head_dim = dim // heads
        prefix = 1 + vit.reg_token.shape[1]
        b, t = qkv.shape[:2]
        logits = torch.zeros(b, heads, t - prefix, dtype=torch.float64)
        for i in range(b):
            for head in range(heads):
                q = qkv[i, 0, head * head_dim : (head + 1) * head_dim].double() / math.sqrt(head_dim)
                for p in range(t - prefix):
                    start = dim + head * head_dim  # keys follow the D query channels
                    k = qkv[i, prefix + p, start : start + head_dim].double()
                    logits[i, head, p] = (q * k).sum()
        x = last(x)  # the block's output does not depend on how its attention is computed
        tokens = _layer_norm(x, vit.norm.weight, vit.norm.bias, vit.norm.eps)[:, prefix:]
    return tokens, logits.float()


@pytest.mark.parametrize("size", [(56, 56), (42, 70)])
def test_tokens_and_logits_match_slow_reference(backbone, size):
    torch.manual_seed(1)
    images = backbone.normalize(torch.randint(0, 256, (2, 3, *size)).float())
    out = backbone(images)
    tokens, logits = slow_reference(backbone.vit, images)
    grid = (size[0] // 14, size[1] // 14)
    assert out["grid"] == grid
    assert out["patch_tokens"].shape == (2, grid[0] * grid[1], 32)
    assert out["cls_attention_logits"].shape == (2, 2, grid[0] * grid[1])
    torch.testing.assert_close(out["cls_attention_logits"], logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["patch_tokens"], tokens, rtol=1e-4, atol=1e-4)
    # the hook reads the very forward timm runs: its final-norm tokens are ours
    full = backbone.vit.forward_features(images)
    assert torch.equal(out["patch_tokens"], full[:, 5:])


def test_frozen_and_stays_in_eval(backbone):
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.vit.training
    assert backbone.state_dict().keys() == {f"vit.{k}" for k in backbone.vit.state_dict()}  # no extra buffers saved


def test_bad_input_size(backbone):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        backbone(torch.zeros(1, 3, 50, 56))


def test_normalize_is_imagenet_over_255(backbone):
    x = torch.randint(0, 256, (1, 3, 4, 4)).float()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(backbone.normalize(x), (x / 255 - mean) / std)
