"""OpenVocabSemSegDatasetMapper and the SSD colour augmentation."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

from ovseg_d2.config import add_ovseg_config
from ovseg_d2.data import ColorAugSSDTransform, OpenVocabSemSegDatasetMapper, build_sem_seg_mapper
from ovseg_d2.data.mappers.color_aug import RandomColorAugSSD

IGNORE = 255
#: Class id -> RGB colour, far apart so interpolation can never turn one into another.
PALETTE = np.array(
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255], [128, 128, 128]],
    dtype=np.uint8,
)
IGNORE_COLOUR = np.array([255, 255, 255], dtype=np.uint8)
BLOCK = 8


def _block_label(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) uint8: random classes (and some ignore) on BLOCK x BLOCK tiles; asymmetric."""
    tiles = rng.integers(0, len(PALETTE) + 1, size=(height // BLOCK, width // BLOCK))
    tiles[tiles == len(PALETTE)] = IGNORE
    return np.kron(tiles, np.ones((BLOCK, BLOCK), dtype=np.int64)).astype(np.uint8)


def _colour_of(label: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB image whose colour encodes the label."""
    colour = np.empty(label.shape + (3,), dtype=np.uint8)
    ignore = label == IGNORE
    colour[~ignore] = PALETTE[label[~ignore]]
    colour[ignore] = IGNORE_COLOUR
    return colour


def _write_sample(tmp_path: Path, image: np.ndarray, label: np.ndarray, stem: str = "sample") -> dict:
    image_path, label_path = tmp_path / f"{stem}.png", tmp_path / f"{stem}_label.png"
    Image.fromarray(image).save(image_path)
    Image.fromarray(label).save(label_path)
    return {
        "file_name": str(image_path),
        "sem_seg_file_name": str(label_path),
        "height": image.shape[0],
        "width": image.shape[1],
        "image_id": stem,
    }


def _cfg(**input_overrides):
    cfg = add_ovseg_config(get_cfg())
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.SIZE_DIVISIBILITY = 0
    for key, value in input_overrides.items():
        node = cfg.INPUT
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


def _image_hwc(output: dict) -> np.ndarray:
    return output["image"].permute(1, 2, 0).numpy()


def _assert_colours_match_labels(image: np.ndarray, label: np.ndarray, margin: int) -> int:
    """Every pixel whose (2*margin+1)^2 neighbourhood has one label shows that label's colour.

    Returns how many pixels were checked.
    """
    height, width = label.shape
    checked = 0
    for y in range(margin, height - margin):
        for x in range(margin, width - margin):
            window = label[y - margin : y + margin + 1, x - margin : x + margin + 1]
            if (window == label[y, x]).all():
                expected = IGNORE_COLOUR if label[y, x] == IGNORE else PALETTE[label[y, x]]
                assert np.abs(image[y, x].astype(int) - expected).max() <= 1, (y, x, label[y, x], image[y, x])
                checked += 1
    return checked


def test_output_types_and_original_size_train_and_test(tmp_path):
    rng = np.random.default_rng(0)
    label = _block_label(rng, 48, 64)
    sample = _write_sample(tmp_path, _colour_of(label), label)
    original = copy.deepcopy(sample)

    train_mapper = build_sem_seg_mapper(_cfg(MIN_SIZE_TRAIN=(96,), MAX_SIZE_TRAIN=1000), is_train=True)
    out = train_mapper(sample)
    assert sample == original  # the input dict is not modified
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 96, 128)
    assert out["sem_seg"].dtype == torch.long and out["sem_seg"].shape == (96, 128)
    assert (out["height"], out["width"]) == (48, 64)
    assert out["file_name"] == sample["file_name"]
    assert out["sem_seg_file_name"] == sample["sem_seg_file_name"]
    # Exact 2x nearest upsampling of the label.
    np.testing.assert_array_equal(out["sem_seg"].numpy(), np.kron(label, np.ones((2, 2), np.uint8)))

    test_mapper = build_sem_seg_mapper(_cfg(MIN_SIZE_TEST=24, MAX_SIZE_TEST=1000), is_train=False)
    out = test_mapper(sample)
    assert out["image"].shape == (3, 24, 32) and out["sem_seg"].shape == (24, 32)
    assert (out["height"], out["width"]) == (48, 64)
    assert out["sem_seg_file_name"] == sample["sem_seg_file_name"]

    no_resize = build_sem_seg_mapper(_cfg(MIN_SIZE_TEST=0), is_train=False)(sample)
    np.testing.assert_array_equal(_image_hwc(no_resize), _colour_of(label))
    np.testing.assert_array_equal(no_resize["sem_seg"].numpy(), label)


def test_bgr_format_reverses_channels(tmp_path):
    label = _block_label(np.random.default_rng(1), 16, 16)
    sample = _write_sample(tmp_path, _colour_of(label), label)
    out = build_sem_seg_mapper(_cfg(FORMAT="BGR", MIN_SIZE_TEST=0), is_train=False)(sample)
    np.testing.assert_array_equal(_image_hwc(out), _colour_of(label)[..., ::-1])


def test_labels_stay_aligned_after_resize_crop_and_flip(tmp_path):
    rng = np.random.default_rng(2)
    label = _block_label(rng, 64, 64)
    sample = _write_sample(tmp_path, _colour_of(label), label)
    resized_label = np.kron(label, np.ones((2, 2), np.uint8))  # 128 x 128
    cfg = _cfg(
        MIN_SIZE_TRAIN=(128,),
        MAX_SIZE_TRAIN=1000,
        RANDOM_FLIP="horizontal",
        **{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": [80, 72]},
    )
    mapper = build_sem_seg_mapper(cfg, is_train=True)
    flipped_seen = unflipped_seen = 0
    np.random.seed(0)
    for _ in range(6):
        out = mapper(sample)
        image, out_label = _image_hwc(out), out["sem_seg"].numpy()
        assert out_label.shape == (80, 72) and image.shape == (80, 72, 3)
        assert _assert_colours_match_labels(image, out_label, margin=1) > 0.5 * out_label.size
        # The label is a window of the resized label, mirrored or not.
        windows = np.lib.stride_tricks.sliding_window_view(resized_label, (80, 72))
        plain = (windows == out_label).all(axis=(-1, -2)).any()
        mirrored = (windows == out_label[:, ::-1]).all(axis=(-1, -2)).any()
        assert plain or mirrored
        flipped_seen += int(mirrored and not plain)
        unflipped_seen += int(plain and not mirrored)
    assert flipped_seen > 0 and unflipped_seen > 0


def test_explicit_flip_mirrors_image_and_label_together(tmp_path):
    label = _block_label(np.random.default_rng(3), 32, 40)
    sample = _write_sample(tmp_path, _colour_of(label), label)
    mapper = OpenVocabSemSegDatasetMapper(
        is_train=True, augmentations=[T.RandomFlip(prob=1.0)], image_format="RGB"
    )
    out = mapper(sample)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), label[:, ::-1])
    np.testing.assert_array_equal(_image_hwc(out), _colour_of(label)[:, ::-1])


def test_category_area_crop_uses_dataset_ignore_label_and_pads_to_crop_size(tmp_path):
    MetadataCatalog.get("test_mapper_16bit_train").set(ignore_label=65535)
    label16 = np.full((40, 50), 700, dtype=np.uint16)
    label16[:, 25:] = 3
    label16[:5] = 65535
    sample = _write_sample(tmp_path, np.full((40, 50, 3), 90, np.uint8), label16)
    cfg = _cfg(
        MIN_SIZE_TRAIN=(40,),
        MAX_SIZE_TRAIN=1000,
        SIZE_DIVISIBILITY=-1,
        **{"CROP.ENABLED": True, "CROP.TYPE": "absolute", "CROP.SIZE": [64, 64], "CROP.SINGLE_CATEGORY_MAX_AREA": 0.75},
    )
    cfg.DATASETS.TRAIN = ("test_mapper_16bit_train",)
    mapper = build_sem_seg_mapper(cfg, is_train=True)
    assert mapper.ignore_label == 65535 and mapper.pad_multiple == (64, 64)
    out = mapper(sample)
    assert out["image"].shape == (3, 64, 64) and out["sem_seg"].shape == (64, 64)
    sem_seg = out["sem_seg"].numpy()
    np.testing.assert_array_equal(sem_seg[:40, :50], label16.astype(np.int64))  # 16-bit values kept
    assert (sem_seg[40:] == 65535).all() and (sem_seg[:, 50:] == 65535).all()
    assert (out["image"][:, 40:] == 0).all() and (out["image"][:, :, 50:] == 0).all()
    assert (out["image"][:, :40, :50] == 90).all()


def test_size_divisibility_pads_to_multiple(tmp_path):
    label = np.zeros((70, 50), np.uint8)
    sample = _write_sample(tmp_path, np.zeros((70, 50, 3), np.uint8), label)
    cfg = _cfg(MIN_SIZE_TRAIN=(50,), MAX_SIZE_TRAIN=1000, SIZE_DIVISIBILITY=32)
    out = build_sem_seg_mapper(cfg, is_train=True)(sample)
    assert out["image"].shape == (3, 96, 64)
    assert (out["sem_seg"][70:] == IGNORE).all() and (out["sem_seg"][:70, :50] == 0).all()
    cfg.INPUT.MIN_SIZE_TEST = 0
    test_out = build_sem_seg_mapper(cfg, is_train=False)(sample)
    assert test_out["image"].shape == (3, 70, 50)  # no padding at test time


def test_colour_aug_changes_image_but_never_labels(tmp_path):
    rng = np.random.default_rng(4)
    label = _block_label(rng, 32, 32)
    image = np.clip(_colour_of(label).astype(int) // 2 + 60, 0, 255).astype(np.uint8)  # room to brighten
    sample = _write_sample(tmp_path, image, label)
    mapper = build_sem_seg_mapper(_cfg(MIN_SIZE_TRAIN=(32,), MAX_SIZE_TRAIN=1000, COLOR_AUG_SSD=True), is_train=True)
    assert any(isinstance(a, RandomColorAugSSD) for a in mapper.augmentations.augs)
    np.random.seed(0)
    changed = 0
    for _ in range(8):
        out = mapper(sample)
        np.testing.assert_array_equal(out["sem_seg"].numpy(), label)
        changed += int(not np.array_equal(_image_hwc(out), image))
    assert changed >= 5


def test_colour_transform_is_exact_and_respects_channel_order():
    image = np.array([[[255, 0, 0], [100, 150, 200]]], dtype=np.uint8)  # (1, 2, 3) RGB
    identity = ColorAugSSDTransform("RGB")
    np.testing.assert_array_equal(identity.apply_image(image), image)
    brighter = ColorAugSSDTransform("RGB", brightness_delta=20.0).apply_image(image)
    np.testing.assert_array_equal(brighter, np.clip(image.astype(int) + 20, 0, 255))
    segmentation = np.array([[1, 255]], dtype=np.uint8)
    assert ColorAugSSDTransform("RGB", brightness_delta=20.0).apply_segmentation(segmentation) is segmentation

    # A +120 degree hue rotation turns red into green, whatever the stored channel order.
    rgb_out = ColorAugSSDTransform("RGB", hue_delta_degrees=120.0).apply_image(image)
    bgr_out = ColorAugSSDTransform("BGR", hue_delta_degrees=120.0).apply_image(image[..., ::-1].copy())
    np.testing.assert_array_equal(rgb_out[0, 0], [0, 255, 0])
    np.testing.assert_array_equal(bgr_out[0, 0], [0, 255, 0])
    assert np.abs(rgb_out.astype(int) - bgr_out[..., ::-1]).max() <= 1

    desaturated = ColorAugSSDTransform("RGB", saturation_factor=0.0).apply_image(image)
    assert (desaturated.max(axis=-1) == desaturated.min(axis=-1)).all()  # grey
    with pytest.raises(ValueError, match="RGB"):
        ColorAugSSDTransform("YUV-BT.601")


def test_size_mismatch_names_both_files(tmp_path):
    sample = _write_sample(tmp_path, np.zeros((32, 32, 3), np.uint8), np.zeros((32, 24), np.uint8))
    mapper = build_sem_seg_mapper(_cfg(MIN_SIZE_TEST=0), is_train=False)
    with pytest.raises(ValueError) as info:
        mapper(sample)
    assert sample["file_name"] in str(info.value) and sample["sem_seg_file_name"] in str(info.value)


def test_training_requires_label_and_test_does_not(tmp_path):
    sample = _write_sample(tmp_path, np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8))
    del sample["sem_seg_file_name"]
    with pytest.raises(ValueError, match="sem_seg_file_name"):
        build_sem_seg_mapper(_cfg(MIN_SIZE_TRAIN=(16,)), is_train=True)(sample)
    out = build_sem_seg_mapper(_cfg(MIN_SIZE_TEST=0), is_train=False)(sample)
    assert "sem_seg" not in out and out["image"].shape == (3, 16, 16)


def test_unknown_mapper_name_and_flip_mode_are_rejected():
    cfg = _cfg(DATASET_MAPPER_NAME="no_such_mapper")
    with pytest.raises(ValueError, match="ovseg_semantic"):
        build_sem_seg_mapper(cfg, is_train=True)
    with pytest.raises(ValueError, match="horizontal"):
        build_sem_seg_mapper(_cfg(RANDOM_FLIP="diagonal"), is_train=True)
