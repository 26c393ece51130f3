"""CAT-Seg head: released-checkpoint layout, and every step against slow references written here.

The references follow the specification literally (concatenated guidance repeated per class,
materialised padding copies, explicit windows and softmax) and share no code with the module
beyond reading its parameters.
"""
import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_sem_seg_head

from ovseg_d2 import add_ovseg_config
from ovseg_d2.modeling.heads import (
    CATSegAggregator,
    CATSegHead,
    ClassAggregation,
    ClassLinearAttention,
    GuidedSwinBlock,
    released_key_to_head_key,
)

ANCHORS = "/work/shared/anchors"
EPS = 1e-6  # linear-attention eps of the reference

# Small sizes for logic tests: 8x8 grid, window 4 (shift 2), budget 16 classes.
SMALL = dict(
    appearance_guidance_dim=24,
    text_guidance_dim=24,
    hidden_dim=32,
    num_layers=2,
    num_heads=4,
    window_size=4,
    feature_resolution=(8, 8),
    appearance_guidance_proj_dim=16,
    text_guidance_proj_dim=16,
    decoder_guidance_dims=(12, 10),
    decoder_guidance_proj_dims=(8, 8),
    decoder_dims=(32, 16),
    prompt_channels=1,
    pooling_size=(2, 2),
    test_pooling_size=(1, 1),
    class_token_budget=16,
)


def perturb_(module, scale=0.1, seed=0):
    """Random init leaves zeros/ones (biases, norms, padding tokens): perturb every parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def small_aggregator(**overrides):
    torch.manual_seed(0)
    return perturb_(CATSegAggregator(**{**SMALL, **overrides}))


def small_inputs(B=2, T=5, P=1, h=8, w=8, seed=1, sizes=SMALL):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(B, sizes["appearance_guidance_dim"], h, w, generator=g)
    text = torch.randn(T, P, sizes["text_guidance_dim"], generator=g)
    d1, d2 = sizes["decoder_guidance_dims"]
    dec = [torch.randn(B, d1, 2 * h, 2 * w, generator=g), torch.randn(B, d2, 4 * h, 4 * w, generator=g)]
    return img, text, dec


# ----------------------------------------------------------------------------- references
def band(i, n, ws, shift):
    """Swin's region label of row/column i of the (already rolled) grid: cuts at n-ws, n-shift."""
    return 0 if i < n - ws else (1 if i < n - shift else 2)


def region_labels(H, W, ws, shift):
    return torch.tensor([[band(r, H, ws, shift) * 3 + band(c, W, ws, shift) for c in range(W)] for r in range(H)])


def window_mask_reference(H, W, ws, shift):
    """nW x N x N, windows row-major, -100 between tokens of different regions."""
    labels = region_labels(H, W, ws, shift)
    masks = []
    for r0 in range(0, H, ws):
        for c0 in range(0, W, ws):
            lab = labels[r0 : r0 + ws, c0 : c0 + ws].reshape(-1)
            masks.append(torch.where(lab[:, None] == lab[None, :], 0.0, -100.0))
    return torch.stack(masks)


def swin_block_loop_reference(block, x, guidance):
    """One map and one window at a time, explicit per-head softmax. x: B x T x H x W x C;
    guidance: B x H x W x Cg (layer-normed)."""
    B, T, H, W, C = x.shape
    ws, s = block.window_size, block.shift_size
    heads = block.attn.num_heads
    D = C // heads
    labels = region_labels(H, W, ws, s)
    a = block.attn
    out = torch.empty_like(x)
    xn = block.norm1(x)
    for b in range(B):
        for t in range(T):
            feat = torch.roll(torch.cat([xn[b, t], guidance[b]], dim=-1), shifts=(-s, -s), dims=(0, 1))
            update = torch.zeros(H, W, C)
            for r0 in range(0, H, ws):
                for c0 in range(0, W, ws):
                    tok = feat[r0 : r0 + ws, c0 : c0 + ws].reshape(ws * ws, -1)
                    lab = labels[r0 : r0 + ws, c0 : c0 + ws].reshape(-1)
                    q = tok @ a.q.weight.T + a.q.bias
                    k = tok @ a.k.weight.T + a.k.bias
                    v = tok[:, :C] @ a.v.weight.T + a.v.bias
                    o = torch.empty(ws * ws, C)
                    for h in range(heads):
                        sl = slice(h * D, (h + 1) * D)
                        logits = (q[:, sl] @ k[:, sl].T) / math.sqrt(D)
                        if s:
                            logits = logits + torch.where(lab[:, None] == lab[None, :], 0.0, -100.0)
                        e = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
                        o[:, sl] = (e / e.sum(dim=-1, keepdim=True)) @ v[:, sl]
                    update[r0 : r0 + ws, c0 : c0 + ws] = (o @ a.proj.weight.T + a.proj.bias).reshape(ws, ws, C)
            y = x[b, t] + torch.roll(update, shifts=(s, s), dims=(0, 1))
            out[b, t] = y + block.mlp(block.norm2(y))
    return out


def swin_block_reference(block, x, guidance):
    """Vectorised version of the loop reference (concat, roll, partition, softmax with mask)."""
    B, T, H, W, C = x.shape
    ws, s = block.window_size, block.shift_size
    heads, D = block.attn.num_heads, C // block.attn.num_heads
    feat = torch.cat([block.norm1(x), guidance[:, None].expand(-1, T, -1, -1, -1)], dim=-1).reshape(B * T, H, W, -1)
    feat = torch.roll(feat, shifts=(-s, -s), dims=(1, 2))
    nW, N = (H // ws) * (W // ws), ws * ws
    win = feat.reshape(B * T, H // ws, ws, W // ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B * T, nW, N, -1)
    a = block.attn
    q = a.q(win).reshape(B * T, nW, N, heads, D).transpose(2, 3)
    k = a.k(win).reshape(B * T, nW, N, heads, D).transpose(2, 3)
    v = a.v(win[..., :C]).reshape(B * T, nW, N, heads, D).transpose(2, 3)
    logits = q @ k.transpose(-1, -2) / math.sqrt(D)
    if s:
        logits = logits + window_mask_reference(H, W, ws, s)[None, :, None]
    o = (logits.softmax(dim=-1) @ v).transpose(2, 3).reshape(B * T, nW, N, C)
    o = a.proj(o).reshape(B * T, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B * T, H, W, C)
    y = x + torch.roll(o, shifts=(s, s), dims=(1, 2)).reshape(B, T, H, W, C)
    return y + block.mlp(block.norm2(y))


def linear_attention_reference(attn, x, guidance, n_pad=0, pad_x=None, pad_g=None):
    """Kernel form, one head at a time, padding copies materialised.
    x: B x M x T x C; guidance: B x T x Cg; pad_x: C; pad_g: Cg."""
    B, M, T, C = x.shape
    heads, D = attn.num_heads, C // attn.num_heads
    feats = torch.cat([x, guidance[:, None].expand(-1, M, -1, -1)], dim=-1)
    values_in = x
    if n_pad:
        pad_feat = torch.cat([pad_x, pad_g]).expand(B, M, n_pad, -1)
        keys_in = torch.cat([feats, pad_feat], dim=2)
        values_in = torch.cat([x, pad_x.expand(B, M, n_pad, C)], dim=2)
    else:
        keys_in = feats
    q = F.elu(feats @ attn.q.weight.T + attn.q.bias) + 1
    k = F.elu(keys_in @ attn.k.weight.T + attn.k.bias) + 1
    v = values_in @ attn.v.weight.T + attn.v.bias
    out = torch.empty(B, M, T, C)
    for h in range(heads):
        sl = slice(h * D, (h + 1) * D)
        a = q[..., sl] @ k[..., sl].transpose(-1, -2)  # B x M x T x S
        out[..., sl] = (a @ v[..., sl]) / (a.sum(dim=-1, keepdim=True) + EPS)
    return out


def class_layer_reference(layer, x, guidance):
    """The reference's ClassTransformerLayer: pool, pad with real copies, attention over S
    tokens (its einsum formula), MLP, upsample (align_corners=True), drop padding, residual."""
    B, T, H, W, C = x.shape
    pool = layer.current_pooling_size()
    p = F.avg_pool2d(x.permute(0, 1, 4, 2, 3).reshape(B * T, C, H, W), pool)
    h, w = p.shape[-2:]
    p = p.reshape(B, T, C, h, w)
    g = guidance
    n_pad = layer.pad_len - T if layer.padding_tokens is not None and T < layer.pad_len else 0
    if n_pad:
        p = torch.cat([p, layer.padding_tokens.reshape(1, 1, C, 1, 1).expand(B, n_pad, C, h, w)], dim=1)
        g = torch.cat([g, layer.padding_guidance.expand(B, n_pad, -1)], dim=1)
    S = p.shape[1]
    tokens = p.permute(0, 3, 4, 1, 2).reshape(B * h * w, S, C)
    g = g[:, None, None].expand(-1, h, w, -1, -1).reshape(B * h * w, S, -1)
    a = layer.attention
    heads, D = a.num_heads, C // a.num_heads
    xn = layer.norm1(tokens)
    Q = F.elu(a.q(torch.cat([xn, g], -1)).reshape(-1, S, heads, D)) + 1
    K = F.elu(a.k(torch.cat([xn, g], -1)).reshape(-1, S, heads, D)) + 1
    V = a.v(xn).reshape(-1, S, heads, D) / S
    KV = torch.einsum("nshd,nshv->nhdv", K, V)
    Z = 1 / (torch.einsum("nlhd,nhd->nlh", Q, K.sum(dim=1)) + EPS)
    att = torch.einsum("nlhd,nhdv,nlh->nlhv", Q, KV, Z) * S
    y = tokens + att.reshape(-1, S, C)
    y = y + layer.MLP(layer.norm2(y))
    y = y.reshape(B, h, w, S, C).permute(0, 3, 4, 1, 2).reshape(B * S, C, h, w)
    y = F.interpolate(y, size=(H, W), mode="bilinear", align_corners=True)
    y = y.reshape(B, S, C, H, W)[:, :T].permute(0, 1, 3, 4, 2)
    return x + y


def up_reference(up, x, guidance):
    y = up.up(x)
    y = torch.cat([y, guidance.repeat_interleave(y.shape[0] // guidance.shape[0], dim=0)], dim=1)
    return up.conv.double_conv(y)


def aggregator_reference(agg, img, text, dec):
    """The whole aggregator, literally: text T x P x C."""
    B = img.shape[0]
    text = F.normalize(text, dim=-1)[None].expand(B, -1, -1, -1)
    cost = torch.einsum("bchw,btpc->btphw", F.normalize(img, dim=1), text)
    T_all = cost.shape[1]
    kept = None
    if T_all > agg.class_token_budget:
        kept = cost.flatten(2).max(dim=-1).values.topk(agg.class_token_budget, dim=1).indices
        cost = torch.stack([cost[b, kept[b]] for b in range(B)])
        text = torch.stack([text[b, kept[b]] for b in range(B)])
    T, h, w = cost.shape[1], cost.shape[-2], cost.shape[-1]
    x = agg.conv1(cost.reshape(B * T, -1, h, w)).reshape(B, T, -1, h, w).permute(0, 1, 3, 4, 2)
    app = agg.guidance_projection(img).permute(0, 2, 3, 1)
    tg = text.mean(dim=2)
    tg = agg.text_guidance_projection(tg / tg.norm(dim=-1, keepdim=True))
    dg = [proj(g) for proj, g in zip(agg.decoder_guidance_projection, dec)]
    for layer in agg.layers:
        sb = layer.swin_block
        g = sb.guidance_norm(app)
        x = swin_block_reference(sb.block_2, swin_block_reference(sb.block_1, x, g), g)
        x = class_layer_reference(layer.attention, x, tg)
    y = x.permute(0, 1, 4, 2, 3).reshape(B * T, -1, h, w)
    y = agg.head(up_reference(agg.decoder2, up_reference(agg.decoder1, y, dg[0]), dg[1]))
    logits = y.reshape(B, T, 4 * h, 4 * w)
    if kept is None:
        return logits
    out = torch.full((B, T_all, 4 * h, 4 * w), -100.0)
    for b in range(B):
        out[b, kept[b]] = logits[b]
    return out


# ----------------------------------------------------------------------------- layout
def read_anchor(name):
    rows = []
    with open(os.path.join(ANCHORS, name)) as f:
        for line in f:
            key, shape, _dtype = line.rstrip("\n").split("\t")
            rows.append((key, tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())))
    return rows


@pytest.mark.parametrize(
    "anchor, dense_dim, width, taps",
    [
        ("catseg_vitb16_384_state_dict.tsv", 512, 768, (3, 7)),
        ("catseg_vitl14_336_state_dict.tsv", 768, 1024, (7, 15)),
    ],
)
def test_released_layout_loads_strictly_by_value(anchor, dense_dim, width, taps):
    rows = [(k, s) for k, s in read_anchor(anchor) if released_key_to_head_key(k) is not None]
    assert any(k.startswith("sem_seg_head.predictor.transformer.") for k, _ in rows)
    assert {k for k, _ in rows if not k.startswith("sem_seg_head.")} == {
        "upsample1.weight", "upsample1.bias", "upsample2.weight", "upsample2.bias",
    }
    # Built from the config, as detectron2 does, with the backbone's output shapes.
    cfg = add_ovseg_config(get_cfg())
    cfg.MODEL.SEM_SEG_HEAD.NAME = "CATSegHead"
    cfg.MODEL.CLIP.INTERMEDIATE_LAYERS = list(taps)
    shapes = {"dense": ShapeSpec(channels=dense_dim, stride=16)}
    shapes.update({f"layer{i}": ShapeSpec(channels=width, stride=16) for i in taps})
    head = build_sem_seg_head(cfg, shapes)
    assert isinstance(head, CATSegHead) and SEM_SEG_HEADS_REGISTRY.get("CATSegHead") is CATSegHead
    assert head.in_features == ["dense", f"layer{taps[0]}", f"layer{taps[1]}"]

    g = torch.Generator().manual_seed(0)
    released = {k: torch.randn(s, generator=g) for k, s in rows}
    mapped = {released_key_to_head_key(k): v for k, v in released.items()}
    ours = head.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in mapped.items()}
    head.load_state_dict(mapped, strict=True)
    ours = head.state_dict()
    for key, value in released.items():
        assert torch.equal(ours[released_key_to_head_key(key)], value), key
    # attn_mask is a (persistent) buffer only in the shifted block, as in the checkpoint.
    used = head.transformer.layers[0].swin_block.block_2.attn_mask
    assert used.data_ptr() == ours["transformer.layers.0.swin_block.block_2.attn_mask"].data_ptr()
    assert released_key_to_head_key("sem_seg_head.predictor.clip_model.visual.proj") is None


def test_built_window_mask_is_the_reference_mask():
    block = GuidedSwinBlock(16, 8, (24, 24), num_heads=4, window_size=12, shift_size=6)
    assert block.attn_mask.shape == (4, 144, 144)
    assert torch.equal(block.attn_mask, window_mask_reference(24, 24, 12, 6))
    assert GuidedSwinBlock(16, 8, (24, 24), num_heads=4, window_size=12, shift_size=0).attn_mask is None


# ----------------------------------------------------------------------------- spatial
@pytest.mark.parametrize("resolution, window, shift", [((8, 8), 4, 0), ((8, 8), 4, 2), ((24, 24), 12, 6)])
def test_swin_block_matches_window_loop_reference(resolution, window, shift):
    torch.manual_seed(0)
    block = perturb_(GuidedSwinBlock(16, 8, resolution, num_heads=4, window_size=window, shift_size=shift))
    x = torch.randn(2, 2, *resolution, 16)
    guidance = torch.randn(2, *resolution, 8)
    with torch.no_grad():
        got = block(x, guidance)
        want = swin_block_loop_reference(block, x, guidance)
        vec = swin_block_reference(block, x, guidance)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vec, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- class attention
@pytest.mark.parametrize("n_pad", [0, 9])
def test_linear_attention_matches_per_head_reference(n_pad):
    torch.manual_seed(0)
    attn = perturb_(ClassLinearAttention(16, 8, num_heads=4))
    x, g = torch.randn(2, 3, 7, 16), torch.randn(2, 7, 8)
    pad_x, pad_g = torch.randn(16), torch.randn(8)
    with torch.no_grad():
        got = attn(x, g, num_padding=n_pad, padding_x=pad_x, padding_guidance=pad_g)
        want = linear_attention_reference(attn, x, g, n_pad, pad_x, pad_g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("T", [20, 255])
def test_padding_trick_matches_materialised_padding(training, T):
    """Real sizes (128-d, 4 heads, budget 256): one shared padding share times (256 - T) equals
    256 - T real padding copies in the sums."""
    torch.manual_seed(0)
    layer = perturb_(ClassAggregation(128, 128, num_heads=4, pooling_size=(2, 2), test_pooling_size=(1, 1), pad_len=256))
    layer.train(training)
    x, g = torch.randn(2, T, 4, 4, 128), torch.randn(2, T, 128)
    with torch.no_grad():
        got = layer(x, g)
        want = class_layer_reference(layer, x, g)
    assert (got - want).abs().max().item() <= 1e-5


def test_class_layer_residual_structure():
    """Pooling 1x1: out = x + (x + attention + MLP): with both zeroed, exactly 2x (anchor check).
    Pooling 2x2: out = x + upsample(pool(x))."""
    torch.manual_seed(0)
    layer = perturb_(ClassAggregation(32, 16, num_heads=4, pooling_size=(2, 2), test_pooling_size=(1, 1), pad_len=16))
    with torch.no_grad():
        layer.attention.v.weight.zero_()
        layer.attention.v.bias.zero_()
        layer.MLP[2].weight.zero_()
        layer.MLP[2].bias.zero_()
        x, g = torch.randn(2, 5, 8, 8, 32), torch.randn(2, 5, 16)
        assert torch.equal(layer.eval()(x, g), 2 * x)
        pooled = F.avg_pool2d(x.permute(0, 1, 4, 2, 3).reshape(10, 32, 8, 8), 2)
        up = F.interpolate(pooled, size=(8, 8), mode="bilinear", align_corners=True)
        want = x + up.reshape(2, 5, 32, 8, 8).permute(0, 1, 3, 4, 2)
        torch.testing.assert_close(layer.train()(x, g), want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- whole aggregator
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("T, P", [(5, 1), (16, 1), (20, 1), (6, 3)])
def test_aggregator_matches_literal_reference(training, T, P):
    agg = small_aggregator(prompt_channels=P).train(training)
    img, text, dec = small_inputs(T=T, P=P)
    with torch.no_grad():
        got = agg(img, text, dec)
        want = aggregator_reference(agg, img, text, dec)
    assert got.shape == (2, T, 32, 32)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_top_budget_pruning_per_image():
    """T = 300 > 256: per image, the 256 classes with the highest max cosine are kept, the rest get
    exactly -100, and kept logits equal a run on that image's kept classes alone."""
    sizes = {**SMALL, "class_token_budget": 256}
    agg = small_aggregator(class_token_budget=256).eval()
    img, text, dec = small_inputs(B=2, T=300, sizes=sizes)
    with torch.no_grad():
        got = agg(img, text, dec)
    kept_sets = []
    for b in range(2):
        cos = torch.einsum("chw,tc->thw", F.normalize(img[b], dim=0), F.normalize(text[:, 0], dim=-1))
        kept = cos.flatten(1).max(dim=1).values.topk(256).indices.sort().values
        pruned = torch.ones(300, dtype=torch.bool)
        pruned[kept] = False
        assert torch.all(got[b, pruned] == -100.0)
        assert torch.all(got[b, kept] != -100.0)
        with torch.no_grad():
            alone = agg(img[b : b + 1], text[kept], [d[b : b + 1] for d in dec])
        torch.testing.assert_close(got[b, kept], alone[0], rtol=1e-5, atol=1e-5)
        kept_sets.append(set(kept.tolist()))
    assert kept_sets[0] != kept_sets[1]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("T", [7, 23])
def test_batch_of_two_equals_single_images(training, T):
    agg = small_aggregator().train(training)
    img, text, dec = small_inputs(B=2, T=T)
    per_image_text = torch.stack([text, text.flip(0)])  # B x T x P x C: different classes per image
    with torch.no_grad():
        both = agg(img, per_image_text, dec)
        for b in range(2):
            one = agg(img[b : b + 1], per_image_text[b], [d[b : b + 1] for d in dec])
            torch.testing.assert_close(both[b], one[0], rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter_below_budget_and_padding_is_unused_above():
    padding_names = {f"layers.{i}.attention.{n}" for i in range(2) for n in ("padding_tokens", "padding_guidance")}
    for T, expect_none in ((10, set()), (16, padding_names), (23, padding_names)):
        agg = small_aggregator().train()
        img, text, dec = small_inputs(T=T)
        text.requires_grad_(True)
        agg(img, text, dec).square().mean().backward()
        none = {n for n, p in agg.named_parameters() if p.grad is None}
        assert none == expect_none, (T, none)
        for n, p in agg.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (T, n)
        assert text.grad is not None and text.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- CPU chunking
def _set_chunks(agg, maps, rows):
    agg.cpu_chunk_maps = maps
    for layer in agg.layers:
        layer.swin_block.cpu_chunk_maps = maps
        layer.attention.cpu_chunk_rows = rows


def _count_calls(module_list, counter):
    return [m.register_forward_hook(lambda *_: counter.append(1)) for m in module_list]


@pytest.mark.parametrize("maps, rows", [(1, 1), (3, 3), (8, 2), (64, 16)])
@pytest.mark.parametrize("T", [5, 20])
def test_cpu_chunked_inference_equals_batched(maps, rows, T):
    """Chunks (one image, ``maps`` class maps / ``rows`` grid rows at a time, sizes that do not
    divide T or the 8-row grid included) give the batched result; gradients flow through them."""
    agg = small_aggregator().eval()
    img, text, dec = small_inputs(B=3, T=T)
    text.requires_grad_(True)
    _set_chunks(agg, 0, 0)
    want = agg(img, text, dec)
    (want_grad,) = torch.autograd.grad(want.square().sum(), text)
    _set_chunks(agg, maps, rows)
    blocks = []
    hooks = _count_calls([agg.layers[0].swin_block.block_1, agg.layers[0].attention.attention, agg.decoder1], blocks)
    got = agg(img, text, dec)
    for h in hooks:
        h.remove()
    (got_grad,) = torch.autograd.grad(got.square().sum(), text)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-4)
    kept = min(T, SMALL["class_token_budget"])  # T = 20 is pruned to the 16-class budget first
    map_chunks, row_chunks = math.ceil(kept / maps), math.ceil(8 / rows)
    assert len(blocks) == 3 * (map_chunks + row_chunks + map_chunks)  # per image: swin, class, decoder


def test_cpu_chunked_inference_keeps_the_autocast_dtype():
    """Under CPU bf16 autocast the chunked path returns what the batched path returns (dtype and,
    to bf16 precision, values) instead of casting chunks into a float32 buffer."""
    agg = small_aggregator().eval()
    img, text, dec = small_inputs(B=2, T=9)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _set_chunks(agg, 0, 0)
        want = agg(img, text, dec)
        _set_chunks(agg, 4, 3)
        got = agg(img, text, dec)
    assert want.dtype == torch.bfloat16
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)
    # a float32 input whose result is bf16 (the decoder's convolutions under autocast): the chunks
    # are not cast back into a float32 buffer
    x = torch.randn(2, 9, 8, 8, SMALL["hidden_dim"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        projected = [proj(g) for proj, g in zip(agg.decoder_guidance_projection, dec)]
        _set_chunks(agg, 0, 0)
        want = agg.decode(x, projected)
        _set_chunks(agg, 4, 3)
        got = agg.decode(x, projected)
    assert want.dtype == got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)


def test_cpu_chunking_is_off_in_training_with_pooling_and_at_zero():
    img, text, dec = small_inputs(B=2, T=9)
    calls = []
    agg = small_aggregator().train()
    _count_calls([agg.layers[0].swin_block.block_1, agg.layers[0].attention.attention, agg.decoder1], calls)
    with torch.no_grad():
        agg(img, text, dec)
    assert len(calls) == 3  # one batched call each
    calls.clear()
    agg.eval()
    for layer in agg.layers:
        layer.attention.test_pooling_size = (2, 2)  # pooled class attention needs the whole grid
    with torch.no_grad():
        agg(img, text, dec)
    assert len(calls) == 2 * 2 + 1 + 2 * 2  # swin and decoder chunked (T=9, 8 maps), class attention whole
    calls.clear()
    _set_chunks(agg, 0, 0)
    with torch.no_grad():
        agg(img, text, dec)
    assert len(calls) == 3


def test_cpu_chunk_sizes_come_from_config():
    cfg = get_cfg()
    add_ovseg_config(cfg)
    cfg.MODEL.CATSEG.CPU_CHUNK_MAPS, cfg.MODEL.CATSEG.CPU_CHUNK_ROWS = 5, 3
    from ovseg_d2.modeling.heads.catseg_head import build_catseg_aggregator

    agg = build_catseg_aggregator(cfg, appearance_guidance_dim=512, text_guidance_dim=512)
    assert agg.cpu_chunk_maps == 5
    assert all(l.swin_block.cpu_chunk_maps == 5 and l.attention.cpu_chunk_rows == 3 for l in agg.layers)


# ----------------------------------------------------------------------------- head
def test_head_forward_from_feature_dict():
    torch.manual_seed(0)
    agg = small_aggregator()
    head = CATSegHead(transformer=agg, intermediate_dim=20, in_features=("dense", "layer1", "layer2")).eval()
    img, text, _ = small_inputs(T=6)
    feats = {"dense": img, "layer1": torch.randn(2, 20, 8, 8), "layer2": torch.randn(2, 20, 8, 8)}
    with torch.no_grad():
        got = head(feats, text)
        dec = [head.upsample1(feats["layer1"]), head.upsample2(feats["layer2"])]
        want = copy.deepcopy(agg).eval()(img, text, dec)
    assert dec[0].shape == (2, 12, 16, 16) and dec[1].shape == (2, 10, 32, 32)
    assert torch.equal(got, want)
