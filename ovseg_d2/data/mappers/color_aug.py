"""SSD-style photometric augmentation (random brightness, contrast, saturation, hue).

Follows the photometric distortion of the SSD detector: each of the four distortions is applied
with probability 1/2; brightness comes first, then contrast either before or after the
saturation/hue pair (probability 1/2 each). Brightness adds a value to every channel, contrast
and saturation multiply (the image / the HSV saturation channel), hue rotates the HSV hue.

Split into two parts, the detectron2 way:

* :class:`ColorAugSSDTransform`: a deterministic :class:`~detectron2.data.transforms.Transform`
  holding the sampled parameters. It changes the image only; segmentation maps, boxes and
  coordinates pass through unchanged.
* :class:`RandomColorAugSSD`: the :class:`~detectron2.data.transforms.Augmentation` that samples
  those parameters (with ``np.random``, like detectron2's own augmentations, so data-loader
  worker seeding applies).
"""
from __future__ import annotations

import cv2
import numpy as np
from detectron2.data import transforms as T

__all__ = ["ColorAugSSDTransform", "RandomColorAugSSD", "SUPPORTED_IMAGE_FORMATS"]

#: Channel orders the transform understands (``INPUT.FORMAT``).
SUPPORTED_IMAGE_FORMATS = ("RGB", "BGR")
#: Default ranges of the SSD distortions (brightness on the 0-255 scale, hue in degrees).
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA_DEGREES = 18.0
#: Probability of each distortion, and of contrast coming first.
APPLY_PROBABILITY = 0.5
_FULL_TURN_DEGREES = 360.0
_MAX_INTENSITY = 255.0


class ColorAugSSDTransform(T.Transform):
    """Apply fixed SSD photometric distortions to an (H, W, 3) uint8 image in ``img_format``.

    Args:
        img_format: channel order of the images, "RGB" or "BGR".
        brightness_delta: added to every channel (0-255 scale); 0 leaves brightness alone.
        contrast_factor: multiplies every channel; 1 leaves contrast alone.
        saturation_factor: multiplies HSV saturation; 1 leaves it alone.
        hue_delta_degrees: added to HSV hue (degrees, wraps around); 0 leaves it alone.
        contrast_first: apply contrast before saturation/hue (else after).

    Intermediate results are clipped to [0, 255] after each step, as in SSD; the colour space
    conversion is done in float32 so an unchanged image stays bit-identical.
    """

    def __init__(
        self,
        img_format: str,
        brightness_delta: float = 0.0,
        contrast_factor: float = 1.0,
        saturation_factor: float = 1.0,
        hue_delta_degrees: float = 0.0,
        contrast_first: bool = True,
    ):
        super().__init__()
        if img_format not in SUPPORTED_IMAGE_FORMATS:
            raise ValueError(
                f"ColorAugSSDTransform supports image formats {SUPPORTED_IMAGE_FORMATS}, got {img_format!r}"
            )
        self._set_attributes(locals())

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        return np.clip(img * self.contrast_factor, 0.0, _MAX_INTENSITY)

    def _saturation_and_hue(self, img: np.ndarray) -> np.ndarray:
        if self.saturation_factor == 1.0 and self.hue_delta_degrees == 0.0:
            return img  # skip the colour-space round trip entirely
        to_hsv, from_hsv = (
            (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if self.img_format == "RGB" else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
        )
        # float32 HSV: H in [0, 360), S and V in [0, 1] for inputs in [0, 1].
        hsv = cv2.cvtColor((img / _MAX_INTENSITY).astype(np.float32), to_hsv)
        hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation_factor, 0.0, 1.0)
        hsv[..., 0] = np.mod(hsv[..., 0] + self.hue_delta_degrees, _FULL_TURN_DEGREES)
        return np.clip(cv2.cvtColor(hsv, from_hsv).astype(np.float64) * _MAX_INTENSITY, 0.0, _MAX_INTENSITY)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 in ``img_format`` -> same shape and dtype, distorted."""
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"ColorAugSSDTransform expects an (H, W, 3) image, got shape {img.shape}")
        if img.dtype != np.uint8:
            raise ValueError(f"ColorAugSSDTransform expects a uint8 image, got {img.dtype}")
        out = img.astype(np.float64)
        if self.brightness_delta != 0.0:
            out = np.clip(out + self.brightness_delta, 0.0, _MAX_INTENSITY)
        if self.contrast_first and self.contrast_factor != 1.0:
            out = self._contrast(out)
        out = self._saturation_and_hue(out)
        if not self.contrast_first and self.contrast_factor != 1.0:
            out = self._contrast(out)
        return np.rint(out).astype(np.uint8)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()  # photometric only: geometry is unchanged


class RandomColorAugSSD(T.Augmentation):
    """Sample a :class:`ColorAugSSDTransform` per image (each distortion with probability 1/2).

    Args:
        img_format: "RGB" or "BGR" (``cfg.INPUT.FORMAT``).
        brightness_delta: brightness offset drawn from [-delta, delta].
        contrast_range, saturation_range: factors drawn uniformly from these ranges.
        hue_delta_degrees: hue rotation drawn from [-delta, delta] degrees.
    """

    def __init__(
        self,
        img_format: str,
        brightness_delta: float = BRIGHTNESS_DELTA,
        contrast_range: tuple[float, float] = CONTRAST_RANGE,
        saturation_range: tuple[float, float] = SATURATION_RANGE,
        hue_delta_degrees: float = HUE_DELTA_DEGREES,
    ):
        super().__init__()
        if img_format not in SUPPORTED_IMAGE_FORMATS:
            raise ValueError(f"RandomColorAugSSD supports image formats {SUPPORTED_IMAGE_FORMATS}, got {img_format!r}")
        self._init(locals())

    @staticmethod
    def _coin() -> bool:
        return bool(np.random.rand() < APPLY_PROBABILITY)

    def get_transform(self, image: np.ndarray) -> ColorAugSSDTransform:
        brightness = self._rand_range(-self.brightness_delta, self.brightness_delta) if self._coin() else 0.0
        contrast_first = self._coin()
        contrast = self._rand_range(*self.contrast_range) if self._coin() else 1.0
        saturation = self._rand_range(*self.saturation_range) if self._coin() else 1.0
        hue = self._rand_range(-self.hue_delta_degrees, self.hue_delta_degrees) if self._coin() else 0.0
        return ColorAugSSDTransform(
            self.img_format,
            brightness_delta=float(brightness),
            contrast_factor=float(contrast),
            saturation_factor=float(saturation),
            hue_delta_degrees=float(hue),
            contrast_first=contrast_first,
        )
