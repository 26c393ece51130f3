"""The Talk2DINO meta-architecture end to end, from the tiny quickstart config (random timm
DINOv2-reg, random tiny CLIP text tower), against slow computations written here from the spec:

* tokens / CLS logits: ``slow_reference`` (explicit LayerNorm, qkv matmul, loops) of the DINOv2 test;
* text: the 7 templates tokenised by open_clip, the frozen tower's ``encode_text``, the raw mean,
  then ψ by hand from its weights (Linear, tanh, Linear) and L2 normalisation;
* maps: sigmoid(cosine) at the patch grid, bilinear (align_corners=True) to the window, windows
  placed and averaged by hand, resized to the output size;
* training: head embeddings, max-over-heads, symmetric InfoNCE and its gradient by autograd on
  copies of ψ's weights.
"""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2/timm)

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from ovseg_d2.data import register_all
from ovseg_d2.modeling.vocabulary import class_names_of

from .conftest import quickstart_cfg
from .test_talk2dino_background_cleaning import slow_background_cleaning
from .test_talk2dino_dinov2 import slow_reference

CONFIG = "configs/quickstart/talk2dino_tiny.yaml"
TEMPLATES = [  # shared/spec/talk2dino.md, in this order
    "itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
WINDOW, STRIDE, PATCH = 112, 56, 14
NAMES = ["red circle", "purple star", "apple"]


@pytest.fixture(scope="module")
def registered(shapes_root):
    register_all()
    return shapes_root


def build(*opts):
    torch.manual_seed(0)
    cfg = quickstart_cfg(CONFIG, "DATALOADER.NUM_WORKERS", "0", *opts)
    model = build_model(cfg)
    with torch.no_grad():  # non-trivial frozen weights (LayerScale starts at 1e-5, norms at 1/0)
        for p in model.dinov2.vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def model(registered):
    return build().eval()


def image(h, w, seed):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---------------------------------------------------------------- slow references
def psi_by_hand(model, raw, weights=None):
    sd = weights or {k: v for k, v in model.projection.state_dict().items()}
    hidden = torch.tanh(raw @ sd["linear_layer.weight"].T + sd["linear_layer.bias"])
    return hidden @ sd["hidden_layers.0.weight"].T + sd["hidden_layers.0.bias"]


def raw_text(model, prompts):
    tokens = open_clip.get_tokenizer("ovseg-tiny-vit8")(prompts)
    with torch.no_grad():
        return model.text_tower.clip.encode_text(tokens, normalize=False).float()


def class_text(model, names):
    raw = raw_text(model, [t.format(n) for n in names for t in TEMPLATES]).view(len(names), len(TEMPLATES), -1)
    with torch.no_grad():
        return F.normalize(psi_by_hand(model, raw.mean(dim=1)), dim=-1, eps=1e-6)


def dino_by_hand(model, windows_uint8):
    """(tokens [B, N, D], logits [B, heads, N]) of RGB 0-255 windows, ImageNet-normalised by hand."""
    x = (windows_uint8.float() / 255 - MEAN) / STD
    return slow_reference(model.dinov2.vit, x)


def window_map_by_hand(model, window, text, cleaning=False):
    """One 112 x 112 window -> [T, 112, 112] upsampled sigmoid(cosine) maps."""
    tokens, logits = dino_by_hand(model, window[None])
    grid = WINDOW // PATCH
    masks = torch.sigmoid(F.normalize(tokens[0], dim=-1, eps=1e-6) @ text.T).T  # T x N
    if cleaning:
        masks = torch.tensor(slow_background_cleaning(masks.double().tolist(), text.double().tolist(),
                                                      tokens[0].double().tolist(), logits[0].double().tolist(), 0.2)).float()
    masks = masks.view(-1, 1, grid, grid).transpose(0, 1)
    return F.interpolate(masks, size=(WINDOW, WINDOW), mode="bilinear", align_corners=True)[0]


def segment_by_hand(model, img, names, out_size=None, cleaning=False):
    """Resize to short side 112 (aspect kept), 112-windows at stride 56, averaged, resized back."""
    text = class_text(model, names)
    h, w = img.shape[-2:]
    scale = WINDOW / min(h, w)
    size = (int(h * scale + 0.5), int(w * scale + 0.5))
    x = img.float()[None]
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    total = torch.zeros(len(names), *size)
    count = torch.zeros(size)
    tops = sorted({min(i * STRIDE, size[0] - WINDOW) for i in range(math.ceil((size[0] - WINDOW) / STRIDE) + 1)})
    lefts = sorted({min(i * STRIDE, size[1] - WINDOW) for i in range(math.ceil((size[1] - WINDOW) / STRIDE) + 1)})
    for t in tops:
        for l in lefts:
            total[:, t : t + WINDOW, l : l + WINDOW] += window_map_by_hand(model, x[0, :, t : t + WINDOW, l : l + WINDOW], text, cleaning)
            count[t : t + WINDOW, l : l + WINDOW] += 1
    scores = total / count
    out_size = out_size or (h, w)
    if tuple(scores.shape[-2:]) != tuple(out_size):
        scores = F.interpolate(scores[None], size=out_size, mode="bilinear", align_corners=False)[0]
    return scores


def run(model, *inputs):
    with torch.no_grad():
        return [o["sem_seg"] for o in model(list(inputs))]


# ---------------------------------------------------------------- inference
def test_single_window_matches_hand_computation(model):
    img = image(112, 112, 1)
    (out,) = run(model, {"image": img, "height": 112, "width": 112, "vocabulary": NAMES})
    expected = segment_by_hand(model, img, NAMES)
    assert out.shape == (3, 112, 112)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert 0.0 < out.min() and out.max() < 1.0  # bare sigmoids of cosines


@pytest.mark.parametrize("size,out_size", [((112, 168), (112, 168)), ((84, 140), (84, 140)), ((84, 140), (42, 70))])
def test_sliding_windows_and_resizing_match_hand_computation(model, size, out_size):
    """Two or three windows after resizing the short side to 112; output at the requested size."""
    img = image(*size, 2)
    (out,) = run(model, {"image": img, "height": out_size[0], "width": out_size[1], "vocabulary": NAMES})
    assert out.shape == (3, *out_size)
    torch.testing.assert_close(out, segment_by_hand(model, img, NAMES, out_size), rtol=1e-4, atol=1e-5)


def test_background_threshold_channel(model):
    img = image(112, 140, 3)
    plain, with_bg = run(
        model,
        {"image": img, "vocabulary": NAMES},
        {"image": img, "vocabulary": ["background"] + NAMES, "background_by_threshold": True},
    )
    assert with_bg.shape == (4, 112, 140)
    assert torch.all(with_bg[0] == 0.55)  # MODEL.BACKGROUND_THRESHOLD of the config, background never text-encoded
    torch.testing.assert_close(with_bg[1:], plain, rtol=0, atol=0)
    # a pixel is background exactly where no class reaches the threshold
    assert torch.equal(with_bg.argmax(0) == 0, plain.max(0).values <= 0.55)  # (argmax takes the first of ties)


def test_background_cleaning_matches_slow_reference(model):
    img = image(112, 112, 4)
    (out,) = run(model, {"image": img, "vocabulary": NAMES, "background_cleaning": True})
    expected = segment_by_hand(model, img, NAMES, cleaning=True)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out, segment_by_hand(model, img, NAMES), atol=1e-4)


def test_any_batch_size_gives_the_per_image_results(model):
    inputs = [
        {"image": image(112, 112, 5), "vocabulary": NAMES},
        {"image": image(84, 140, 6), "vocabulary": NAMES, "height": 42, "width": 70},
        {"image": image(140, 112, 7), "vocabulary": ["apple", "dotted square"]},
        {"image": image(112, 112, 8), "vocabulary": ["background"] + NAMES, "background_by_threshold": True, "background_cleaning": True},
    ]
    together = run(model, *inputs)
    for x, out in zip(inputs, together):
        (alone,) = run(model, x)
        torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-6)
    assert [tuple(o.shape) for o in together] == [(3, 112, 112), (3, 42, 70), (2, 140, 112), (4, 112, 112)]


def test_vocabulary_and_protocol_from_metadata(registered):
    built = build("DATASETS.TEST", "('ovseg_shapes_val_sem_seg',)").eval()
    assert built.test_class_names == class_names_of("ovseg_shapes_val_sem_seg") and not built.test_background_by_threshold
    img = image(112, 112, 9)
    (out,) = run(built, {"image": img})
    torch.testing.assert_close(out, segment_by_hand(built, img, class_names_of("ovseg_shapes_val_sem_seg")), rtol=1e-4, atol=1e-5)

    # V21: background by threshold and background cleaning, both from the metadata (no data on disk needed)
    built.set_test_dataset("voc_2012_test_with_bg_sem_seg")
    v21 = class_names_of("voc_2012_test_with_bg_sem_seg")
    assert built.test_class_names == v21 and v21[0] == "background" and len(v21) == 21
    assert built.test_background_by_threshold and built.test_background_cleaning
    (out,) = run(built, {"image": img})
    assert out.shape == (21, 112, 112) and torch.all(out[0] == 0.55)
    names = [n.split(",")[0].strip() for n in v21[1:]]  # MODEL.TEXT.SYNONYMS "first"
    torch.testing.assert_close(out[1:], segment_by_hand(built, img, names, cleaning=True), rtol=1e-4, atol=1e-5)
    # C60: background by threshold without cleaning (the reference's context_bg configs)
    built.set_test_dataset("context_60_test_sem_seg")
    assert built.test_background_by_threshold and not built.test_background_cleaning
    # a vocabulary given at call time takes MODEL.TALK2DINO.BACKGROUND_CLEANING (False), not the test set's
    built.set_test_dataset("voc_2012_test_with_bg_sem_seg")
    (free,) = run(built, {"image": img, "vocabulary": NAMES})
    torch.testing.assert_close(free, segment_by_hand(built, img, NAMES), rtol=1e-4, atol=1e-5)
    built.set_test_vocabulary(["apple"])
    assert run(built, {"image": img})[0].shape == (1, 112, 112)


# ---------------------------------------------------------------- training and caption evaluation
CAPTIONS = ["a photo of a red circle", "a striped square on a sand background", "a photo of a purple star and an apple"]


def caption_batch():
    return [{"image": image(112, 112, 20 + i), "caption": c, "image_id": i, "caption_id": i} for i, c in enumerate(CAPTIONS)]


def loss_by_hand(model, batch, weights):
    tokens, logits = dino_by_hand(model, torch.stack([x["image"] for x in batch]))
    heads = F.normalize(torch.einsum("bhn,bnd->bhd", logits.softmax(-1), tokens), dim=-1)  # B x heads x D
    text = F.normalize(psi_by_hand(model, raw_text(model, [x["caption"] for x in batch]), weights), dim=-1)
    rows = []
    for i in range(len(batch)):
        best = max(range(heads.shape[1]), key=lambda h: float((heads[i, h] @ text[i]).detach()))
        rows.append(heads[i, best])
    sims = torch.stack(rows) @ text.T / 0.07
    target = torch.arange(len(batch))
    return (F.cross_entropy(sims, target) + F.cross_entropy(sims.T, target)) / 2


def test_training_loss_and_gradients_reach_psi_only(registered):
    model = build().train()
    assert not model.dinov2.vit.training and not model.text_tower.clip.training  # frozen towers stay in eval
    batch = caption_batch()
    loss = model(batch)["loss_talk2dino"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.named_parameters() if n.startswith("projection.")} == {
        "projection.linear_layer.weight", "projection.linear_layer.bias",
        "projection.hidden_layers.0.weight", "projection.hidden_layers.0.bias",
    }
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("projection."))

    weights = {k: v.detach().clone().requires_grad_(True) for k, v in model.projection.state_dict().items()}
    expected = loss_by_hand(model, batch, weights)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-4, atol=1e-5)
    expected.backward()
    for key, w in weights.items():
        torch.testing.assert_close(dict(model.projection.named_parameters())[key].grad, w.grad, rtol=1e-3, atol=1e-6)


def test_caption_evaluation_outputs(model):
    batch = caption_batch()
    with torch.no_grad():
        outputs = model(batch)
    tokens, logits = dino_by_hand(model, torch.stack([x["image"] for x in batch]))
    heads = F.normalize(torch.einsum("bhn,bnd->bhd", logits.softmax(-1), tokens), dim=-1)
    with torch.no_grad():
        text = F.normalize(psi_by_hand(model, raw_text(model, CAPTIONS)), dim=-1)
    for out, h, t in zip(outputs, heads, text):
        assert set(out) == {"head_embeddings", "caption_embedding"}
        assert out["head_embeddings"].shape == (4, 64) and out["caption_embedding"].shape == (64,)
        torch.testing.assert_close(out["head_embeddings"], h, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["caption_embedding"], t, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_are_named(model, registered):
    with pytest.raises(KeyError, match="no 'image'"):
        run(model, {"vocabulary": NAMES})
    empty = build().eval()
    empty.set_test_vocabulary([])
    with pytest.raises(ValueError, match="no test vocabulary"):
        run(empty, {"image": image(112, 112, 0)})
    trainable = build().train()
    with pytest.raises(KeyError, match="neither 'caption' nor 'caption_text_feature'"):
        trainable([{"image": image(112, 112, 0)}, {"image": image(112, 112, 1)}])
    with pytest.raises(ValueError, match="multiple of DINOv2's patch size"):
        build("MODEL.TALK2DINO.WINDOW", "100")


def test_pamr_refines_the_upsampled_window_maps_guided_by_the_raw_window(registered):
    """PAMR (1 iteration, dilations 1 and 2 to keep the loop reference short) after upsampling,
    guided by the window's RGB 0-255 pixels; the background channel is added after it."""
    from .test_talk2dino_pamr import slow_pamr

    refined = build("MODEL.TALK2DINO.PAMR", "True", "MODEL.TALK2DINO.PAMR_ITERATIONS", "1", "MODEL.TALK2DINO.PAMR_DILATIONS", "[1, 2]").eval()
    img = image(112, 112, 10)
    (out,) = run(refined, {"image": img, "vocabulary": ["background"] + NAMES, "background_by_threshold": True})
    maps = window_map_by_hand(refined, img.float(), class_text(refined, NAMES))
    expected = torch.tensor(slow_pamr(maps.double().tolist(), img.double().tolist(), 1, [1, 2])).float()
    assert torch.all(out[0] == 0.55)
    torch.testing.assert_close(out[1:], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out[1:], maps, atol=1e-4)


def test_bgr_input_is_swapped_to_rgb(model, registered):
    """INPUT.FORMAT BGR (mmseg-style decoding): the model swaps to RGB, so DINOv2 sees the same
    pixels as with RGB input (the reference demo feeds BGR to DINOv2; we do not)."""
    bgr = build("INPUT.FORMAT", "BGR").eval()
    img = image(112, 140, 11)
    (from_bgr,) = run(bgr, {"image": img.flip(0), "vocabulary": NAMES})
    (from_rgb,) = run(model, {"image": img, "vocabulary": NAMES})
    torch.testing.assert_close(from_bgr, from_rgb, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs RGB or BGR"):
        build("INPUT.FORMAT", "L")
