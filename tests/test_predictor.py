"""OpenVocabPredictor on every segmenting meta-architecture (baseline, CAT-Seg, Talk2DINO; tiny
random models, against the model's own forward on the same input), background by threshold,
inputs, precision, batching, weights loading, the persistent text-embedding cache seen from the
predictor (text-encoder calls counted by patching), bad input."""
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
from .tiny_configs import CONFIGS

NAMES = ["red circle", "green triangle; triangle", "sand background"]


def tiny_cfg(meta_arch, *opts):
    config, overrides = CONFIGS[meta_arch]
    return quickstart_cfg(config, *overrides, *opts)


def perturb(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random init leaves biases/norms at constants: perturb all
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))


def make_predictor(meta_arch, *opts, seed=0, **kwargs):
    torch.manual_seed(seed)
    predictor = OpenVocabPredictor(tiny_cfg(meta_arch, *opts), **kwargs)
    perturb(predictor.model, seed)
    return predictor


def random_image(h=150, w=203, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def own_forward(predictor, image_rgb, names, background=False, scores_at_input=True):
    """The model's forward on the input the predictor should build: detectron2's test resize."""
    cfg = predictor.cfg
    resized = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST).get_transform(image_rgb).apply_image(image_rgb)
    size = image_rgb.shape[:2] if scores_at_input else resized.shape[:2]
    x = {"image": torch.from_numpy(resized.copy()).permute(2, 0, 1), "height": size[0], "width": size[1],
         "vocabulary": (["background"] if background else []) + names, "background_by_threshold": background}
    with torch.no_grad():
        return predictor.model([x])[0]["sem_seg"]


@pytest.mark.parametrize("meta_arch", sorted(CONFIGS))
def test_predictor_matches_the_models_own_forward(meta_arch, shapes_root):
    predictor = make_predictor(meta_arch)
    image = random_image()
    result = predictor(image, NAMES, background=False)
    expected = own_forward(predictor, image, NAMES)
    assert result["sem_seg"].shape == (3, 150, 203)  # the input resolution, not the working one
    assert result["sem_seg"].dtype == torch.float32
    torch.testing.assert_close(result["sem_seg"], expected, rtol=0, atol=0)
    assert torch.equal(result["labels"], expected.argmax(dim=0))
    assert result["vocabulary"] == ["red circle", "green triangle", "sand background"]
    assert result["synonyms"] == [["red circle"], ["green triangle"], ["sand background"]]
    assert "background" not in result
    assert len(result["labels"].unique()) > 1  # a non-degenerate check


@pytest.mark.parametrize("meta_arch", sorted(CONFIGS))
def test_default_background_is_the_methods(meta_arch, shapes_root):
    """Talk2DINO scores background by threshold by default (as its reference demo); the
    baseline and CAT-Seg do not."""
    predictor = make_predictor(meta_arch)
    result = predictor(random_image(), NAMES)
    by_threshold = meta_arch == "Talk2DINO"
    assert predictor.background_by_default is by_threshold
    assert ("background" in result) is by_threshold
    assert result["vocabulary"] == (["background"] if by_threshold else []) + ["red circle", "green triangle", "sand background"]


@pytest.mark.parametrize("meta_arch", sorted(CONFIGS))
def test_background_by_threshold(meta_arch, shapes_root):
    predictor = make_predictor(meta_arch, "MODEL.BACKGROUND_THRESHOLD", "0.4")
    image = random_image()
    plain = predictor(image, NAMES, background=False)["sem_seg"]
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


@pytest.mark.parametrize("meta_arch", sorted(CONFIGS))
def test_image_sources_and_bgr_format(meta_arch, tmp_path, shapes_root):
    """Paths, PIL images and arrays give the same scores; an INPUT.FORMAT BGR model reads files
    as BGR and takes BGR arrays (Talk2DINO's reference demo fed BGR where RGB was expected)."""
    image = random_image()
    predictor = make_predictor(meta_arch)
    from_array = predictor(image, NAMES)["sem_seg"]
    Image.fromarray(image).save(tmp_path / "x.png")
    torch.testing.assert_close(predictor(str(tmp_path / "x.png"), NAMES)["sem_seg"], from_array, rtol=0, atol=0)
    torch.testing.assert_close(predictor(tmp_path / "x.png", NAMES)["sem_seg"], from_array, rtol=0, atol=0)
    torch.testing.assert_close(predictor(Image.fromarray(image), NAMES)["sem_seg"], from_array, rtol=0, atol=0)
    assert not torch.equal(predictor(image[..., ::-1].copy(), NAMES)["sem_seg"], from_array)  # channel order matters
    bgr = make_predictor(meta_arch, "INPUT.FORMAT", "BGR")
    torch.testing.assert_close(bgr(image[..., ::-1].copy(), NAMES)["sem_seg"], from_array, rtol=0, atol=0)
    torch.testing.assert_close(bgr(str(tmp_path / "x.png"), NAMES)["sem_seg"], from_array, rtol=0, atol=0)


@pytest.mark.parametrize("meta_arch", sorted(CONFIGS))
def test_batched_prediction_equals_single_images(meta_arch, shapes_root):
    predictor = make_predictor(meta_arch)
    # two sizes: images of one working size share a model call, the other size runs apart (the
    # baseline pads a batch, and padding tokens would change the scores of the smaller image)
    images = [random_image(seed=s, w=(120, 160, 120, 120)[s]) for s in range(4)]
    calls = []
    original_forward = predictor.model.forward
    predictor.model.forward = lambda inputs: calls.append(len(inputs)) or original_forward(inputs)
    batched = predictor.predict_batch(images, NAMES, batch_size=3)
    assert calls == [2, 1, 1]  # [120, 160, 120] -> {120: 2, 160: 1}; then [120]
    del predictor.model.forward
    assert len(batched) == 4
    for image, result in zip(images, batched):
        single = predictor(image, NAMES)
        assert result["sem_seg"].shape[-2:] == image.shape[:2]
        assert result["vocabulary"] == single["vocabulary"]
        torch.testing.assert_close(result["sem_seg"], single["sem_seg"], rtol=1e-5, atol=1e-5)
    assert predictor.model.text_encoder.encoder_calls == 1  # one vocabulary: encoded once


def count_text_encoder_calls(predictor, monkeypatch) -> list:
    """Patch the text tower's encode function of ``predictor``; returns the list of token batch
    sizes it is called with (independent of the encoder's own ``encoder_calls``)."""
    encoder = predictor.model.text_encoder
    calls, original = [], encoder.encode_tokens

    def counting(tokens):
        calls.append(tokens.shape[0])
        return original(tokens)

    monkeypatch.setattr(encoder, "encode_tokens", counting)
    return calls


@pytest.mark.parametrize("meta_arch", sorted(CONFIGS))
def test_second_predictor_run_skips_the_text_encoder(meta_arch, tmp_path, shapes_root, monkeypatch):
    cache = ("MODEL.TEXT.EMBEDDING_CACHE_DIR", str(tmp_path / "text_cache"))
    image = random_image()
    first = make_predictor(meta_arch, *cache)
    first_calls = count_text_encoder_calls(first, monkeypatch)
    reference = first(image, NAMES)
    assert len(first_calls) == 1  # all three names in one batch
    templates = len(first.model.text_encoder.templates)
    assert first_calls == [3 * templates]

    second = make_predictor(meta_arch, *cache)  # a new instance, as in a second run of the demo
    second_calls = count_text_encoder_calls(second, monkeypatch)
    again = second(image, NAMES)
    assert second_calls == []  # the text encoder is not called at all
    torch.testing.assert_close(again["sem_seg"], reference["sem_seg"], rtol=0, atol=0)
    second(image, NAMES[:2] + ["purple star"])  # shares two entries: only the new name is encoded
    assert second_calls == [templates]

    # New text-tower weights change the fingerprint: the entries are not reused, and the result
    # equals that of a predictor with the same weights and no disk cache.
    with torch.no_grad():
        for p in second.model.text_encoder.parameters():
            p.add_(0.05)
    changed = second(image, NAMES)
    assert second_calls == [templates, 3 * templates]
    uncached = make_predictor(meta_arch, "MODEL.TEXT.EMBEDDING_CACHE_DIR", "")
    uncached.model.load_state_dict(second.model.state_dict())
    torch.testing.assert_close(changed["sem_seg"], uncached(image, NAMES)["sem_seg"], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(changed["sem_seg"], reference["sem_seg"])


def test_weights_are_loaded_through_the_checkpointer(tmp_path, shapes_root):
    trained = make_predictor("CATSeg", seed=3)
    path = tmp_path / "model.pth"
    torch.save({"model": trained.model.state_dict()}, path)
    torch.manual_seed(5)  # another random init, then the file
    loaded = OpenVocabPredictor(tiny_cfg("CATSeg", "MODEL.WEIGHTS", str(path)))
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
