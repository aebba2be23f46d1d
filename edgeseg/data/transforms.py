"""Torch-free augmentation on sample dicts (numpy + OpenCV).

Every array of a sample has a *kind*, which says how the geometry (resize, scale,
pad, crop, flip) treats it; all spatial kinds get the same geometry, so aligned
day/night pairs, the label and any per-pixel extras stay aligned:

==============  ===================  ====================================================
kind            value                resize/scale, pad, colour jitter
==============  ===================  ====================================================
``image``       (H, W, 3) uint8 RGB  bilinear, pad 0, jittered (each image on its own draw)
``label``       (H, W) int ids       nearest, pad 255 (ignore), never jittered: labels,
                or masks             pseudo-labels, masks
``float_map``   (H, W) float         bilinear, pad 0, never jittered: confidences, weights
``homography``  (3, 3) float         conjugated by every op that moves pixels (see below)
``array``       any shape            passed unchanged (``crop_box``, ``*_matrix``)
==============  ===================  ====================================================

The kind of a key is looked up, never guessed from the array's shape: first in
`SAMPLE_KINDS` (``image``, ``night``, ``reference``, ``day``: image; ``label``,
``pseudo_label``, ``mask``: label; ``confidence``: float_map; ``homography``:
homography; ``crop_box``: array), then by the key's suffix (`SUFFIX_KINDS`: ``*_image``,
``*_label``, ``*_mask``, ``*_confidence``, ``*_weight``, ``*_homography``, ``*_matrix``).
An array under any other key is an error that names it; values that are not arrays (the
sample ``name``, a ``None`` label of unlabelled data) pass through. A spatial array
must have the image's height and width (an extra *image* of another size is
resized to it first).

A homography maps pixel coordinates (x, y; integers at pixel centres) of one image of
the sample to those of ``image``: ``homography`` from ``night``, ``X_homography`` from
``X`` (`homography_source`). Every op that moves pixels is an affine map A of pixel
coordinates (`resize_matrix`: ``x' = (x + 0.5) * w'/w - 0.5`` as ``cv2.resize`` samples;
pad: identity, as it only adds rows/columns at the bottom/right; crop: translation by
(-left, -top); hflip: ``x' = W - 1 - x``), and both images get the same op, so the
matrix becomes ``A · H · A^-1``: after augmentation it still maps the augmented source
image to the augmented ``image``. The source image resized to the ``image`` size
first (an extra image of another size) gives ``H · R^-1`` (R: that resize). The matrix
keeps its float dtype (float64 for anything else).

Labels use ``INTER_NEAREST_EXACT``: plain ``INTER_NEAREST`` samples at pixel corners,
not centres, and drifts up to half a pixel from the bilinear image at non-integer
scales. Randomness comes only from the ``np.random.Generator`` passed in, so a (seed,
epoch, index) generator reproduces a sample exactly.

`TrainTransform` also records the geometry each sample got as ``crop_box``, a float32
array ``(top, left, height, width, scale, flipped)``: the crop window in the image
after ``resize`` and the random scale (``scale`` is the drawn factor: that image is
``round(h * scale) x round(w * scale)`` of the resized ``h x w``); without a crop the
window is the whole scaled image; a window may reach past the image's bottom/right
where the crop padded it; ``flipped`` is 1.0 when the window was then mirrored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from edgeseg.config import LowLight
from edgeseg.labels import IGNORE_INDEX

Sample = dict[str, Any]
#: (height, width)
Size = tuple[int, int]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE, LABEL, FLOAT_MAP, ARRAY = "image", "label", "float_map", "array"
HOMOGRAPHY = "homography"
#: the kinds the geometry applies to
SPATIAL = (IMAGE, LABEL, FLOAT_MAP)
#: the kind of each known sample key (extend it for a new key of a reader or method)
SAMPLE_KINDS: dict[str, str] = {
    "image": IMAGE, "night": IMAGE, "reference": IMAGE, "day": IMAGE,
    "label": LABEL, "pseudo_label": LABEL, "mask": LABEL,
    "confidence": FLOAT_MAP,
    "homography": HOMOGRAPHY, "crop_box": ARRAY,
}
#: the kind of a key not in SAMPLE_KINDS, by its suffix
SUFFIX_KINDS: tuple[tuple[str, str], ...] = (
    ("_image", IMAGE), ("_label", LABEL), ("_mask", LABEL), ("_confidence", FLOAT_MAP),
    ("_weight", FLOAT_MAP), ("_homography", HOMOGRAPHY), ("_matrix", ARRAY),
)
_NDIM = {IMAGE: 3, LABEL: 2, FLOAT_MAP: 2}


def kind_of(key: str, value: Any) -> str | None:
    """The kind of sample value ``value`` under ``key`` (None: not an array, passed through)."""
    if not isinstance(value, np.ndarray):
        return None
    kind = SAMPLE_KINDS.get(key)
    if kind is None:
        kind = next((k for suffix, k in SUFFIX_KINDS if key.endswith(suffix)), None)
    if kind is None:
        raise ValueError(
            f"sample key {key!r} (a {value.shape} array) has no known kind; add it to "
            "edgeseg.data.transforms.SAMPLE_KINDS or name it *_image, *_label, *_mask, "
            "*_confidence, *_weight (per pixel), *_homography (3x3, follows the geometry) or "
            "*_matrix (passed unchanged)")
    if kind == HOMOGRAPHY and value.shape != (3, 3):
        raise ValueError(f"sample key {key!r}: a homography is a 3x3 matrix, got shape "
                         f"{value.shape}")
    if kind in _NDIM and value.ndim != _NDIM[kind]:
        raise ValueError(f"sample key {key!r}: a {kind} needs {_NDIM[kind]} dimensions, got "
                         f"shape {value.shape}")
    return kind


#: the affine map (3x3) of pixel coordinates an op applies to an array of size (h, w)
Affine = Callable[[Size], np.ndarray]


def homography_source(key: str) -> str:
    """The sample key of the image whose pixel coordinates homography ``key`` maps to
    those of ``image``: ``night`` for ``homography``, ``X`` for ``X_homography``."""
    return "night" if key == HOMOGRAPHY else key[: -len("_homography")]


def resize_matrix(src: Size, dst: Size) -> np.ndarray:
    """The pixel-coordinate map of resizing (h, w) ``src`` to ``dst`` as ``cv2.resize``
    samples it (pixel centres: ``x' = (x + 0.5) * w'/w - 0.5``)."""
    sx, sy = dst[1] / src[1], dst[0] / src[0]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def translation_matrix(dx: float, dy: float) -> np.ndarray:
    """The pixel-coordinate map of moving an image by (dx, dy) (a crop: -left, -top)."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def hflip_matrix(width: int) -> np.ndarray:
    """The pixel-coordinate map of mirroring an image ``width`` pixels wide."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def conjugate(matrix: np.ndarray, dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """``dst · matrix · src^-1``: homography ``matrix`` after its source image moved by
    ``src`` and its target image by ``dst``, normalised to ``[2, 2] = 1``, in its own
    float dtype (float64 for anything else)."""
    dtype = matrix.dtype if np.issubdtype(matrix.dtype, np.floating) else np.float64
    out = dst @ matrix.astype(np.float64) @ np.linalg.inv(src)
    if abs(out[2, 2]) > 1e-12:
        out = out / out[2, 2]
    return out.astype(dtype)


def _size_of(sample: Sample, key: str) -> Size:
    """(h, w) of image ``key`` of ``sample``, or of ``image`` when it has no such image."""
    value = sample.get(key)
    if isinstance(value, np.ndarray) and value.ndim >= 2 and key != "image":
        h, w = value.shape[:2]
        return h, w
    return _shape(sample)


def _map_arrays(sample: Sample, fn: Callable[[np.ndarray, str], np.ndarray],
                affine: Affine | None = None) -> Sample:
    """A new sample with ``fn(array, kind)`` applied to every spatial array and, with
    ``affine`` (the op's map of an array of a given size), every homography conjugated."""
    out = {}
    for key, value in sample.items():
        kind = kind_of(key, value)
        if kind in SPATIAL:
            value = fn(value, kind)
        elif kind == HOMOGRAPHY and affine is not None:
            value = conjugate(value, affine(_shape(sample)),
                              affine(_size_of(sample, homography_source(key))))
        out[key] = value
    return out


def _interpolation(kind: str) -> int:
    return cv2.INTER_NEAREST_EXACT if kind == LABEL else cv2.INTER_LINEAR


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

    def fn(a: np.ndarray, kind: str) -> np.ndarray:
        if kind == LABEL and not labels:
            return a
        return _cv_resize(a, size, _interpolation(kind))

    return _map_arrays(sample, fn, lambda shape: resize_matrix(shape, size))


def scaled_size(size: Size, factor: float) -> Size:
    """``size`` (h, w) scaled by ``factor`` as `scale` rounds it."""
    h, w = size
    return max(1, round(h * factor)), max(1, round(w * factor))


def scale(sample: Sample, factor: float) -> Sample:
    """Resize by ``factor`` relative to the ``image`` size."""
    return resize(sample, scaled_size(_shape(sample), factor))


def pad_to(sample: Sample, size: Size) -> Sample:
    """Pad bottom/right up to at least ``size``: labels with 255, images and float maps 0."""
    h, w = _shape(sample)
    ph, pw = max(size[0] - h, 0), max(size[1] - w, 0)
    if not ph and not pw:
        return dict(sample)

    def fn(a: np.ndarray, kind: str) -> np.ndarray:
        widths = ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2)
        return np.pad(a, widths, constant_values=IGNORE_INDEX if kind == LABEL else 0)

    return _map_arrays(sample, fn)  # bottom/right padding moves no pixel: H unchanged


def crop(sample: Sample, top: int, left: int, size: Size) -> Sample:
    """The window ``[top:top+h, left:left+w]`` of every spatial array."""
    h, w = size

    def fn(a: np.ndarray, kind: str) -> np.ndarray:
        return np.ascontiguousarray(a[top:top + h, left:left + w])

    return _map_arrays(sample, fn, lambda shape: translation_matrix(-left, -top))


def hflip(sample: Sample) -> Sample:
    """Mirror every spatial array left-right."""

    def fn(a: np.ndarray, kind: str) -> np.ndarray:
        return np.ascontiguousarray(a[:, ::-1])

    return _map_arrays(sample, fn, lambda shape: hflip_matrix(shape[1]))


def draw_scale(rng: np.random.Generator, scale_range: tuple[float, float]) -> float:
    """A factor drawn uniformly from ``scale_range``; (1, 1) draws nothing and gives 1."""
    lo, hi = scale_range
    return float(rng.uniform(lo, hi)) if (lo, hi) != (1.0, 1.0) else 1.0


def random_scale(sample: Sample, rng: np.random.Generator,
                 scale_range: tuple[float, float]) -> Sample:
    """Scale by a factor drawn uniformly from ``scale_range``."""
    factor = draw_scale(rng, scale_range)
    return scale(sample, factor) if tuple(scale_range) != (1.0, 1.0) else sample


def draw_crop(rng: np.random.Generator, shape: Size, size: Size) -> tuple[int, int]:
    """(top, left) of a random ``size`` window in an image of ``shape`` padded to it."""
    h, w = max(shape[0], size[0]), max(shape[1], size[1])
    top = int(rng.integers(0, h - size[0] + 1))
    left = int(rng.integers(0, w - size[1] + 1))
    return top, left


def random_crop(sample: Sample, rng: np.random.Generator, size: Size) -> Sample:
    """A random ``size`` window, padding first when the sample is smaller."""
    top, left = draw_crop(rng, _shape(sample), size)
    return crop(pad_to(sample, size), top, left, size)


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


def darken(image: np.ndarray, gamma: float, exposure: float, noise: float = 0.0,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """``exposure * 255 * (image / 255) ** gamma`` (+ N(0, noise) with ``rng``), as uint8."""
    img = exposure * 255.0 * np.power(image.astype(np.float32) / 255.0, np.float32(gamma))
    if noise > 0 and rng is not None:
        img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def low_light(image: np.ndarray, rng: np.random.Generator, cfg: LowLight) -> np.ndarray:
    """`LowLight`'s draw for one image: one uniform for ``p``, then gamma, exposure, noise."""
    if cfg.p <= 0 or rng.random() >= cfg.p:
        return image
    gamma, exposure, noise = (rng.uniform(*r) for r in (cfg.gamma, cfg.exposure, cfg.noise))
    return darken(image, gamma, exposure, noise, rng)


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
    size so one geometry fits all; a label or float map of another size is a reader bug.
    A homography from a resized image becomes ``H · R^-1`` (R: that resize; ``image``
    itself never moves here)."""
    size = _shape(sample)
    out = dict(sample)
    moved: dict[str, np.ndarray] = {}
    for key, value in sample.items():
        kind = kind_of(key, value)
        if kind == IMAGE and value.shape[:2] != size:
            out[key] = _cv_resize(value, size, cv2.INTER_LINEAR)
            moved[key] = resize_matrix(value.shape[:2], size)
        elif kind in (LABEL, FLOAT_MAP) and value.shape != size:
            raise ValueError(
                f"{sample.get('name', '?')}: {key} size {value.shape} differs from image {size}"
            )
    for key, value in sample.items():
        source = homography_source(key) if kind_of(key, value) == HOMOGRAPHY else None
        if source in moved:
            out[key] = conjugate(value, np.eye(3), moved[source])
    return out


class TrainTransform:
    """Training augmentation: resize, random scale, random crop (padded), flip,
    then colour jitter drawn independently for each image; records ``crop_box``.

    ``crop``/``resize`` are (h, w) or None; ``scale_range`` the factor range;
    ``color_jitter`` the jitter amount (0 disables); ``low_light`` the dusk/night
    imitation (`LowLight`). The generator is drawn in this order: scale (unless the range
    is (1, 1)), crop top and left (with a crop), flip (with flip), jitter per image in key
    order, then low light per image in key order.
    """

    def __init__(self, crop: Size | None = None, scale_range: tuple[float, float] = (1.0, 1.0),
                 flip: bool = True, color_jitter: float = 0.0, resize: Size | None = None,
                 low_light: LowLight | None = None) -> None:
        if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
            raise ValueError(f"scale_range {scale_range}: expected 0 < low <= high")
        self.crop = tuple(crop) if crop else None
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip = flip
        self.color_jitter = color_jitter
        self.resize = tuple(resize) if resize else None
        self.low_light = low_light if low_light is not None and low_light.p > 0 else None

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        out = _align_to_image(sample)
        if self.resize:
            out = resize(out, self.resize)
        factor = draw_scale(rng, self.scale_range)
        if self.scale_range != (1.0, 1.0):
            out = scale(out, factor)
        top, left = 0, 0
        window = _shape(out)
        if self.crop:
            top, left = draw_crop(rng, window, self.crop)
            window = self.crop
            out = crop(pad_to(out, self.crop), top, left, self.crop)
        flipped = bool(self.flip and rng.random() < 0.5)
        if flipped:
            out = hflip(out)
        if self.color_jitter > 0:
            for key, value in out.items():
                if kind_of(key, value) == IMAGE:
                    out[key] = color_jitter(value, rng, self.color_jitter)
        if self.low_light is not None:
            for key, value in out.items():
                if kind_of(key, value) == IMAGE:
                    out[key] = low_light(value, rng, self.low_light)
        out["crop_box"] = np.array([top, left, window[0], window[1], factor, float(flipped)],
                                   np.float32)
        return out

    def __repr__(self) -> str:
        return (f"TrainTransform(crop={self.crop}, scale_range={self.scale_range}, "
                f"flip={self.flip}, color_jitter={self.color_jitter}, resize={self.resize}, "
                f"low_light={self.low_light})")
