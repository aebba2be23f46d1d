"""Torch-free augmentation on sample dicts (numpy + OpenCV).

A sample holds image-like arrays (``(H, W, 3)`` uint8 RGB: ``image``, ``night``,
``reference``, ...) and label-like arrays (``(H, W)`` class ids: ``label``);
other values pass through. Geometry (scale, crop, flip, resize) is applied
identically to every array so aligned day/night pairs and their label stay
aligned; images use bilinear interpolation and pad with 0, labels nearest and
pad with ignore (255). Labels use ``INTER_NEAREST_EXACT``: plain ``INTER_NEAREST``
samples at pixel corners, not centres, and drifts up to half a pixel from the
bilinear image at non-integer scales. Randomness comes only from the ``np.random.Generator``
passed in, so a (seed, epoch, index) generator reproduces a sample exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from edgeseg.labels import IGNORE_INDEX

Sample = dict[str, Any]
#: (height, width)
Size = tuple[int, int]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_image(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 3


def _is_label(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 2


def _map_arrays(sample: Sample, on_image: Any, on_label: Any) -> Sample:
    """A new sample with ``on_image``/``on_label`` applied to the array values."""
    out = {}
    for key, value in sample.items():
        if _is_image(value):
            value = on_image(value)
        elif _is_label(value):
            value = on_label(value)
        out[key] = value
    return out


def _cv_resize(array: np.ndarray, size: Size, interpolation: int) -> np.ndarray:
    h, w = size
    if array.shape[:2] == (h, w):
        return array
    return cv2.resize(array, (w, h), interpolation=interpolation)


def _shape(sample: Sample) -> Size:
    h, w = sample["image"].shape[:2]
    return h, w


def resize(sample: Sample, size: Size, labels: bool = True) -> Sample:
    """Resize to ``size`` (h, w); ``labels=False`` keeps labels at full resolution
    (evaluation scores at the label's native size)."""
    return _map_arrays(
        sample,
        lambda im: _cv_resize(im, size, cv2.INTER_LINEAR),
        (lambda lb: _cv_resize(lb, size, cv2.INTER_NEAREST_EXACT)) if labels else (lambda lb: lb),
    )


def scale(sample: Sample, factor: float) -> Sample:
    """Resize by ``factor`` relative to the ``image`` size."""
    h, w = _shape(sample)
    return resize(sample, (max(1, round(h * factor)), max(1, round(w * factor))))


def pad_to(sample: Sample, size: Size) -> Sample:
    """Pad bottom/right up to at least ``size``: images with 0, labels with 255."""
    h, w = _shape(sample)
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if not ph and not pw:
        return dict(sample)

    def pad(value: int) -> Any:
        def fn(a: np.ndarray) -> np.ndarray:
            widths = ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2)
            return np.pad(a, widths, constant_values=value)
        return fn

    return _map_arrays(sample, pad(0), pad(IGNORE_INDEX))


def crop(sample: Sample, top: int, left: int, size: Size) -> Sample:
    """The window ``[top:top+h, left:left+w]`` of every array."""
    h, w = size

    def fn(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[top:top + h, left:left + w])

    return _map_arrays(sample, fn, fn)


def hflip(sample: Sample) -> Sample:
    """Mirror every array left-right."""

    def fn(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[:, ::-1])

    return _map_arrays(sample, fn, fn)


def random_scale(sample: Sample, rng: np.random.Generator,
                 scale_range: tuple[float, float]) -> Sample:
    """Scale by a factor drawn uniformly from ``scale_range``."""
    lo, hi = scale_range
    return scale(sample, float(rng.uniform(lo, hi))) if (lo, hi) != (1.0, 1.0) else sample


def random_crop(sample: Sample, rng: np.random.Generator, size: Size) -> Sample:
    """A random ``size`` window, padding first when the sample is smaller."""
    sample = pad_to(sample, size)
    h, w = _shape(sample)
    top = int(rng.integers(0, h - size[0] + 1))
    left = int(rng.integers(0, w - size[1] + 1))
    return crop(sample, top, left, size)


def color_jitter(image: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Random brightness, contrast and saturation, each a factor in [1-amount, 1+amount]."""
    if amount <= 0:
        return image
    b, c, s = rng.uniform(1.0 - amount, 1.0 + amount, size=3)
    img = image.astype(np.float32) * b
    mean = img.mean()
    img = (img - mean) * c + mean
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = (img - grey[..., None]) * s + grey[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def to_chw_float(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 ``(x/255 - mean) / std``.

    ``mean``/``std`` are per RGB channel on the 0..1 scale (torchvision style).
    """
    m = np.asarray(mean, np.float32) * 255.0
    sd = np.asarray(std, np.float32) * 255.0
    out = (image.astype(np.float32) - m) / sd
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _align_to_image(sample: Sample) -> Sample:
    """Bring extra images (e.g. a reference frame of another size) to the ``image``
    size so one geometry fits all; a label of another size is a reader bug."""
    size = _shape(sample)
    out = dict(sample)
    for key, value in sample.items():
        if _is_image(value) and value.shape[:2] != size:
            out[key] = _cv_resize(value, size, cv2.INTER_LINEAR)
        elif _is_label(value) and value.shape != size:
            raise ValueError(
                f"{sample.get('name', '?')}: {key} size {value.shape} differs from image {size}"
            )
    return out


class TrainTransform:
    """Training augmentation: resize, random scale, random crop (padded), flip,
    then colour jitter drawn independently for each image.

    ``crop``/``resize`` are (h, w) or None; ``scale_range`` the factor range;
    ``color_jitter`` the jitter amount (0 disables).
    """

    def __init__(self, crop: Size | None = None, scale_range: tuple[float, float] = (1.0, 1.0),
                 flip: bool = True, color_jitter: float = 0.0, resize: Size | None = None) -> None:
        if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
            raise ValueError(f"scale_range {scale_range}: expected 0 < low <= high")
        self.crop = tuple(crop) if crop else None
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip = flip
        self.color_jitter = color_jitter
        self.resize = tuple(resize) if resize else None

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        out = _align_to_image(sample)
        if self.resize:
            out = resize(out, self.resize)
        out = random_scale(out, rng, self.scale_range)
        if self.crop:
            out = random_crop(out, rng, self.crop)
        if self.flip and rng.random() < 0.5:
            out = hflip(out)
        if self.color_jitter > 0:
            for key, value in out.items():
                if _is_image(value):
                    out[key] = color_jitter(value, rng, self.color_jitter)
        return out

    def __repr__(self) -> str:
        return (f"TrainTransform(crop={self.crop}, scale_range={self.scale_range}, "
                f"flip={self.flip}, color_jitter={self.color_jitter}, resize={self.resize})")
