"""read_image_rgb: EXIF orientation, grayscale, palette, alpha, 16-bit and float images, errors."""
import cv2
import numpy as np
import pytest
from PIL import Image

from ovseg_d2.data.image_loading import ImageReadError, read_image_rgb


def gradient(h=6, w=10):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 20, y * 30, (x + y) * 10], axis=-1).astype(np.uint8)


def test_rgb_and_exif_orientation(tmp_path):
    rgb = gradient()
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "plain.png"), rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    got = read_image_rgb(str(tmp_path / "rotated.jpg"))
    assert got.shape == (10, 6, 3)  # displayed upright: width and height swapped
    expected = np.rot90(rgb, k=-1)  # 90 degrees clockwise
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 4  # JPEG error only


def test_grayscale_palette_and_alpha(tmp_path):
    gray = gradient()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.dstack([gradient(), np.full((6, 10), 255, np.uint8)])
    rgba[0, 0, 3] = 0  # fully transparent -> white
    rgba[0, 1] = [100, 0, 0, 128]  # half transparent red over white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    got = read_image_rgb(tmp_path / "alpha.png")
    assert got.shape == (6, 10, 3)
    np.testing.assert_array_equal(got[0, 0], [255, 255, 255])
    np.testing.assert_allclose(got[0, 1], [100 * 128 / 255 + 255 * 127 / 255, 255 * 127 / 255, 255 * 127 / 255], atol=1.5)
    np.testing.assert_array_equal(got[1:], gradient()[1:])
    palette = Image.fromarray(gradient()).convert("P")
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "palette.png"), np.asarray(palette.convert("RGB")))


def test_sixteen_bit_images_are_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 65535], [32896, 1000, 60000]], dtype=np.uint16)
    expected = np.rint(values / 257.0).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "gray16.png"), values)
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "gray16.png"), np.repeat(expected[..., None], 3, axis=2))
    rgb16 = np.stack([values, values[::-1], np.full_like(values, 65535)], axis=-1)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    got = read_image_rgb(tmp_path / "rgb16.png")
    np.testing.assert_allclose(got.astype(int), np.rint(rgb16 / 257.0).astype(int), atol=1)
    cv2.imwrite(str(tmp_path / "rgb16.tif"), rgb16[..., ::-1])
    np.testing.assert_allclose(read_image_rgb(tmp_path / "rgb16.tif").astype(int), np.rint(rgb16 / 257.0).astype(int), atol=1)
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(read_image_rgb(floats)[0, :, 0], [0, 128, 255])


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image_rgb(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageReadError, match="text.png"):
        read_image_rgb(tmp_path / "text.png")
    Image.fromarray(gradient(64, 64)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        read_image_rgb(tmp_path / "truncated.jpg")
    with pytest.raises(ImageReadError, match="directory"):
        read_image_rgb(tmp_path)
