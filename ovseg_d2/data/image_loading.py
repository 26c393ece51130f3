"""Reading user images as H x W x 3 uint8 RGB, whatever their file says.

detectron2's ``read_image`` converts 16-bit images by clipping (every value above 255 becomes
255) and drops alpha without compositing. Here:

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``);
* grayscale, bilevel, palette, CMYK and YCbCr images are converted to RGB;
* transparency (RGBA, LA, palette with transparency) is composited onto white;
* 16-bit images (``I;16*``, and 32-bit ``I`` holding values above 255) are rescaled
  (``value / 257``), float images (``F``) are read as 0..1 when their maximum is at most 1;
* files PIL cannot decode (e.g. 16-bit RGB TIFF) are read with OpenCV, 16-bit rescaled the same way.
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps

__all__ = ["read_image_rgb", "pil_to_rgb", "ImageReadError"]

#: RGB the transparent parts of an image are composited onto
TRANSPARENT_BACKGROUND_RGB = (255, 255, 255)
_SIXTEEN_BIT_SCALE = 257.0  # 65535 / 255
_EIGHT_BIT_MAX = 255


class ImageReadError(ValueError):
    """A file that exists but is not a readable image (the message names the file and why)."""


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.rint(array / _SIXTEEN_BIT_SCALE).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if np.nanmax(array, initial=0.0) <= 1.0 else 1.0
        return np.clip(np.rint(np.nan_to_num(array) * scale), 0, 255).astype(np.uint8)
    # wider integers: 16-bit data in a 32-bit container (PIL mode "I") unless it fits in 8 bits
    scale = _SIXTEEN_BIT_SCALE if array.max(initial=0) > _EIGHT_BIT_MAX else 1.0
    return np.clip(np.rint(array / scale), 0, 255).astype(np.uint8)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image -> H x W x 3 uint8 RGB (EXIF orientation, transparency, bit depth handled)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        gray = _to_uint8(np.asarray(image))
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND_RGB + (255,))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _read_with_opencv(path: str) -> np.ndarray:
    import cv2

    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(f"cannot read {path}: neither PIL nor OpenCV can decode it (corrupt or not an image?)")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[..., 3:].astype(np.float64) / np.iinfo(array.dtype).max if array.dtype.kind == "u" else array[..., 3:]
        white = np.full_like(array[..., :3], np.iinfo(array.dtype).max if array.dtype.kind == "u" else 1.0)
        array = (array[..., :3] * alpha + white * (1 - alpha)).astype(array.dtype)
    array = array[..., :3][..., ::-1]  # BGR -> RGB
    return np.ascontiguousarray(_to_uint8(array))


def read_image_rgb(source: Union[str, os.PathLike, Image.Image]) -> np.ndarray:
    """A path or PIL image -> H x W x 3 uint8 RGB.

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: the file is not an image that can be decoded (or is truncated).
        PIL.Image.DecompressionBombError: more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` x 2.
    """
    if isinstance(source, Image.Image):
        return pil_to_rgb(source)
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise ImageReadError(f"cannot read {path}: it is a directory")
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_rgb(image)
    except Image.DecompressionBombError:
        raise
    except (OSError, ValueError, SyntaxError) as pil_error:  # unidentified, truncated or unsupported
        if "truncated" in str(pil_error).lower():  # OpenCV would pad a truncated file with grey
            raise ImageReadError(f"cannot read {path}: the file is truncated ({pil_error})") from pil_error
        try:
            return _read_with_opencv(path)
        except ImageReadError as e:
            raise ImageReadError(f"{e} (PIL: {pil_error})") from pil_error
