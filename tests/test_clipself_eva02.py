"""EVA02 (open_clip TimmModel around timm's Eva) in OpenCLIPBackbone and CLIPSelf.

The dense path is checked against a slow reference written with timm's own modules: the trunk
resized by timm's ``set_input_size`` (its rotary embeddings rebuilt for the new grid), blocks
0..N-2 run by timm, and the last block applied token by token as a one-token sequence through
timm's attention (a single token attending to itself gets exactly its value, whatever the
rotary embedding), then the MLP, the final norm and the head. Random EVA02-B-16 weights, CPU.
"""
import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ovseg_d2.modeling.backbone import OpenCLIPBackbone, build_open_clip_model

from .conftest import quickstart_cfg

EVA_B = "EVA02-B-16"


@pytest.fixture(scope="module")
def eva_b():
    torch.manual_seed(0)
    model = build_open_clip_model(EVA_B, "", force_quick_gelu=False).eval()
    with torch.no_grad():  # random init leaves the biases / norms at 0 / 1: make every term count
        for name, p in model.visual.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model


def slow_reference(clip, images, mode):
    """Dense features of ``images`` by timm's modules, the last block one token at a time."""
    trunk = copy.deepcopy(clip.visual.trunk).eval()
    h, w = images.shape[-2:]
    ph, pw = trunk.patch_embed.patch_size
    grid = (h // ph, w // pw)
    trunk.set_input_size(img_size=(h, w))  # patch_embed and rope for the new grid
    # position table: CLS row kept, patch rows bicubic (align_corners=False, no antialias), written out here
    side = int(round((clip.visual.trunk.pos_embed.shape[1] - 1) ** 0.5))
    table = clip.visual.trunk.pos_embed[0, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, -1, table.shape[1])
    trunk.pos_embed = torch.nn.Parameter(torch.cat([clip.visual.trunk.pos_embed[:, :1], table], dim=1))
    x = trunk.patch_embed(images)
    x, rope = trunk._pos_embed(x)
    x = trunk.norm_pre(x)
    for block in trunk.blocks[:-1]:
        x = block(x, rope=rope)
    last = trunk.blocks[-1]
    rows = []
    for j in range(x.shape[1]):
        token = x[:, j : j + 1]
        u = last.attn(last.norm1(token))  # one-token attention = the value path
        if last.gamma_1 is not None:
            u = last.gamma_1 * u
        if mode == "value":
            rows.append(u)
            continue
        y = (x[:, :1] if mode == "value_residual_cls" else token) + u
        m = last.mlp(last.norm2(y))
        rows.append(y + (last.gamma_2 * m if last.gamma_2 is not None else m))
    x = torch.cat(rows, dim=1)
    x = clip.visual.head(trunk.head(trunk.fc_norm(trunk.norm(x))))
    return x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)


@pytest.mark.parametrize("mode", ["value_residual", "value_residual_cls", "value"])
def test_eva02_dense_features_match_a_slow_timm_reference(eva_b, mode):
    backbone = OpenCLIPBackbone(clip_model=copy.deepcopy(eva_b), dense_last_block=mode, intermediate_layers=[3],
                                pixel_mean=[0] * 3, pixel_std=[1] * 3).eval()
    assert backbone.tower == "eva" and backbone.patch_size == (16, 16) and backbone.num_blocks == 12
    assert backbone.output_shape()["dense"].channels == 512 and backbone.output_shape()["layer3"].channels == 768
    torch.manual_seed(1)
    images = torch.randn(1, 3, 224, 288)  # a 14 x 18 grid: position table and rope resized
    with torch.no_grad():
        out = backbone(images)
        want = slow_reference(eva_b, images, mode)
    assert out["dense"].shape == (1, 512, 14, 18)
    torch.testing.assert_close(out["dense"], want, rtol=1e-5, atol=1e-6)  # measured 1.5e-8; dropping rope: 1.9e-4
    # the global path (crops, teacher) is untouched by the dense pass's rope rebuild
    crops = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_image(crops), eva_b.encode_image(crops), rtol=1e-5, atol=1e-5)


def test_eva02_at_its_own_size_uses_the_cached_rope(eva_b):
    """At 224 px (the model's own grid) no resizing happens; the last-block-attention-free map
    still equals the slow reference, and the tapped layer equals timm's block output."""
    backbone = OpenCLIPBackbone(clip_model=copy.deepcopy(eva_b), dense_last_block="value_residual", intermediate_layers=[10],
                                pixel_mean=[0] * 3, pixel_std=[1] * 3).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = backbone(images)
        torch.testing.assert_close(out["dense"], slow_reference(eva_b, images, "value_residual"), rtol=1e-4, atol=1e-5)
        trunk = eva_b.visual.trunk
        x, rope = trunk._pos_embed(trunk.patch_embed(images))
        for block in trunk.blocks[:11]:
            x = block(x, rope=rope)
    torch.testing.assert_close(out["layer10"], x[:, 1:].transpose(1, 2).reshape(1, 768, 14, 14), rtol=1e-4, atol=1e-5)


def test_eva02_trainable_selection():
    clip = build_open_clip_model(EVA_B, "", force_quick_gelu=False)
    backbone = OpenCLIPBackbone(clip_model=clip, dense_last_block="value_residual", vision_trainable="blocks",
                                pixel_mean=[0] * 3, pixel_std=[1] * 3)
    trained = {n for n, p in backbone.named_parameters() if p.requires_grad}
    blocks = {n for n, _ in backbone.named_parameters() if n.startswith("clip.visual.trunk.blocks.")}
    last = "clip.visual.trunk.blocks.11.attn."
    assert trained == blocks - {last + "q_proj.weight", last + "q_proj.bias", last + "k_proj.weight"}
    qv = OpenCLIPBackbone(clip_model=clip, dense_last_block="value_residual", vision_trainable="qv", pixel_mean=[0] * 3, pixel_std=[1] * 3)
    trained = {n for n, p in qv.named_parameters() if p.requires_grad}
    assert len(trained) == 23 and "clip.visual.trunk.blocks.0.attn.q_proj.weight" in trained and last + "v_proj.weight" in trained


def test_eva02_recipe_configs():
    for config, name, tag, student, alpha, teacher in (
        ("configs/clipself_eva02_vitb16.yaml", "EVA02-B-16", "merged2b_s8b_b131k", 1024, 0.7, 224),
        ("configs/clipself_eva02_vitl14_336.yaml", "EVA02-L-14-336", "merged2b_s6b_b61k", 896, 0.95, 336),
    ):
        cfg = quickstart_cfg(config)
        assert (cfg.MODEL.CLIP.MODEL_NAME, cfg.MODEL.CLIP.PRETRAINED, cfg.MODEL.CLIP.FORCE_QUICK_GELU) == (name, tag, False)
        assert (cfg.MODEL.CLIPSELF.STUDENT_SIZE, cfg.MODEL.CLIPSELF.ENSEMBLE_ALPHA) == (student, alpha)
        assert cfg.MODEL.META_ARCHITECTURE == "CLIPSelf" and cfg.SOLVER.BASE_LR == 1e-5
        assert open_clip.get_model_config(name)["vision_cfg"]["image_size"] == teacher


def test_clipself_eva02_b16_distils_and_exports(tmp_path, shapes_root):
    """Two iterations of configs/clipself_eva02_vitb16.yaml (random weights, tiny student input):
    only trunk blocks move; the export loads into open_clip strictly and gives the blended
    student's dense features."""
    from detectron2.engine import hooks

    from ovseg_d2.engine import OvsegTrainer
    from ovseg_d2.engine.clip_export_hook import CLIPExportHook
    from ovseg_d2.modeling.backbone.clip_export import save_open_clip_checkpoint

    torch.manual_seed(0)
    cfg = quickstart_cfg(
        "configs/clipself_eva02_vitb16.yaml", "MODEL.DEVICE", "cpu", "MODEL.CLIP.PRETRAINED", "",
        "DATASETS.TRAIN", "('ovseg_shapes_train_sem_seg',)", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.AMP.ENABLED", "False", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.BASE_LR", "1e-3", "MODEL.CLIPSELF.STUDENT_SIZE", "32", "MODEL.CLIPSELF.MAX_REGIONS", "1", "OUTPUT_DIR", str(tmp_path),
    )
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer._hooks = [h for h in trainer._hooks if not isinstance(h, (hooks.PeriodicCheckpointer, CLIPExportHook))]
    model = trainer.model
    assert model.crop_size == 224 and model.backbone.tower == "eva"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(0.0 <= v <= 2.0 for v in losses)
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved and all(n.startswith("backbone.clip.visual.trunk.blocks.") for n in moved)
    assert "backbone.clip.visual.trunk.blocks.11.attn.v_proj.weight" in moved
    assert "backbone.clip.visual.trunk.blocks.11.attn.q_proj.weight" not in moved
    assert all(torch.equal(before["teacher." + n], p) for n, p in model.teacher.named_parameters())

    path = str(tmp_path / "eva_export.pt")
    save_open_clip_checkpoint(model.export_state_dict(0.7), path)
    loaded = open_clip.create_model(EVA_B, pretrained=path, weights_only=True)  # strict load
    key = "trunk.blocks.4.mlp.fc2.weight"
    torch.testing.assert_close(loaded.visual.state_dict()[key],
                               0.7 * model.backbone.clip.visual.state_dict()[key] + 0.3 * model.teacher.state_dict()[key])
    save_open_clip_checkpoint(model.export_state_dict(1.0), path)
    loaded = open_clip.create_model(EVA_B, pretrained=path, weights_only=True)
    reference = OpenCLIPBackbone(clip_model=loaded, dense_last_block="value_residual", pixel_mean=[0] * 3, pixel_std=[1] * 3).eval()
    model.eval()
    images = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(reference(images)["dense"], model.backbone(images)["dense"], rtol=1e-5, atol=1e-5)
