"""tools/demo.py: outputs (overlay with legend, label PNG, JSON fractions), bad inputs (message,
the rest still processed, exit status), image modes (EXIF, grayscale, RGBA, 16-bit), never
overwriting inputs or files the demo did not write, and very large images.

The model is the tiny quickstart baseline with perturbed random weights loaded through
``MODEL.WEIGHTS`` (so the demo and the reference predictor below hold the same weights); labels
are checked against ``OpenVocabPredictor`` on arrays prepared here with numpy, fractions against
``np.bincount`` of the label PNG, colours against detectron2's palette."""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ovseg_d2 import OpenVocabPredictor
from ovseg_d2.data.datasets.builtin_shapes import render_shapes_sample
from ovseg_d2.visualization import class_colors

from .conftest import REPO_ROOT, quickstart_cfg
from .tiny_configs import CONFIGS

CONFIG = os.path.join(REPO_ROOT, "configs/quickstart/baseline_maskclip_tiny.yaml")
VOCABULARY = "red circle; green triangle, triangle; sand background; water background"
NAMES = ["red circle", "green triangle, triangle", "sand background", "water background"]

_spec = importlib.util.spec_from_file_location("ovseg_demo_tool", os.path.join(REPO_ROOT, "tools", "demo.py"))
demo = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = demo  # dataclasses look their module up
_spec.loader.exec_module(demo)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint of the tiny baseline with every parameter perturbed (non-degenerate labels)."""
    torch.manual_seed(0)
    from detectron2.modeling import build_model

    model = build_model(quickstart_cfg(CONFIG))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    path = tmp_path_factory.mktemp("demo_weights") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def reference(weights):
    return OpenVocabPredictor(quickstart_cfg(CONFIG, "MODEL.WEIGHTS", weights))


def run_demo(capsys, weights, inputs, output, *extra, vocabulary=VOCABULARY, config=CONFIG, opts=()):
    argv = ["--config-file", config, "--input", *map(str, inputs), "--output", str(output)]
    if vocabulary is not None:
        argv += ["--vocabulary", vocabulary]
    opts = (["MODEL.WEIGHTS", weights] if weights else []) + list(opts)
    status = demo.main(argv + list(extra) + (["--opts", *opts] if opts else []))
    return status, capsys.readouterr().err


def shapes_image(index=0):
    return render_shapes_sample("val", index)[0]


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def read_labels(path):
    return np.asarray(Image.open(path))


def test_outputs_overlay_labels_and_fractions(tmp_path, capsys, weights, reference):
    image = shapes_image(0)
    Image.fromarray(image).save(tmp_path / "shapes.png")
    status, err = run_demo(capsys, weights, [tmp_path / "shapes.png"], tmp_path / "out")
    assert status == 0, err
    assert "images: 100%" in err  # the tqdm progress bar

    labels = read_labels(tmp_path / "out" / "shapes_labels.png")
    assert labels.shape == image.shape[:2] and labels.dtype == np.uint8
    expected = reference(image, NAMES)["labels"].numpy()
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) > 1

    summary = json.loads((tmp_path / "out" / "shapes.json").read_text())
    assert summary["vocabulary"] == NAMES
    assert summary["display_names"] == ["red circle", "green triangle", "sand background", "water background"]
    assert summary["scores_at"] == "input" and summary["background_by_threshold"] is False
    fractions = np.array([summary["pixel_fractions"][n] for n in NAMES])
    np.testing.assert_allclose(fractions, np.bincount(labels.ravel(), minlength=4) / labels.size, rtol=0, atol=1e-12)
    assert abs(fractions.sum() - 1.0) < 1e-9

    overlay = np.asarray(Image.open(tmp_path / "out" / "shapes_overlay.png").convert("RGB"))
    # 128-px input drawn at 512 (integer upscaling) with a legend panel on the right
    assert overlay.shape[0] == 512 and overlay.shape[1] > 512
    panel = overlay[:, 512:].reshape(-1, 3)
    colors = class_colors(4)
    for k in range(4):
        swatch = np.round(np.asarray(colors[k]) * 255).astype(np.uint8)
        present_in_legend = bool((np.abs(panel.astype(int) - swatch).max(axis=1) <= 1).any())
        assert present_in_legend == (fractions[k] > 0), (NAMES[k], fractions[k])
    # painted pixels: the image is not left as it was wherever a class is drawn
    upscaled = np.repeat(np.repeat(image, 4, axis=0), 4, axis=1)
    assert np.abs(overlay[:, :512].astype(int) - upscaled).mean() > 5


@pytest.mark.parametrize("meta_arch", ["CATSeg", "Talk2DINO"])
def test_every_meta_architecture(meta_arch, tmp_path, capsys):
    """CAT-Seg and Talk2DINO (tiny, random) through the demo: Talk2DINO scores background by
    threshold by default, so label 0 is "background"; labels and fractions agree."""
    config, overrides = CONFIGS[meta_arch]
    Image.fromarray(shapes_image(0)).save(tmp_path / "a.png")
    status, err = run_demo(capsys, None, [tmp_path / "a.png"], tmp_path / "out", config=os.path.join(REPO_ROOT, config), opts=overrides)
    assert status == 0, err
    summary = json.loads((tmp_path / "out" / "a.json").read_text())
    assert summary["meta_architecture"] == meta_arch
    assert summary["vocabulary"] == (["background"] if meta_arch == "Talk2DINO" else []) + NAMES
    assert summary["background_by_threshold"] is (meta_arch == "Talk2DINO")
    labels = read_labels(tmp_path / "out" / "a_labels.png")
    assert labels.shape == (128, 128)
    fractions = np.array(list(summary["pixel_fractions"].values()))
    np.testing.assert_allclose(fractions, np.bincount(labels.ravel(), minlength=len(fractions)) / labels.size, rtol=0, atol=1e-12)
    assert Image.open(tmp_path / "out" / "a_overlay.png").size[1] == 512


def test_more_than_256_classes_give_16_bit_labels(tmp_path, capsys, weights, reference):
    image = shapes_image(0)
    Image.fromarray(image).save(tmp_path / "a.png")
    names = NAMES + [f"thing number {i}" for i in range(300)]
    status, err = run_demo(capsys, weights, [tmp_path / "a.png"], tmp_path / "out", "--overlay-max-size", "600",
                           vocabulary="; ".join(names))
    assert status == 0, err
    with Image.open(tmp_path / "out" / "a_labels.png") as png:
        assert png.mode.startswith("I")  # 16-bit
        labels = np.asarray(png).astype(np.int64)
    np.testing.assert_array_equal(labels, reference(image, names)["labels"].numpy())
    summary = json.loads((tmp_path / "out" / "a.json").read_text())
    assert len(summary["pixel_fractions"]) == 304 and abs(sum(summary["pixel_fractions"].values()) - 1) < 1e-9


def test_background_by_threshold_label_zero(tmp_path, capsys, weights):
    Image.fromarray(shapes_image(1)).save(tmp_path / "a.png")
    status, err = run_demo(capsys, weights, [tmp_path / "a.png"], tmp_path / "out", "--background", "on",
                           vocabulary="red circle; green triangle")
    assert status == 0, err
    summary = json.loads((tmp_path / "out" / "a.json").read_text())
    assert summary["vocabulary"] == ["background", "red circle", "green triangle"]
    assert summary["background_by_threshold"] is True
    labels = read_labels(tmp_path / "out" / "a_labels.png")
    assert labels.max() <= 2
    assert abs(sum(summary["pixel_fractions"].values()) - 1.0) < 1e-9


def test_bad_inputs_get_messages_and_the_rest_is_processed(tmp_path, capsys, weights):
    Image.fromarray(shapes_image(0)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"this is not a JPEG")
    buffer = open(tmp_path / "good.png", "rb").read()
    (tmp_path / "truncated.png").write_bytes(buffer[: len(buffer) // 2])
    (tmp_path / "empty_folder").mkdir()
    inputs = [tmp_path / "missing.jpg", tmp_path / "broken.jpg", tmp_path / "truncated.png", tmp_path / "empty_folder", tmp_path / "good.png"]
    status, err = run_demo(capsys, weights, inputs, tmp_path / "out")
    assert status == demo.EXIT_SOME_FAILED
    assert "missing.jpg: no such file or folder" in err
    assert "broken.jpg" in err and "cannot read" in err
    assert "truncated.png" in err and "truncated" in err
    assert "empty_folder: the folder holds no image files" in err
    assert "1 image(s) written" in err and "4 failed" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["good.json", "good_labels.png", "good_overlay.png"]


@pytest.mark.parametrize(
    "vocabulary, expected",
    [
        ("", "the vocabulary is empty"),
        (" ; ;", "the vocabulary is empty"),
        ("cat; dog; Cat", "more than once: ['Cat']"),
        ("cat; dog, puppy; dog", "same class more than once"),
    ],
)
def test_bad_vocabulary_stops_before_any_image(tmp_path, capsys, weights, vocabulary, expected):
    Image.fromarray(shapes_image(0)).save(tmp_path / "good.png")
    status, err = run_demo(capsys, weights, [tmp_path / "good.png"], tmp_path / "out", vocabulary=vocabulary)
    assert status == demo.EXIT_USAGE
    assert expected in err and "[demo] error" in err
    assert not (tmp_path / "out").exists()


def test_bad_config_or_weights_exit_2(tmp_path, capsys, weights):
    Image.fromarray(shapes_image(0)).save(tmp_path / "good.png")
    for opts, expected in [
        (["MODEL.NO_SUCH_KEY", "1"], "NO_SUCH_KEY"),
        (["MODEL.DEVICE"], "[demo] error"),  # an odd number of overrides
        (["MODEL.WEIGHTS", str(tmp_path / "missing.pth")], "cannot build the model"),
        (["MODEL.META_ARCHITECTURE", "NoSuchArch"], "NoSuchArch"),
    ]:
        status, err = run_demo(capsys, None, [tmp_path / "good.png"], tmp_path / "out", opts=opts)
        assert status == demo.EXIT_USAGE and expected in err, (opts, err)
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_vocabulary_file(tmp_path, capsys, weights):
    Image.fromarray(shapes_image(0)).save(tmp_path / "good.png")
    (tmp_path / "names.txt").write_text("# shapes\nred circle\n\ngreen triangle; triangle\n")
    status, err = run_demo(capsys, weights, [tmp_path / "good.png"], tmp_path / "out", "--vocabulary-file", str(tmp_path / "names.txt"),
                           vocabulary="sand background")
    assert status == 0, err
    summary = json.loads((tmp_path / "out" / "good.json").read_text())
    assert summary["vocabulary"] == ["sand background", "red circle", "green triangle; triangle"]
    (tmp_path / "comments.txt").write_text("# nothing\n\n")
    status, err = run_demo(capsys, weights, [tmp_path / "good.png"], tmp_path / "out2", "--vocabulary-file", str(tmp_path / "comments.txt"),
                           vocabulary=None)
    assert status == demo.EXIT_USAGE and "the vocabulary is empty" in err
    status, err = run_demo(capsys, weights, [tmp_path / "good.png"], tmp_path / "out2", "--vocabulary-file", str(tmp_path / "nope.txt"))
    assert status == demo.EXIT_USAGE and "cannot read the vocabulary file" in err


def test_image_modes_exif_grayscale_rgba_16bit(tmp_path, capsys, weights, reference):
    image = shapes_image(2)
    h, w = image.shape[:2]
    inputs = tmp_path / "in"
    inputs.mkdir()
    # EXIF orientation 6 ("rotate 90 CW to display"): the stored pixels are the upright image
    # rotated 90 degrees counter-clockwise
    upright = image[:, : w - 32]  # not square, so a missed rotation changes the shape
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(inputs / "exif.png", exif=exif)
    gray = image[..., 1]
    Image.fromarray(gray, mode="L").save(inputs / "gray.png")
    alpha = np.where((np.arange(w)[None, :] // 16) % 2 == 0, 255, 0).astype(np.uint8).repeat(h, axis=0)
    Image.fromarray(np.dstack([image, alpha]), mode="RGBA").save(inputs / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(inputs / "sixteen.png")
    status, err = run_demo(capsys, weights, [inputs], tmp_path / "out")
    assert status == 0, err

    gray_rgb = np.repeat(gray[..., None], 3, axis=2)
    on_white = np.where(alpha[..., None] == 255, image, 255).astype(np.uint8)
    expected = {"exif": upright, "gray": gray_rgb, "rgba": on_white, "sixteen": gray_rgb}
    for name, array in expected.items():
        labels = read_labels(tmp_path / "out" / f"{name}_labels.png")
        assert labels.shape == array.shape[:2], name
        np.testing.assert_array_equal(labels, reference(array, NAMES)["labels"].numpy(), err_msg=name)
    assert not np.array_equal(on_white, image)  # the transparent stripes did change the input


def test_output_in_the_input_folder_skips_own_pngs_and_never_clobbers(tmp_path, capsys, weights):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(shapes_image(0)).save(folder / "a.png")
    Image.fromarray(shapes_image(1)).save(folder / "b.png")
    Image.fromarray(shapes_image(3)).save(folder / "b_overlay.png")  # the user's own file, an input
    (folder / "c.json").write_text('{"mine": true}')  # the user's file where c's JSON would go
    Image.fromarray(shapes_image(4)).save(folder / "c.png")
    originals = {name: digest(folder / name) for name in os.listdir(folder)}

    status, err = run_demo(capsys, weights, [folder], folder)
    assert status == demo.EXIT_SOME_FAILED
    assert "b_overlay.png is an input image; choose another --output folder" in err
    assert "c.json exists and was not written by this demo" in err
    for name, value in originals.items():
        assert digest(folder / name) == value, name  # no input or user file touched
    made = {"a.json", "a_labels.png", "a_overlay.png", "b_overlay.json", "b_overlay_labels.png", "b_overlay_overlay.png"}
    assert set(os.listdir(folder)) == set(originals) | made

    # A second run over the same folder does not take the demo's own PNGs for inputs, refuses to
    # replace them without --overwrite, and with it replaces only its own files.
    status, err = run_demo(capsys, weights, [folder], folder)
    assert status == demo.EXIT_SOME_FAILED
    assert "already exists (from an earlier run); pass --overwrite" in err
    assert "a_labels.png:" not in err and "a_overlay_overlay" not in str(os.listdir(folder))
    status, err = run_demo(capsys, weights, [folder], folder, "--overwrite")
    assert "4 of this demo's own output PNGs skipped" in err
    assert "c.json exists and was not written by this demo" in err and status == demo.EXIT_SOME_FAILED
    for name, value in originals.items():
        assert digest(folder / name) == value, name
    assert set(os.listdir(folder)) == set(originals) | made
    assert demo.is_demo_output(str(folder / "a_labels.png")) and demo.is_demo_output(str(folder / "a.json"))
    assert not demo.is_demo_output(str(folder / "a.png")) and not demo.is_demo_output(str(folder / "c.json"))


def test_duplicate_inputs_are_processed_once_and_output_must_be_a_folder(tmp_path, capsys, weights):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(shapes_image(0)).save(folder / "a.png")
    status, err = run_demo(capsys, weights, [folder / "a.png", folder, folder / "a.png"], tmp_path / "out")
    assert status == 0, err and "1 image(s) written" in err
    (tmp_path / "file.txt").write_text("x")
    status, err = run_demo(capsys, weights, [folder], tmp_path / "file.txt")
    assert status == demo.EXIT_USAGE and "is a file; give a folder" in err
    assert (tmp_path / "file.txt").read_text() == "x"


def test_very_large_image_at_working_resolution(tmp_path, capsys, weights, reference):
    """64 classes on a 1600 x 2400 image: the input-resolution scores would take 940 MiB, over
    ``--score-memory-mb 256``, so ``auto`` keeps them at the working resolution and upsamples the
    labels band by band (the default 1024 MiB applies from 4.2 megapixels at 64 classes)."""
    small = shapes_image(0)
    large = np.ascontiguousarray(np.repeat(np.repeat(small, 19, axis=0), 19, axis=1)[:1600, :2400])
    Image.fromarray(large).save(tmp_path / "large.png")
    vocabulary = "; ".join(NAMES[:1] + [f"thing number {i}" for i in range(63)])
    status, err = run_demo(capsys, weights, [tmp_path / "large.png"], tmp_path / "out", "--score-memory-mb", "256", vocabulary=vocabulary)
    assert status == 0, err
    summary = json.loads((tmp_path / "out" / "large.json").read_text())
    assert summary["scores_at"] == "working"
    labels = read_labels(tmp_path / "out" / "large_labels.png")
    assert labels.shape == (1600, 2400)
    fractions = np.array(list(summary["pixel_fractions"].values()))
    np.testing.assert_allclose(fractions, np.bincount(labels.ravel(), minlength=64) / labels.size, rtol=0, atol=1e-12)
    overlay = Image.open(tmp_path / "out" / "large_overlay.png")
    assert overlay.height == 1067  # drawn at --overlay-max-size 1600 on the long side

    # --scores-at working on a small image equals the banded upsampling of the reference scores
    Image.fromarray(small).save(tmp_path / "small.png")
    status, err = run_demo(capsys, weights, [tmp_path / "small.png"], tmp_path / "out", "--scores-at", "working")
    assert status == 0, err
    expected = reference(small, NAMES, scores_at="working")["labels"].numpy()
    np.testing.assert_array_equal(read_labels(tmp_path / "out" / "small_labels.png"), expected)


def test_command_line_exit_status(tmp_path, weights):
    """As a script would run it: a missing file gives a message and status 1."""
    Image.fromarray(shapes_image(0)).save(tmp_path / "good.png")
    command = [sys.executable, os.path.join(REPO_ROOT, "tools", "demo.py"), "--config-file", CONFIG, "--input",
               str(tmp_path / "good.png"), str(tmp_path / "missing.png"), "--vocabulary", VOCABULARY,
               "--output", str(tmp_path / "out"), "--opts", "MODEL.WEIGHTS", weights]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "missing.png: no such file or folder" in result.stderr
    assert (tmp_path / "out" / "good_overlay.png").exists()
