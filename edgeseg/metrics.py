"""Segmentation metrics: confusion matrix, IoU, boundary-band agreement, text tables.

numpy (and cv2 for the boundary band) only, no torch: the vehicle runtime and the
benchmarks import this module to score engine outputs. IoU follows the Cityscapes
evaluator: ground-truth ``ignore_index`` pixels are dropped, a class with
tp + fp + fn == 0 has IoU nan and is left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edgeseg.labels import IGNORE_INDEX


def _as_int_array(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer label array, got dtype {arr.dtype}")
    return arr


def _nan_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with nan where den == 0 (no divide-by-zero warnings)."""
    out = np.full(num.shape, np.nan, np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: Iterable[float]) -> float:
    """Mean over non-nan values; nan (not a warning) when there are none."""
    vals = [v for v in values if not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")


class ConfusionMatrix:
    """Accumulates a (C, C) pixel confusion matrix; rows = ground truth, cols = prediction.

    Kept as raw int64 counts (not per-image scores) so results from many images,
    workers or processes can be merged exactly with ``merge`` / ``+``.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, "
            f"ignore_index={self.ignore_index}, pixels={self.num_pixels})"
        )

    @property
    def num_pixels(self) -> int:
        """Number of evaluated (non-ignored) pixels."""
        return int(self.matrix.sum())

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> ConfusionMatrix:
        """Add (H, W) or (N, H, W) integer prediction / ground-truth maps.

        Pixels whose ground truth is ``ignore_index`` are skipped. Prediction
        values outside ``0..C-1`` and ground-truth values outside ``0..C-1`` (other
        than the ignore index) raise: they mean an unmapped label space, which would
        otherwise silently corrupt the counts.
        """
        pred = _as_int_array(pred, "pred")
        gt = _as_int_array(gt, "gt")
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
        if pred.ndim not in (2, 3):
            raise ValueError(f"expected (H, W) or (N, H, W) label maps, got shape {pred.shape}")
        c = self.num_classes
        if pred.size == 0:
            return self
        pmin, pmax = int(pred.min()), int(pred.max())
        if pmin < 0 or pmax >= c:
            bad = pmax if pmax >= c else pmin
            raise ValueError(
                f"prediction value {bad} is outside 0..{c - 1} (num_classes={c}); "
                "predictions must be class ids of this label space"
            )
        ign = self.ignore_index
        gmin, gmax = int(gt.min()), int(gt.max())
        if 0 <= gmin and gmax < 65536 and not 0 <= ign < c:
            # Fast path (no boolean indexing): count every pixel, ignore rows included,
            # then keep the first C rows. ~4x faster on 2 MP frames.
            idx = gt.astype(np.intp) * c
            idx += pred.astype(np.intp, copy=False)
            counts = np.bincount(idx.ravel(), minlength=max(gmax + 1, c) * c).reshape(-1, c)
            row_hits = counts.sum(1)
            if 0 <= ign <= gmax:
                row_hits[ign] = 0
            bad_rows = np.flatnonzero(row_hits[c:])
            if bad_rows.size:
                self._bad_gt(int(bad_rows[0]) + c)
            self.matrix += counts[:c]
            return self
        valid = gt != ign
        g = gt[valid].astype(np.int64)
        if g.size == 0:
            return self
        gmin, gmax = int(g.min()), int(g.max())
        if gmin < 0 or gmax >= c:
            self._bad_gt(gmax if gmax >= c else gmin)
        idx = g * c + pred[valid].astype(np.int64)
        self.matrix += np.bincount(idx, minlength=c * c).reshape(c, c)
        return self

    def _bad_gt(self, value: int) -> None:
        raise ValueError(
            f"ground-truth value {value} is neither a class id 0..{self.num_classes - 1} nor "
            f"the ignore index {self.ignore_index}; map raw dataset ids to train ids first"
        )

    def _check_compatible(self, other: ConfusionMatrix) -> None:
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"cannot merge ConfusionMatrix with {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge confusion matrices with (num_classes, ignore_index) "
                f"{(self.num_classes, self.ignore_index)} and "
                f"{(other.num_classes, other.ignore_index)}"
            )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (in place) and return self."""
        self._check_compatible(other)
        self.matrix += other.matrix
        return self

    def copy(self) -> ConfusionMatrix:
        out = ConfusionMatrix(self.num_classes, self.ignore_index)
        out.matrix = self.matrix.copy()
        return out

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self._check_compatible(other)
        return self.copy().merge(other)

    # --- scores -----------------------------------------------------------

    def iou_per_class(self) -> np.ndarray:
        """(C,) IoU = tp / (tp + fp + fn); nan for classes absent from gt and pred."""
        m = self.matrix
        tp = np.diag(m)
        denom = m.sum(0) + m.sum(1) - tp
        return _nan_div(tp, denom)

    def miou(self) -> float:
        """Mean IoU over classes with a defined IoU (nan if there are none)."""
        return _nanmean(self.iou_per_class().tolist())

    def pixel_accuracy(self) -> float:
        """Fraction of evaluated pixels predicted correctly (nan if none)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def class_accuracy(self) -> np.ndarray:
        """(C,) per-class recall tp / (tp + fn); nan for classes absent from gt."""
        return _nan_div(np.diag(self.matrix), self.matrix.sum(1))

    def summary(self, names: Sequence[str] | None = None) -> SegMetrics:
        """Freeze the current counts into a JSON-friendly ``SegMetrics``."""
        if names is None:
            names = [f"class_{i}" for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        iou = self.iou_per_class()
        return SegMetrics(
            miou=self.miou(),
            pixel_acc=self.pixel_accuracy(),
            per_class={str(n): float(v) for n, v in zip(names, iou)},
            num_pixels=self.num_pixels,
            per_class_acc={str(n): float(v) for n, v in zip(names, self.class_accuracy())},
        )


@dataclass(frozen=True)
class SegMetrics:
    """A finished evaluation: fractions in 0..1 (nan = undefined), pixel count.

    ``per_class`` is IoU; ``per_class_acc`` is per-class accuracy (recall, SegNet's "class
    average accuracy" before the mean). The two tell a model that finds a thin class but
    paints it over its neighbours (high accuracy, low IoU) from one that misses it.
    """

    miou: float
    pixel_acc: float
    per_class: dict[str, float] = field(default_factory=dict)
    num_pixels: int = 0
    per_class_acc: dict[str, float] = field(default_factory=dict)

    @property
    def mean_class_acc(self) -> float:
        """Mean per-class accuracy (mAcc) over classes present in the ground truth."""
        return _nanmean(list(self.per_class_acc.values()))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``write_json``; nan becomes None (strict JSON has no NaN)."""

        def f(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "miou": f(self.miou),
            "pixel_acc": f(self.pixel_acc),
            "per_class": {k: f(v) for k, v in self.per_class.items()},
            "num_pixels": int(self.num_pixels),
            "mean_class_acc": f(self.mean_class_acc),
            "per_class_acc": {k: f(v) for k, v in self.per_class_acc.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegMetrics:
        """Inverse of ``to_dict`` (None -> nan), for reading saved reports."""

        def f(v: float | None) -> float:
            return float("nan") if v is None else float(v)

        return cls(
            miou=f(d["miou"]),
            pixel_acc=f(d["pixel_acc"]),
            per_class={k: f(v) for k, v in d.get("per_class", {}).items()},
            num_pixels=int(d.get("num_pixels", 0)),
            per_class_acc={k: f(v) for k, v in d.get("per_class_acc", {}).items()},
        )


# --- boundary band -------------------------------------------------------------


def boundary_mask(
    labels: np.ndarray, width: int = 3, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Boolean mask of pixels within ``width`` px (Chebyshev) of a class boundary.

    A pixel is in the band when its (2*width+1)^2 window holds two different valid
    classes, so a straight edge gives a band ``width`` px deep on each side.
    Ignore pixels are never in the band and never create a boundary (an unlabelled
    strip is not an object edge). Errors (quantisation, resizing) concentrate at
    boundaries, which a global score dilutes; this band isolates them.
    Accepts (H, W) or (N, H, W).
    """
    labels = _as_int_array(labels, "labels")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if labels.ndim == 3:
        return np.stack([boundary_mask(x, width, ignore_index) for x in labels])
    if labels.ndim != 2:
        raise ValueError(f"expected (H, W) or (N, H, W) labels, got shape {labels.shape}")
    ignore = labels == ignore_index
    if labels.size and int(labels[~ignore].max(initial=0)) > 253:
        raise ValueError("boundary_mask supports class ids 0..253")
    shifted = labels.astype(np.int16) + 1  # 1..254; 0 and 255 are free as sentinels
    lo = np.where(ignore, 0, shifted).astype(np.uint8)  # ignore never wins a max
    hi = np.where(ignore, 255, shifted).astype(np.uint8)  # ignore never wins a min
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    wmax = cv2.dilate(lo, kernel, borderType=cv2.BORDER_REPLICATE)
    wmin = cv2.erode(hi, kernel, borderType=cv2.BORDER_REPLICATE)
    return (wmax != wmin) & (wmax != 0) & (wmin != 255) & ~ignore


# --- text tables ----------------------------------------------------------------


def _pct(v: float, width: int = 7) -> str:
    return f"{'n/a':>{width}}" if math.isnan(v) else f"{100.0 * v:>{width}.2f}"


def _delta(a: float, b: float, width: int = 8) -> str:
    if math.isnan(a) or math.isnan(b):
        return f"{'n/a':>{width}}"
    return f"{100.0 * (b - a):>+{width}.2f}"


def format_table(summary: SegMetrics, title: str = "") -> str:
    """Fixed-width per-class table (percent): IoU and accuracy (recall) per class, then the
    mIoU / mAcc line and pixel accuracy."""
    name_w = max([len("pixel accuracy"), *(len(n) for n in summary.per_class)])
    rule = "-" * (name_w + 18)
    nan = float("nan")
    lines = [title] if title else []
    lines += [f"{'class':<{name_w}}  {'IoU %':>7}  {'acc %':>7}", rule]
    lines += [f"{n:<{name_w}}  {_pct(v)}  {_pct(summary.per_class_acc.get(n, nan))}"
              for n, v in summary.per_class.items()]
    lines += [
        rule,
        f"{'mIoU / mAcc':<{name_w}}  {_pct(summary.miou)}  {_pct(summary.mean_class_acc)}",
        f"{'pixel accuracy':<{name_w}}  {_pct(summary.pixel_acc)}",
        f"{'pixels':<{name_w}}  {summary.num_pixels:>7,}",
    ]
    return "\n".join(lines)


def compare_summaries(
    a: SegMetrics,
    b: SegMetrics,
    a_name: str = "A",
    b_name: str = "B",
    title: str = "",
) -> str:
    """Side-by-side per-class IoU of two results with deltas (b - a, IoU points).

    Classes are the union in ``a``'s order; a class missing from one side shows
    n/a. The last line states the mIoU gap, e.g. the day/night domain gap or the
    fp32/int8 quantisation loss.
    """
    names = list(a.per_class) + [n for n in b.per_class if n not in a.per_class]
    name_w = max([len("pixel accuracy"), *(len(n) for n in names)])
    col_w = max(7, len(a_name), len(b_name))
    nan = float("nan")

    def row(label: str, va: float, vb: float) -> str:
        return f"{label:<{name_w}}  {_pct(va, col_w)}  {_pct(vb, col_w)}  {_delta(va, vb)}"

    header = f"{'class':<{name_w}}  {a_name:>{col_w}}  {b_name:>{col_w}}  {'delta':>8}"
    rule = "-" * len(header)
    lines = [title] if title else []
    lines += [header, rule]
    lines += [row(n, a.per_class.get(n, nan), b.per_class.get(n, nan)) for n in names]
    lines += [
        rule,
        row("mIoU", a.miou, b.miou),
        row("pixel accuracy", a.pixel_acc, b.pixel_acc),
        f"mIoU gap ({b_name} - {a_name}): {_delta(a.miou, b.miou).strip()} points",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Thresholds:
    """The named pass criteria of every accuracy gate (export parity, ``--precision auto``,
    compare, bench), printed by each command that gates; None leaves a criterion out."""

    min_agreement: float | None = None  # fraction of pixels whose class matches the reference
    max_miou_drop: float | None = None  # mIoU points lost against the reference
    max_abs_logit_diff: float | None = None  # largest |logit difference| anywhere

    def passes(self, agreement: float | None = None, miou_drop: float | None = None,
               max_abs_logit_diff: float | None = None) -> bool:
        """Every criterion that is set and measured holds (an unmeasured one, e.g. mIoU on
        unlabelled frames, does not fail); a NaN measurement fails."""
        checks = ((self.min_agreement, agreement, lambda t, v: v >= t),
                  (self.max_miou_drop, miou_drop, lambda t, v: v <= t + 1e-9),
                  (self.max_abs_logit_diff, max_abs_logit_diff, lambda t, v: v <= t))
        return all(check(t, v) for t, v, check in checks if t is not None and v is not None)

    def describe(self) -> str:
        parts = []
        if self.min_agreement is not None:
            parts.append(f"agreement >= {100 * self.min_agreement:g}%")
        if self.max_miou_drop is not None:
            parts.append(f"mIoU drop <= {self.max_miou_drop:g}")
        if self.max_abs_logit_diff is not None:
            parts.append(f"max |dlogit| <= {self.max_abs_logit_diff:.0e}")
        return ", ".join(parts) or "no thresholds"


# --- image fidelity (image networks: translator, relighting) ----------------------------------

#: SSIM as Wang, Bovik, Sheikh & Simoncelli (2004) define it: an 11x11 Gaussian window of
#: sigma 1.5, K1 = 0.01, K2 = 0.03, statistics over the windows that lie inside the image
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _image_pair(a: Any, b: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"{what}: images of shape {x.shape} and {y.shape}; compare images "
                         "of one size")
    if x.size == 0:
        raise ValueError(f"{what}: empty images")
    return x.astype(np.float64), y.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(peak^2 / MSE), the MSE over every value of
    every channel; ``inf`` for identical images (no noise at all, not a large number that
    would bias a mean)."""
    x, y = _image_pair(a, b, "psnr")
    mse = float(np.mean(np.square(x - y)))
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def _ssim_plane(x: np.ndarray, y: np.ndarray, peak: float) -> float:
    h, w = x.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim: {w}x{h} (WxH) images are smaller than its {SSIM_WINDOW}x"
                         f"{SSIM_WINDOW} window")
    g = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA, cv2.CV_64F)
    r = SSIM_WINDOW // 2

    def mean(z: np.ndarray) -> np.ndarray:  # separable, so direct sums: no DFT rounding
        return cv2.sepFilter2D(z, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)[r:h - r,
                                                                                   r:w - r]

    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx * mx, mean(y * y) - my * my, mean(x * y) - mx * my
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean structural similarity (Wang et al. 2004; `SSIM_WINDOW`, `SSIM_SIGMA`, `SSIM_K1`,
    `SSIM_K2`) of two (H, W) images, or of (H, W, C) images as the mean over channels: per
    channel, so a colour shift shows (a luma SSIM would hide it) and BGR and RGB score the
    same. 1 for identical images; sides must be >= the 11 px window."""
    x, y = _image_pair(a, b, "ssim")
    if x.ndim == 2:
        return _ssim_plane(x, y, peak)
    if x.ndim != 3:
        raise ValueError(f"ssim: expected (H, W) or (H, W, C) images, got shape {x.shape}")
    return float(np.mean([_ssim_plane(x[..., c], y[..., c], peak) for c in range(x.shape[2])]))
