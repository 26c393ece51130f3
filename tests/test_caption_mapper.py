"""CaptionDatasetMapper against a hand computation (PIL bicubic resize + centre crop in the test)."""
import ovseg_d2  # noqa: F401  (environment remedies before detectron2)

import numpy as np
import pytest
from detectron2.config import get_cfg
from PIL import Image

from ovseg_d2.config import add_ovseg_config
from ovseg_d2.data.mappers import CaptionDatasetMapper


def _cfg(size, fmt="RGB"):
    cfg = add_ovseg_config(get_cfg())
    cfg.INPUT.FORMAT = fmt
    cfg.INPUT.CAPTION.IMAGE_SIZE = size
    return cfg


def _record(tmp_path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path = tmp_path / f"img_{height}x{width}.png"
    Image.fromarray(pixels).save(path)
    record = {"file_name": str(path), "image_id": 7, "height": height, "width": width, "caption": "a photo of a red circle", "caption_id": 70}
    return record, pixels


@pytest.mark.parametrize(
    "height, width, size, resized_wh, box",
    [
        # landscape: short side 30 -> 20, long 47 -> int(20 * 47 / 30) = 31; left = round(11 / 2) = 6 (round half to even)
        (30, 47, 20, (31, 20), (6, 0)),
        # portrait, enlarged: short 16 -> 20, long 25 -> int(20 * 25 / 16) = 31; top = round(5.5) = 6
        (25, 16, 20, (20, 31), (0, 6)),
        # landscape: long 40 -> int(20 * 40 / 33) = 24; left = round(2) = 2
        (33, 40, 20, (24, 20), (2, 0)),
    ],
)
def test_resize_short_side_bicubic_then_centre_crop(tmp_path, height, width, size, resized_wh, box):
    record, pixels = _record(tmp_path, height, width)
    out = CaptionDatasetMapper(_cfg(size))(record)
    # the hand computation: PIL bicubic resize to the sizes worked out above, then the crop box
    resized = Image.fromarray(pixels).resize(resized_wh, Image.BICUBIC)
    left, top = box
    expected = np.asarray(resized.crop((left, top, left + size, top + size)))
    assert out["image"].dtype.is_floating_point is False and out["image"].shape == (3, size, size)
    np.testing.assert_array_equal(out["image"].numpy().transpose(1, 2, 0), expected)
    assert (out["height"], out["width"]) == (height, width)
    assert (out["image_id"], out["caption"], out["caption_id"]) == (7, "a photo of a red circle", 70)
    assert "image" not in record  # the input dict is left alone


def test_square_image_of_the_size_is_unchanged_and_bgr_swaps_channels(tmp_path):
    record, pixels = _record(tmp_path, 20, 20, seed=1)
    rgb = CaptionDatasetMapper(_cfg(20))(record)["image"].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(rgb, pixels)
    bgr = CaptionDatasetMapper(_cfg(20, "BGR"))(record)["image"].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(bgr, pixels[..., ::-1])


def test_missing_caption_is_a_clear_error(tmp_path):
    record, _ = _record(tmp_path, 20, 20)
    record.pop("caption")
    with pytest.raises(KeyError, match="caption data set"):
        CaptionDatasetMapper(_cfg(20))(record)
