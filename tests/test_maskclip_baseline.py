"""MaskCLIPBaseline: cost volume against a slow reference, outputs, and exact trainable set."""
import math

import open_clip
import pytest
import torch

from ovseg_d2.modeling.backbone import OpenCLIPBackbone, build_open_clip_model
from ovseg_d2.modeling.meta_arch import MaskCLIPBaseline, cosine_cost_volume
from ovseg_d2.modeling.text import PromptTextEncoder

TINY = "ovseg-tiny-vit8"
NAMES = ["red circle", "green triangle", "sand background"]


def build_baseline(input_format="RGB"):
    torch.manual_seed(0)
    clip = OpenCLIPBackbone(
        clip_model=build_open_clip_model(TINY, "", force_quick_gelu=True),
        dense_last_block="value",
        vision_trainable="qv",
        text_trainable="qv",
        pixel_mean=[122.8, 116.7, 104.1],
        pixel_std=[68.5, 66.6, 70.3],
    )
    text = PromptTextEncoder(
        encode_tokens=clip.encode_text,
        tokenizer=open_clip.get_tokenizer(TINY),
        templates=("a photo of a {}.",),
        synonym_rule="first",
        parameters=clip.text_parameters,
    )
    return MaskCLIPBaseline(
        clip=clip,
        text_encoder=text,
        train_class_names=NAMES,
        test_class_names=NAMES,
        temperature_init=0.07,
        learn_temperature=True,
        ignore_value=255,
        input_format=input_format,
    )


def test_cost_volume_against_loops():
    torch.manual_seed(0)
    dense, text = torch.randn(2, 5, 3, 4), torch.randn(6, 5)
    got = cosine_cost_volume(dense, text)
    want = torch.empty(2, 6, 3, 4)
    for b in range(2):
        for t in range(6):
            for y in range(3):
                for x in range(4):
                    u, v = dense[b, :, y, x], text[t]
                    want[b, t, y, x] = (u @ v) / (u.norm() * v.norm())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def inputs(n=2, size=(64, 80), with_labels=True):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = {"image": torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g), "height": 50, "width": 70}
        if with_labels:
            label = torch.randint(0, len(NAMES), size, generator=g)
            label[:4] = 255
            x["sem_seg"] = label
        out.append(x)
    return out


def test_inference_outputs_match_manual_pipeline():
    model = build_baseline().eval()
    batch = inputs(1, size=(64, 80), with_labels=False)
    with torch.no_grad():
        out = model(batch)[0]["sem_seg"]
        image = model.backbone.normalize(batch[0]["image"])[None]
        dense = model.backbone(image)["dense"]
        text = model.class_embeddings(NAMES)
        logits = cosine_cost_volume(dense, text) / 0.07
        full = torch.nn.functional.interpolate(logits, size=(64, 80), mode="bilinear", align_corners=False)
        want = torch.nn.functional.interpolate(full, size=(50, 70), mode="bilinear", align_corners=False)[0].softmax(0)
    assert out.shape == (3, 50, 70)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum(0), torch.ones(50, 70))


def test_bgr_input_is_flipped_to_rgb():
    rgb, bgr = build_baseline("RGB").eval(), build_baseline("BGR").eval()
    batch = inputs(1, with_labels=False)
    flipped = [{**batch[0], "image": batch[0]["image"].flip(0)}]
    with torch.no_grad():
        torch.testing.assert_close(rgb(batch)[0]["sem_seg"], bgr(flipped)[0]["sem_seg"])


def test_per_input_vocabulary_overrides():
    model = build_baseline().eval()
    batch = inputs(2, with_labels=False)
    batch[1]["vocabulary"] = ["purple star", "water background"]
    with torch.no_grad():
        out = model(batch)
    assert out[0]["sem_seg"].shape[0] == 3 and out[1]["sem_seg"].shape[0] == 2


def test_gradients_reach_exactly_the_trainable_parameters():
    model = build_baseline().train()
    losses = model(inputs(2))
    assert set(losses) == {"loss_sem_seg"} and math.isfinite(losses["loss_sem_seg"].item())
    losses["loss_sem_seg"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    expected = {"log_inverse_temperature", "backbone.clip.visual.transformer.resblocks.3.attn.v_proj_weight"}
    expected |= {f"backbone.clip.visual.transformer.resblocks.{i}.attn.{w}_proj_weight" for i in range(3) for w in "qv"}
    expected |= {f"backbone.clip.transformer.resblocks.{i}.attn.{w}_proj_weight" for i in range(2) for w in "qv"}
    assert trainable == expected
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


def test_loss_is_cross_entropy_over_valid_pixels_only():
    model = build_baseline().train()
    batch = inputs(1)
    loss = model(batch)["loss_sem_seg"]
    label = batch[0]["sem_seg"]
    logits = model.predict_logits(model.backbone.normalize(batch[0]["image"])[None], NAMES)
    logits = torch.nn.functional.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)[0]
    log_probs = logits.log_softmax(0)
    valid = label != 255
    total, count = 0.0, 0
    for y, x in valid.nonzero().tolist():
        total -= log_probs[label[y, x], y, x].item()
        count += 1
    assert count < label.numel()  # the inputs do hold ignore pixels
    assert abs(loss.item() - total / count) < 1e-4


def test_background_by_threshold_channel():
    from ovseg_d2.modeling.background import add_background_channel

    scores = torch.tensor([[[0.2, 0.9]], [[0.7, 0.1]]])  # 2 classes, 1 x 2 pixels
    with_bg = add_background_channel(scores, 0.6)
    assert with_bg.shape == (3, 1, 2)
    assert with_bg.argmax(0).tolist() == [[2, 1]]  # pixel 0: class 1 (0.7) > 0.6; pixel 1: class 0 (0.9)
    assert add_background_channel(scores, 0.95).argmax(0).tolist() == [[0, 0]]

    model = build_baseline().eval()
    batch = inputs(1, with_labels=False)
    model.set_test_vocabulary(["background"] + NAMES[:2], background_by_threshold=True)
    model.background_threshold = 0.4
    with torch.no_grad():
        out = model(batch)[0]["sem_seg"]
        model.set_test_vocabulary(NAMES[:2])
        plain = model(batch)[0]["sem_seg"]
    assert out.shape == (3, 50, 70)
    assert torch.all(out[0] == 0.4)
    torch.testing.assert_close(out[1:], plain)
