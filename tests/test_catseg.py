"""CATSeg meta-architecture: released checkpoints by value, the sliding path against a literal
reference of the anchors' procedure, the loss, gradients, and stale-embedding protection."""
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

from ovseg_d2.checkpoint import OvsegCheckpointer
from ovseg_d2.modeling.meta_arch.catseg import binary_cross_entropy_loss

from .conftest import quickstart_cfg
from .test_checkpoint_layouts import anchor_rows

TINY = "configs/quickstart/catseg_tiny.yaml"


def tiny_model(*opts):
    torch.manual_seed(0)
    cfg = quickstart_cfg(TINY, *opts)
    model = build_model(cfg)
    with torch.no_grad():  # random init leaves biases/norms at constants: perturb all
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.mark.parametrize(
    "config, anchor",
    [("configs/catseg_vitb_384.yaml", "catseg_vitb16_384_state_dict.tsv"), ("configs/catseg_vitl_336.yaml", "catseg_vitl14_336_state_dict.tsv")],
)
def test_released_checkpoint_loads_by_value(config, anchor, tmp_path, shapes_root):
    cfg = quickstart_cfg(config, "MODEL.DEVICE", "cpu", "MODEL.CLIP.PRETRAINED", "",
                         "DATASETS.TRAIN", "('ovseg_shapes_train_sem_seg',)", "DATASETS.TEST", "('ovseg_shapes_val_sem_seg',)")
    model = build_model(cfg)
    generator = torch.Generator().manual_seed(0)
    released = {key: torch.randn(shape, generator=generator) for key, shape in anchor_rows(anchor)}
    path = tmp_path / "released.pth"
    torch.save({"model": released}, path)  # as the released files: a {"model": ...} wrapper
    OvsegCheckpointer(model).load(str(path))
    ours = model.state_dict()
    assert len(ours) == len(released)
    for key, value in released.items():
        if key.startswith("sem_seg_head.predictor.clip_model."):
            new = "backbone.clip." + key[len("sem_seg_head.predictor.clip_model."):]
        elif key.startswith("sem_seg_head.predictor.transformer."):
            new = "sem_seg_head.transformer." + key[len("sem_seg_head.predictor.transformer."):]
        else:
            new = "sem_seg_head." + key
        assert torch.equal(ours[new], value), key
    del released["upsample1.bias"]
    torch.save({"model": released}, path)
    with pytest.raises(KeyError, match="sem_seg_head.upsample1.bias"):
        OvsegCheckpointer(model).load(str(path))


def reference_sliding(model, image, height, width, names, resize, window, stride):
    """The anchors' procedure, literally: nn.Unfold windows, one view at a time, nn.Fold."""
    x = image.float()[None]
    square = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
    windows = F.unfold(square, kernel_size=window, stride=stride)  # 1 x (3*w*w) x K
    k = windows.shape[-1]
    views = list(windows.transpose(1, 2).reshape(k, 3, window, window))
    views.append(F.interpolate(x, size=(window, window), mode="bilinear", align_corners=False)[0])
    text = F.normalize(model.text_encoder(names, device=torch.device("cpu")), dim=-1)
    probs = []
    for view in views:
        normalised = model.backbone.normalize(view)[None]
        clip_view = F.interpolate(normalised, size=(model.clip_input_size,) * 2, mode="bilinear", align_corners=False)
        logits = model.sem_seg_head(model.backbone(clip_view), text)
        probs.append(F.interpolate(logits, size=(window, window), mode="bilinear", align_corners=False).sigmoid()[0])
    t = probs[0].shape[0]
    stacked = torch.stack(probs[:-1]).reshape(k, -1).T[None]  # 1 x (T*w*w) x K
    summed = F.fold(stacked, output_size=resize, kernel_size=window, stride=stride)
    counts = F.fold(torch.ones(1, window * window, k), output_size=resize, kernel_size=window, stride=stride)
    stitched = (summed / counts)[0].reshape(t, resize, resize)
    global_view = F.interpolate(probs[-1][None], size=(resize, resize), mode="bilinear", align_corners=False)[0]
    merged = (stitched + global_view) / 2
    return F.interpolate(merged[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def test_sliding_window_matches_literal_reference_and_batching():
    model = tiny_model("MODEL.CATSEG.SLIDING_WINDOW", "True", "MODEL.CATSEG.SLIDING_RESIZE", "160",
                       "MODEL.CATSEG.WINDOW", "96", "MODEL.CATSEG.WINDOW_STRIDE", "64",
                       "MODEL.CATSEG.SCORE_CHUNK_CLASSES", "3").eval()
    names = ["red circle", "green triangle", "sand background", "purple star", "dotted square"]
    g = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (3, 120, 150), dtype=torch.uint8, generator=g) for _ in range(2)]
    inputs = [{"image": images[0], "height": 90, "width": 110, "vocabulary": names},
              {"image": images[1], "height": 60, "width": 70, "vocabulary": names}]
    with torch.no_grad():
        batched = model(inputs)
        for i, x in enumerate(inputs):
            want = reference_sliding(model, x["image"], x["height"], x["width"], names, 160, 96, 64)
            assert batched[i]["sem_seg"].shape == want.shape
            torch.testing.assert_close(batched[i]["sem_seg"], want, rtol=1e-4, atol=1e-5)
            single = model([x])[0]["sem_seg"]
            torch.testing.assert_close(single, batched[i]["sem_seg"], rtol=1e-5, atol=1e-6)


def test_loss_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[0, 2], [255, 1]]])
    masked = binary_cross_entropy_loss(logits, labels, 255, mask_ignore=True)
    unmasked = binary_cross_entropy_loss(logits, labels, 255, mask_ignore=False)
    terms_valid, terms_all = [], []
    for y in range(2):
        for x in range(2):
            for t in range(3):
                target = 1.0 if labels[0, y, x].item() == t else 0.0
                p = torch.sigmoid(logits[0, t, y, x]).item()
                term = -(target * torch.log(torch.tensor(p)) + (1 - target) * torch.log(torch.tensor(1 - p))).item()
                terms_all.append(term)
                if labels[0, y, x] != 255:
                    terms_valid.append(term)
    assert masked.item() == pytest.approx(sum(terms_valid) / len(terms_valid), rel=1e-5)
    assert unmasked.item() == pytest.approx(sum(terms_all) / len(terms_all), rel=1e-5)


def test_gradients_reach_exactly_the_trainable_parameters(shapes_root):
    model = tiny_model().train()
    g = torch.Generator().manual_seed(1)
    batch = [{"image": torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8, generator=g),
              "sem_seg": torch.randint(0, 8, (96, 96), generator=g)} for _ in range(2)]
    model(batch)["loss_sem_seg"].backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    clip_trainable = {n for n in trainable if n.startswith("backbone.")}
    assert clip_trainable and all(n.endswith(("q_proj_weight", "v_proj_weight")) for n in clip_trainable)
    assert "backbone.clip.visual.transformer.resblocks.3.attn.q_proj_weight" not in clip_trainable
    assert {n for n, _ in model.named_parameters() if n.startswith("sem_seg_head.")} <= trainable


def test_evaluation_never_reuses_stale_text_embeddings(shapes_root):
    model = tiny_model()
    names = ["red circle", "green triangle"]
    x = [{"image": torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8), "vocabulary": names}]
    model.eval()
    with torch.no_grad():
        first = model(x)[0]["sem_seg"]
        model(x)
    assert model.text_encoder.encoder_calls == 1  # cached
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    batch = [{"image": x[0]["image"], "sem_seg": torch.randint(0, 8, (96, 96))}]
    model(batch)["loss_sem_seg"].backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model(x)[0]["sem_seg"]
    assert model.text_encoder.encoder_calls == 3  # 1 eval + 1 training (no cache) + 1 fresh eval
    assert not torch.allclose(first, after)


def test_convert_checkpoint_tool(tmp_path, shapes_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_checkpoint", os.path.join(os.path.dirname(__file__), "..", "tools", "convert_checkpoint.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    generator = torch.Generator().manual_seed(1)
    released = {key: torch.randn(shape, generator=generator) for key, shape in anchor_rows("catseg_vitb16_384_state_dict.tsv")}
    source, target = tmp_path / "released.pth", tmp_path / "converted.pth"
    torch.save({"model": released}, source)
    before = source.read_bytes()
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "catseg_vitb_384.yaml")
    assert tool.main(["--config-file", config, "--input", str(source), "--output", str(target)]) == 0
    assert source.read_bytes() == before  # the input is never modified
    converted = torch.load(target, weights_only=True)["model"]
    assert torch.equal(converted["sem_seg_head.transformer.head.weight"], released["sem_seg_head.predictor.transformer.head.weight"])
    assert torch.equal(converted["backbone.clip.visual.proj"], released["sem_seg_head.predictor.clip_model.visual.proj"])
    assert torch.equal(converted["sem_seg_head.upsample2.weight"], released["upsample2.weight"])
    assert tool.main(["--config-file", config, "--input", str(source), "--output", str(target)]) == 1  # never overwrites


@pytest.mark.parametrize("config", ["configs/catseg_vitb_384.yaml", "configs/catseg_vitl_336.yaml"])
def test_recipe_configs_train_a_few_iterations_on_cpu(config, tmp_path, shapes_root):
    """The real architectures (random weights) train on CPU with tiny overrides."""
    from ovseg_d2.engine import OvsegTrainer

    cfg = quickstart_cfg(
        config, "MODEL.DEVICE", "cpu", "MODEL.CLIP.PRETRAINED", "",
        "DATASETS.TRAIN", "('ovseg_shapes_train_sem_seg',)", "DATASETS.TEST", "()",
        "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path),
    )
    trainer = OvsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = trainer.model.sem_seg_head.transformer.head.weight.detach().clone()
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
    assert not torch.equal(before, trainer.model.sem_seg_head.transformer.head.weight)
    groups = trainer.optimizer.param_groups
    clip_lrs = {g["lr_multiplier"] for g in groups if any(n.startswith("backbone.") for n in g["param_names"])}
    assert clip_lrs == {0.01}  # CLIP x0.01, as the recipe
