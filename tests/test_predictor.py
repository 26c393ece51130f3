"""OpenVocabPredictor on every meta-architecture (against the model's own forward on the same
input), background by threshold, inputs, precision, batching, weights loading, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from PIL import Image

from ovseg_d2 import OpenVocabPredictor
from ovseg_d2.data.image_loading import ImageReadError
from ovseg_d2.engine.predictor import upsample_argmax
from ovseg_d2.modeling.meta_arch import CATSeg, MaskCLIPBaseline

from .conftest import quickstart_cfg

CONFIGS = {
    "MaskCLIPBaseline": "configs/quickstart/baseline_maskclip_tiny.yaml",
    "CATSeg": "configs/quickstart/catseg_tiny.yaml",
}
NAMES = ["red circle", "green triangle; triangle", "sand background"]


def perturb(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random init leaves biases/norms at constants: perturb all
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))


def make_predictor(meta_arch, *opts, seed=0, **kwargs):
    torch.manual_seed(seed)
    predictor = OpenVocabPredictor(quickstart_cfg(CONFIGS[meta_arch], *opts), **kwargs)
    perturb(predictor.model, seed)
    return predictor


def random_image(h=150, w=203, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def own_forward(predictor, image_rgb, names, background=False):
    """The model's forward on the input the predictor should build: detectron2's test resize."""
    cfg = predictor.cfg
    resized = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST).get_transform(image_rgb).apply_image(image_rgb)
    x = {"image": torch.from_numpy(resized.copy()).permute(2, 0, 1), "height": image_rgb.shape[0], "width": image_rgb.shape[1],
         "vocabulary": (["background"] if background else []) + names, "background_by_threshold": background}
    with torch.no_grad():
        return predictor.model([x])[0]["sem_seg"]


@pytest.mark.parametrize("meta_arch", sorted(CONFIGS))
def test_predictor_matches_the_models_own_forward(meta_arch, shapes_root):
    predictor = make_predictor(meta_arch)
    image = random_image()
    result = predictor(image, NAMES)
    expected = own_forward(predictor, image, NAMES)
    assert result["sem_seg"].shape == (3, 150, 203)  # the input resolution, not the working one
    assert result["sem_seg"].dtype == torch.float32
    torch.testing.assert_close(result["sem_seg"], expected, rtol=0, atol=0)
    assert torch.equal(result["labels"], expected.argmax(dim=0))
    assert result["vocabulary"] == ["red circle", "green triangle", "sand background"]
    assert result["synonyms"] == [["red circle"], ["green triangle"], ["sand background"]]
    assert "background" not in result  # neither method scores background by default
    assert len(result["labels"].unique()) > 1  # a non-degenerate check


@pytest.mark.parametrize("meta_arch", sorted(CONFIGS))
def test_background_by_threshold(meta_arch, shapes_root):
    predictor = make_predictor(meta_arch, "MODEL.BACKGROUND_THRESHOLD", "0.4")
    image = random_image()
    plain = predictor(image, NAMES)["sem_seg"]
    result = predictor(image, NAMES, background=True)
    assert result["vocabulary"][0] == "background" and result["sem_seg"].shape == (4, 150, 203)
    assert torch.all(result["sem_seg"][0] == 0.4)
    torch.testing.assert_close(result["sem_seg"][1:], plain, rtol=0, atol=0)
    torch.testing.assert_close(result["sem_seg"], own_forward(predictor, image, NAMES, background=True), rtol=0, atol=0)
    assert torch.equal(result["labels"], result["sem_seg"].argmax(dim=0))
    # background wherever no class beats the threshold (ties go to background, the first channel)
    assert torch.equal(result["background"], plain.max(dim=0).values <= 0.4)
    with pytest.raises(ValueError, match="scores by threshold"):
        predictor(image, ["Background", "red circle"], background=True)


def test_declared_background_property_is_the_default(shapes_root, monkeypatch):
    monkeypatch.setattr(MaskCLIPBaseline, "predicts_background_by_threshold", True)
    predictor = make_predictor("MaskCLIPBaseline")
    result = predictor(random_image(), NAMES)
    assert result["vocabulary"][0] == "background" and "background" in result
    assert "background" not in predictor(random_image(), NAMES, background=False)


def test_image_sources_and_bgr_format(tmp_path, shapes_root):
    image = random_image()
    predictor = make_predictor("MaskCLIPBaseline")
    from_array = predictor(image, NAMES)["sem_seg"]
    Image.fromarray(image).save(tmp_path / "x.png")
    torch.testing.assert_close(predictor(str(tmp_path / "x.png"), NAMES)["sem_seg"], from_array, rtol=0, atol=0)
    torch.testing.assert_close(predictor(tmp_path / "x.png", NAMES)["sem_seg"], from_array, rtol=0, atol=0)
    torch.testing.assert_close(predictor(Image.fromarray(image), NAMES)["sem_seg"], from_array, rtol=0, atol=0)
    bgr = make_predictor("MaskCLIPBaseline", "INPUT.FORMAT", "BGR")
    torch.testing.assert_close(bgr(image[..., ::-1].copy(), NAMES)["sem_seg"], from_array, rtol=0, atol=0)
    torch.testing.assert_close(bgr(str(tmp_path / "x.png"), NAMES)["sem_seg"], from_array, rtol=0, atol=0)


def test_batched_prediction_equals_single_images(shapes_root):
    predictor = make_predictor("CATSeg")
    images = [random_image(seed=s, w=120 + 20 * s) for s in range(3)]
    batched = predictor.predict_batch(images, NAMES, batch_size=2)
    assert len(batched) == 3
    for image, result in zip(images, batched):
        single = predictor(image, NAMES)
        assert result["sem_seg"].shape[-2:] == image.shape[:2]
        torch.testing.assert_close(result["sem_seg"], single["sem_seg"], rtol=1e-5, atol=1e-5)
    assert predictor.model.text_encoder.encoder_calls == 1  # one vocabulary: encoded once


def test_weights_are_loaded_through_the_checkpointer(tmp_path, shapes_root):
    trained = make_predictor("CATSeg", seed=3)
    path = tmp_path / "model.pth"
    torch.save({"model": trained.model.state_dict()}, path)
    torch.manual_seed(5)  # another random init, then the file
    loaded = OpenVocabPredictor(quickstart_cfg(CONFIGS["CATSeg"], "MODEL.WEIGHTS", str(path)))
    image = random_image()
    torch.testing.assert_close(loaded(image, NAMES)["sem_seg"], trained(image, NAMES)["sem_seg"], rtol=0, atol=0)
    assert not loaded.model.training


@pytest.mark.parametrize("meta_arch", sorted(CONFIGS))
def test_bfloat16_autocast_on_cpu(meta_arch, shapes_root):
    fp32 = make_predictor(meta_arch)
    bf16 = make_predictor(meta_arch, precision="bfloat16")
    image = random_image()
    a, b = fp32(image, NAMES), bf16(image, NAMES)
    assert b["sem_seg"].dtype == torch.float32 and b["sem_seg"].shape == a["sem_seg"].shape
    assert not torch.equal(a["sem_seg"], b["sem_seg"])  # autocast really ran in bfloat16
    assert (a["sem_seg"] - b["sem_seg"]).abs().mean() < 0.05
    with pytest.raises(ValueError, match="needs CUDA"):
        make_predictor(meta_arch, precision="float16")
    with pytest.raises(ValueError, match="not one of"):
        make_predictor(meta_arch, precision="fp8")


def test_bad_input_gets_a_clear_error(tmp_path, shapes_root):
    predictor = make_predictor("MaskCLIPBaseline")
    image = random_image()
    with pytest.raises(ValueError, match="vocabulary is empty"):
        predictor(image, [])
    with pytest.raises(ValueError, match="more than once"):
        predictor(image, ["cat", "dog", "Cat, kitten"])  # same class under the "first" rule
    with pytest.raises(ValueError, match="is empty"):
        predictor(image, ["cat", " , "])
    with pytest.raises(ValueError, match="list of class-name strings"):
        predictor(image, "cat, dog")
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        predictor(image.astype(np.float32), ["cat"])
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        predictor(image[..., 0], ["cat"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        predictor(str(tmp_path / "missing.jpg"), ["cat"])
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        predictor(str(tmp_path / "broken.jpg"), ["cat"])


def test_synonyms_follow_the_methods_rule(shapes_root):
    mean = make_predictor("MaskCLIPBaseline", "MODEL.TEXT.SYNONYMS", "mean")
    result = mean(random_image(), ["cat, kitten", "dog"])
    assert result["synonyms"] == [["cat", "kitten"], ["dog"]] and result["vocabulary"] == ["cat", "dog"]
    mean(random_image(), ["cat", "cat, kitten"])  # distinct classes under "mean"
    with pytest.raises(ValueError, match="more than once"):
        mean(random_image(), ["cat; kitten", "Cat, Kitten"])


def test_upsample_argmax_equals_full_interpolation():
    scores = torch.randn(5, 13, 17, generator=torch.Generator().manual_seed(0))
    for size in [(40, 61), (13, 17), (7, 9), (101, 33)]:
        full = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0].argmax(dim=0)
        banded = upsample_argmax(scores, size, max_elements=5 * size[1] * 3)  # three rows at a time
        assert torch.equal(banded, full), size


def test_working_resolution_scores_for_large_outputs(shapes_root):
    predictor = make_predictor("CATSeg")
    image = random_image(300, 420)
    full = predictor(image, NAMES)
    working = predictor(image, NAMES, scores_at="working")
    assert working["sem_seg"].shape == (3, 128, 179)  # MIN_SIZE_TEST 128
    assert working["labels"].shape == (300, 420)
    assert (working["labels"] == full["labels"]).float().mean() > 0.97
