"""CLIPSelf: region sampler, pooling and crops against literal references, the distillation loss
against an independent computation, the exact trainable set, the mapper, and the open_clip export
(loads into open_clip, CAT-Seg and the baseline with the student's dense features)."""
import collections
import copy
import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from ovseg_d2.modeling.backbone import OpenCLIPBackbone, build_open_clip_model
from ovseg_d2.modeling.meta_arch import CLIPSelf
from ovseg_d2.modeling.meta_arch.clipself import cosine_distillation_loss
from ovseg_d2.modeling.region_pooling import crop_resize_pad, mask_pool, roi_align_1x1
from ovseg_d2.modeling.region_sampling import enlarge_boxes, grid_split_choices, sample_grid_boxes

from .conftest import quickstart_cfg

TINY = "ovseg-tiny-vit8"
CONFIG = "configs/quickstart/clipself_tiny.yaml"


# ---------------------------------------------------------------- grid sampler
def test_grid_choices_are_the_24_of_the_spec():
    expected = [(m, n) for m in range(1, 7) for n in range(1, 7) if math.ceil(m / 2) <= n <= min(2 * m, 6)]
    assert grid_split_choices(6) == expected
    assert len(expected) == 24
    assert (1, 1) in expected and (1, 2) in expected and (1, 3) not in expected
    assert (6, 3) in expected and (6, 2) not in expected and (3, 6) in expected


def test_grid_sampler_boxes_tile_the_image_and_every_choice_occurs():
    rng = np.random.default_rng(0)
    seen = collections.Counter()
    for _ in range(1200):
        boxes, (m, n) = sample_grid_boxes(60.0, 90.0, max_regions=20, max_splits=6, rng=rng)
        seen[(m, n)] += 1
        assert len(boxes) == min(m * n, 20)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        np.testing.assert_allclose(widths, 90.0 / n)
        np.testing.assert_allclose(heights, 60.0 / m)
        # every box is a distinct cell of the M x N grid
        cells = {(round(b[1] / (60.0 / m)), round(b[0] / (90.0 / n))) for b in boxes}
        assert len(cells) == len(boxes) and all(0 <= r < m and 0 <= c < n for r, c in cells)
        if m * n <= 20:  # all cells kept: they tile the image exactly
            assert widths.dot(heights) == pytest.approx(60.0 * 90.0)
    assert set(seen) == set(grid_split_choices(6))
    assert min(seen.values()) > 1200 / 24 * 0.5  # uniform over the 24 choices


def test_grid_sampler_keeps_a_random_subset_when_there_are_more_cells():
    rng = np.random.default_rng(1)
    subsets = set()
    for _ in range(200):
        boxes, (m, n) = sample_grid_boxes(36.0, 36.0, max_regions=20, max_splits=6, rng=rng)
        if (m, n) == (6, 6):
            assert len(boxes) == 20
            subsets.add(tuple(sorted(map(tuple, boxes.round(3).tolist()))))
    assert len(subsets) > 1


def test_enlarged_proposal_boxes_are_clipped():
    boxes = np.array([[10.0, 10.0, 20.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    got = enlarge_boxes(boxes, 1.5, height=100, width=100)
    np.testing.assert_allclose(got, [[7.5, 5.0, 22.5, 35.0], [0.0, 0.0, 12.5, 12.5]])


# ---------------------------------------------------------------- pooling and crops
def slow_roi_align_1x1(feature, box, scale):
    """torchvision's roi_align kernel (aligned=True, adaptive sampling, output 1x1), literally."""
    c, h, w = feature.shape
    x0, y0, x1, y1 = [float(v) * scale for v in box]
    x0, y0, x1, y1 = x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5
    gh, gw = math.ceil(y1 - y0), math.ceil(x1 - x0)
    total = torch.zeros(c, dtype=feature.dtype)
    for iy in range(gh):
        y = y0 + (iy + 0.5) * (y1 - y0) / gh
        for ix in range(gw):
            x = x0 + (ix + 0.5) * (x1 - x0) / gw
            if y < -1.0 or y > h or x < -1.0 or x > w:
                continue
            yy, xx = max(y, 0.0), max(x, 0.0)
            yl, xl = int(yy), int(xx)
            if yl >= h - 1:
                yl = yh = h - 1
                yy = float(yl)
            else:
                yh = yl + 1
            if xl >= w - 1:
                xl = xh = w - 1
                xx = float(xl)
            else:
                xh = xl + 1
            ly, lx = yy - yl, xx - xl
            total += (1 - ly) * (1 - lx) * feature[:, yl, xl] + (1 - ly) * lx * feature[:, yl, xh]
            total += ly * (1 - lx) * feature[:, yh, xl] + ly * lx * feature[:, yh, xh]
    return total / max(gh * gw, 1)


def test_roi_align_1x1_is_the_box_mean_on_a_hand_made_map():
    feature = torch.arange(2 * 4 * 6, dtype=torch.float64).reshape(1, 2, 4, 6) ** 2  # not linear
    boxes = torch.tensor([[0.0, 0.0, 48.0, 32.0], [8.0, 8.0, 24.0, 32.0], [40.0, 0.0, 48.0, 8.0]], dtype=torch.float64)
    got = roi_align_1x1(feature, boxes, torch.zeros(3, dtype=torch.long), 1 / 8)
    want = torch.stack([
        feature[0, :, 0:4, 0:6].mean((1, 2)),
        feature[0, :, 1:4, 1:3].mean((1, 2)),
        feature[0, :, 0, 5],
    ])
    torch.testing.assert_close(got, want)


def test_roi_align_1x1_matches_the_kernel_on_fractional_and_outside_boxes():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    boxes = torch.tensor(
        [[1.3, 2.2, 27.7, 19.1], [0.0, 0.0, 56.0, 40.0], [-12.0, -5.0, 30.0, 20.0], [50.0, 33.0, 60.0, 45.0], [3.0, 3.0, 3.5, 3.2]],
        dtype=torch.float64,
    )
    index = torch.tensor([0, 1, 1, 0, 1])
    got = roi_align_1x1(features, boxes, index, 1 / 8)
    want = torch.stack([slow_roi_align_1x1(features[i], b, 1 / 8) for b, i in zip(boxes, index)])
    torch.testing.assert_close(got, want)


def test_crops_equal_cut_resize_pad_for_pixel_boxes():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 40, 50, dtype=torch.float64) * 255
    boxes = torch.tensor([[3, 5, 33, 25], [0, 0, 50, 40], [10, 10, 14, 30], [20, 4, 23, 6]], dtype=torch.float64)
    index = torch.tensor([0, 1, 0, 1])
    got = crop_resize_pad(images, boxes, index, 16)
    for k in range(len(boxes)):
        x0, y0, x1, y1 = [int(v) for v in boxes[k]]
        crop = images[index[k] : index[k] + 1, :, y0:y1, x0:x1]
        longest = max(x1 - x0, y1 - y0)
        out_h, out_w = round((y1 - y0) * 16 / longest), round((x1 - x0) * 16 / longest)
        want = torch.zeros(3, 16, 16, dtype=torch.float64)
        want[:, :out_h, :out_w] = F.interpolate(crop, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)[0]
        torch.testing.assert_close(got[k], want, rtol=0, atol=1e-9)


def test_mask_pool_counts_each_original_pixel_in_its_token():
    tokens = torch.arange(2 * 2 * 3, dtype=torch.float64).reshape(2, 2, 3)  # C=2, 2 x 3 tokens
    segment_map = torch.full((4, 6), -1, dtype=torch.long)  # original 4 x 6, resized x2 -> 8 x 12, patch 4
    segment_map[0:2, 0:3] = 0  # exactly token (0, 0)... 2x3 original = 4x6 resized = 1 x 1.5 tokens
    segment_map[3, 5] = 1
    got = mask_pool(tokens, segment_map, 3, (8, 12), 4)
    # segment 0: original cols 0..2 -> resized centres 1, 3, 5 -> token cols 0, 0, 1; rows 0..1 -> token row 0
    want0 = (4 * tokens[:, 0, 0] + 2 * tokens[:, 0, 1]) / 6
    torch.testing.assert_close(got[0], want0)
    torch.testing.assert_close(got[1], tokens[:, 1, 2])
    torch.testing.assert_close(got[2], torch.zeros(2, dtype=torch.float64))


# ---------------------------------------------------------------- the model
def clipself_cfg(*opts):
    return quickstart_cfg(CONFIG, "MODEL.CLIPSELF.STUDENT_SIZE", "64", *opts)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CLIPSelf(clipself_cfg())


def token_aligned_inputs():
    """Two 64 x 64 images (8 x 8 tokens) with boxes on token boundaries."""
    g = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g) for _ in range(2)]
    boxes = [torch.tensor([[0.0, 0.0, 32.0, 64.0], [8.0, 16.0, 40.0, 40.0]]), torch.tensor([[16.0, 0.0, 64.0, 24.0]])]
    return [{"image": im, "region_boxes": b, "teacher_boxes": b.clone()} for im, b in zip(images, boxes)]


def test_distillation_loss_against_an_independent_computation(model):
    model.train()
    batch = token_aligned_inputs()
    loss = model(batch)["loss_clipself"]
    student, teacher = [], []
    with torch.no_grad():
        for x in batch:
            rgb = x["image"].float()[None]
            dense = F.normalize(model.backbone(model.backbone.normalize(rgb))["dense"], dim=1)[0]
            for box in x["region_boxes"]:
                x0, y0, x1, y1 = (int(v) // 8 for v in box)
                student.append(dense[:, y0:y1, x0:x1].mean((1, 2)))
                X0, Y0, X1, Y1 = (int(v) for v in box)
                crop = rgb[:, :, Y0:Y1, X0:X1]
                longest = max(X1 - X0, Y1 - Y0)
                size = (round((Y1 - Y0) * 128 / longest), round((X1 - X0) * 128 / longest))
                square = torch.zeros(1, 3, 128, 128)
                square[:, :, : size[0], : size[1]] = F.interpolate(crop, size=size, mode="bilinear", antialias=True, align_corners=False)
                teacher.append(model.teacher(model.backbone.normalize(square))[0])
    s, t = torch.stack(student), torch.stack(teacher)
    want = 1 - (F.normalize(s, dim=-1) * F.normalize(t, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-4, atol=1e-5)
    assert cosine_distillation_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_gradients_reach_exactly_the_image_tower_blocks():
    torch.manual_seed(0)
    net = CLIPSelf(clipself_cfg())
    net.train()
    assert not net.teacher.training
    net(token_aligned_inputs())["loss_clipself"].backward()
    visual = net.backbone.clip.visual
    last = visual.transformer.resblocks[-1]
    unused = {id(last.attn.q_proj_weight), id(last.attn.k_proj_weight)}  # the value path never uses them
    expected = {
        f"backbone.clip.visual.transformer.{n}"
        for n, p in visual.transformer.named_parameters()
        if id(p) not in unused
    }
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trainable == expected
    assert with_grad == expected
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    for name in ("backbone.clip.visual.conv1.weight", "backbone.clip.visual.class_embedding", "backbone.clip.visual.positional_embedding",
                 "backbone.clip.visual.ln_post.weight", "backbone.clip.visual.proj", "backbone.clip.token_embedding.weight",
                 "teacher.conv1.weight", "teacher.transformer.resblocks.0.attn.in_proj_weight"):
        assert name in frozen


def test_teacher_crops_are_one_batched_call_per_step(model, monkeypatch):
    """All crops of all images of a step: one crop op and one teacher forward, K crops at once."""
    import ovseg_d2.modeling.meta_arch.clipself as clipself_module

    model.train()
    batch = token_aligned_inputs()
    crop_calls, teacher_inputs = [], []
    real_crop = clipself_module.crop_resize_pad

    def counting_crop(images, boxes, batch_index, size):
        crop_calls.append((images.shape[0], len(boxes), batch_index.tolist()))
        return real_crop(images, boxes, batch_index, size)

    monkeypatch.setattr(clipself_module, "crop_resize_pad", counting_crop)
    handle = model.teacher.register_forward_pre_hook(lambda module, args: teacher_inputs.append(tuple(args[0].shape)))
    try:
        model(batch)
    finally:
        handle.remove()
    assert crop_calls == [(2, 3, [0, 0, 1])]  # both images, the 2 + 1 boxes, in one call
    assert teacher_inputs == [(3, 3, 128, 128)]  # one teacher forward over the 3 crops


def test_inference_scores_per_mode(model):
    model.eval()
    names = ["red circle", "sand background", "water background"]
    x = token_aligned_inputs()[0]
    segment_map = torch.full((64, 64), -1, dtype=torch.long)
    segment_map[:, :32] = 0
    segment_map[16:40, 8:40] = 1
    x.update(content_size=(64, 64), segment_map=segment_map, vocabulary=names)
    with torch.no_grad():
        out = model([x])[0]["region_scores"]
        text = model.class_embeddings(names)
        dense = F.normalize(model.backbone(model.backbone.normalize(x["image"].float()[None]))["dense"], dim=1)[0]
    assert set(out) == {"rois", "maskpool", "crops"}
    rois0 = F.normalize(dense[:, :, :4].mean((1, 2)), dim=0)
    torch.testing.assert_close(out["rois"][0], rois0 @ text.T, rtol=1e-4, atol=1e-5)
    mask1 = dense[:, 2:5, 1:5].mean((1, 2))  # segment 1 = tokens rows 2..4, cols 1..4
    torch.testing.assert_close(out["maskpool"][1], F.normalize(mask1, dim=0) @ text.T, rtol=1e-4, atol=1e-5)
    assert out["crops"].shape == (2, 3)


# ---------------------------------------------------------------- mapper
def test_mapper_pads_the_student_image_and_makes_teacher_boxes(tmp_path):
    from PIL import Image

    from ovseg_d2.data.mappers import CLIPSelfDatasetMapper

    path = tmp_path / "a.png"
    Image.fromarray(np.full((30, 60, 3), 200, dtype=np.uint8)).save(path)
    record = {"file_name": str(path), "height": 30, "width": 60, "image_id": 1}
    out = CLIPSelfDatasetMapper(clipself_cfg())(record)
    assert out["image"].shape == (3, 64, 64) and out["content_size"] == (32, 64)
    assert (out["image"][:, 32:] == 0).all() and (out["image"][:, :32] == 200).all()
    boxes = out["region_boxes"]
    assert (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 32).all()
    torch.testing.assert_close(out["teacher_boxes"], boxes)

    cfg = clipself_cfg("MODEL.CLIPSELF.REGION_SOURCE", "proposals", "MODEL.LOAD_PROPOSALS", "True",
                       "DATASETS.PROPOSAL_FILES_TRAIN", "('p.pkl',)", "MODEL.CLIPSELF.MAX_REGIONS", "2",
                       "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN", "3")
    record.update(proposal_boxes=np.array([[0, 0, 20, 10], [10, 10, 30, 20], [0, 0, 0.2, 5], [40, 0, 60, 30], [5, 5, 6, 6]], dtype=np.float32),
                  proposal_objectness_logits=np.array([3.0, 2.0, 9.0, 1.0, 0.5]), proposal_bbox_mode=0)
    out = CLIPSelfDatasetMapper(cfg)(record)
    kept = {tuple(b) for b in out["region_boxes"].tolist()}
    # the degenerate box is dropped, the top 3 by objectness kept (scaled by 64/60, 32/30), 2 of them drawn
    top3 = np.array([[0, 0, 20, 10], [10, 10, 30, 20], [40, 0, 60, 30]]) * np.array([64 / 60, 32 / 30] * 2)
    assert len(kept) == 2 and kept <= {tuple(b) for b in top3.astype(np.float32).tolist()}
    want_teacher = enlarge_boxes(out["region_boxes"].numpy().astype(np.float64), 1.5, 32, 64)
    np.testing.assert_allclose(out["teacher_boxes"].numpy(), want_teacher, rtol=1e-5)


# ---------------------------------------------------------------- export
def test_export_ensembles_by_value_and_loads_into_open_clip_catseg_and_baseline(tmp_path):
    from ovseg_d2.modeling.backbone.clip_export import save_open_clip_checkpoint
    from ovseg_d2.modeling.meta_arch import CATSeg, MaskCLIPBaseline

    torch.manual_seed(0)
    net = CLIPSelf(clipself_cfg()).eval()
    with torch.no_grad():  # stands in for training: move every trained parameter
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    teacher = net.teacher.state_dict()
    blended = net.export_state_dict(0.7)
    key = "visual.transformer.resblocks.1.attn.in_proj_weight"
    student_packed = torch.cat([getattr(net.backbone.clip.visual.transformer.resblocks[1].attn, f"{c}_proj_weight") for c in "qkv"])
    torch.testing.assert_close(blended[key], 0.7 * student_packed + 0.3 * teacher["transformer.resblocks.1.attn.in_proj_weight"])
    torch.testing.assert_close(blended["visual.transformer.resblocks.2.mlp.c_fc.bias"],
                               0.7 * net.backbone.clip.visual.transformer.resblocks[2].mlp.c_fc.bias + 0.3 * teacher["transformer.resblocks.2.mlp.c_fc.bias"])
    torch.testing.assert_close(blended["token_embedding.weight"], net.backbone.clip.token_embedding.weight)

    path = str(tmp_path / "clipself_export.pt")
    save_open_clip_checkpoint(net.export_state_dict(1.0), path)
    loaded = open_clip.create_model(TINY, pretrained=path, force_quick_gelu=True, weights_only=True)  # strict load
    images = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        want = net.backbone(images)["dense"]
        reference = OpenCLIPBackbone(clip_model=loaded, dense_last_block="value_residual", pixel_mean=[0] * 3, pixel_std=[1] * 3).eval()
        torch.testing.assert_close(reference(images)["dense"], want, rtol=1e-5, atol=1e-5)
        for config, arch in (("configs/quickstart/catseg_tiny.yaml", CATSeg), ("configs/quickstart/baseline_maskclip_tiny.yaml", MaskCLIPBaseline)):
            cfg = quickstart_cfg(config, "MODEL.CLIP.PRETRAINED", path, "MODEL.CLIP.DENSE_LAST_BLOCK", "value_residual", "MODEL.CLIP.INTERMEDIATE_LAYERS", "[1, 2]")
            other = arch(cfg).eval()
            torch.testing.assert_close(other.backbone(images)["dense"], want, rtol=1e-5, atol=1e-5)
