"""mIoU parity of precision variants against the fp32 reference, with a pass/fail per precision.

INT8 segmentation engines lose 1-10 mIoU in ways nobody sees until deployment
(docs/tensorrt.md): the loss concentrates on object edges and on a few
classes, which a global pixel agreement of 99 % hides. So every variant is
scored on the same frames as the reference, in one pass: mIoU and per-class
IoU against the labels (through the evaluator's `FrameScorer`, so the numbers
match ``edgeseg eval``), pixel agreement with the reference's class map, and
agreement inside a band around the reference's predicted boundaries. A
variant passes when its mIoU loss is within the budget of its precision
(default fp16 0.1, int8 1.0 points; fp32 variants such as an ONNX Runtime
engine of the fp32 file 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edgeseg.bench.targets import Target
from edgeseg.errors import EdgesegError
from edgeseg.metrics import SegMetrics, boundary_mask

#: default budget: mIoU points a variant of each precision may lose against fp32
DEFAULT_MAX_DROP: dict[str, float] = {"fp32": 0.1, "fp16": 0.1, "int8": 1.0}


def parse_max_drop(items: Sequence[str], base: Mapping[str, float] = DEFAULT_MAX_DROP
                   ) -> dict[str, float]:
    """``["int8=0.5", "fp16=0.2"]`` over the defaults; errors name the bad item."""
    out = dict(base)
    for item in items:
        name, sep, value = item.partition("=")
        try:
            points = float(value)
        except ValueError:
            points = float("nan")
        if not sep or not name.strip() or not math.isfinite(points) or points < 0:
            raise EdgesegError(f"--max-drop {item!r}: expected PRECISION=POINTS, e.g. int8=1.0 "
                               "(mIoU points a variant may lose against fp32)")
        out[name.strip().lower()] = points
    return out


@dataclass
class VariantParity:
    """One variant against the reference on one data set."""

    name: str
    precision: str
    pixel_agreement: float
    boundary_agreement: float | None  # None: no boundary in the reference's predictions
    metrics: SegMetrics | None = None  # None: the data has no labels
    miou_drop: float | None = None  # reference mIoU - variant mIoU, points
    iou_delta: dict[str, float | None] = field(default_factory=dict)  # variant - reference
    max_drop: float | None = None  # the budget of this precision (None: none set)
    passed: bool | None = None  # None: nothing to judge (no labels, no budget)

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "n/a"}[self.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision,
                "pixel_agreement": self.pixel_agreement,
                "boundary_agreement": self.boundary_agreement,
                "metrics": self.metrics.to_dict() if self.metrics else None,
                "miou_drop": self.miou_drop, "iou_delta": self.iou_delta,
                "max_drop": self.max_drop, "passed": self.passed}


@dataclass
class ParitySample:
    """A frame kept for the overlay montage: the image, its labels and every prediction."""

    name: str
    image: np.ndarray  # RGB
    label: np.ndarray | None
    predictions: dict[str, np.ndarray]  # target name -> class ids (model space)


@dataclass
class ParityResult:
    data: str
    frames: int
    labelled: bool
    reference: str
    reference_precision: str
    label_space: str
    reference_metrics: SegMetrics | None
    variants: list[VariantParity]
    band: int
    samples: list[ParitySample] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No variant failed its budget (variants without a verdict do not fail)."""
        return all(v.passed is not False for v in self.variants)

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "frames": self.frames, "labelled": self.labelled,
                "reference": self.reference, "reference_precision": self.reference_precision,
                "label_space": self.label_space, "band_px": self.band,
                "reference_metrics": (self.reference_metrics.to_dict()
                                      if self.reference_metrics else None),
                "variants": [v.to_dict() for v in self.variants], "passed": self.passed}


def _spread(n: int, count: int) -> list[int]:
    """``count`` indices evenly over ``range(n)`` (all when count is 0 or >= n)."""
    if count <= 0 or count >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, count).round()})


def iter_frames(spec: str, model_space: str, max_images: int = 0
                ) -> tuple[Iterator[tuple[str, np.ndarray, np.ndarray | None]], int, str | None]:
    """(frames as (name, RGB, label or None), their count, the labels' space or None).

    ``spec`` is a dataset spec (``NAME:ROOT[:SPLIT]``; labelled or not) or a video;
    ``max_images`` picks that many frames spread over the whole set (0 = all).
    """
    if Path(spec).is_file():
        from edgeseg.export.variants import scoring_frames

        images, _ = scoring_frames(spec, max_images or 32, (256, 512))
        frames = ((f"frame{i:05d}", img, None) for i, img in enumerate(images))
        return frames, len(images), None
    from edgeseg.evaluate import open_eval_dataset

    dataset = open_eval_dataset(spec, model_space)
    if len(dataset) == 0:
        raise EdgesegError(f"{spec}: the dataset has no images")
    indices = _spread(len(dataset), max_images)
    labelled = dataset.has_labels

    def gen() -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        for i in indices:
            sample = dataset[i]
            yield sample["name"], sample["image"], sample.get("label") if labelled else None

    return gen(), len(indices), dataset.label_space.name if labelled else None


def check_parity(reference: Target, variants: Sequence[Target], data: str,
                 max_images: int = 0, max_drop: Mapping[str, float] = DEFAULT_MAX_DROP,
                 band: int = 3, keep: int = 3, progress: bool = False) -> ParityResult:
    """Score ``variants`` against ``reference`` on ``data`` in one pass over its frames."""
    from edgeseg.evaluate import FrameScorer

    space = reference.label_space
    for v in variants:
        if v.label_space != space:
            raise EdgesegError(f"{v.name} predicts {v.label_space}, the reference {reference.name}"
                               f" {space}: parity needs the same label space")
    frames, count, data_space = iter_frames(data, space, max_images)
    try:
        scorers = {t.name: FrameScorer(space, data_space)
                   for t in (reference, *variants)} if data_space else {}
    except ValueError as exc:  # a model that cannot be scored on these labels
        raise EdgesegError(f"{data}: {exc}") from None
    same = {v.name: 0 for v in variants}
    band_same = {v.name: 0 for v in variants}
    pixels = band_pixels = 0
    samples: list[ParitySample] = []
    for name, image, label in tqdm(frames, total=count, desc=f"parity {data}",
                                   disable=not progress, leave=False):
        ref = reference.predict(image)
        edges = boundary_mask(ref, band)
        pixels += ref.size
        band_pixels += int(edges.sum())
        preds = {reference.name: ref}
        for v in variants:
            pred = v.predict(image)
            if pred.shape != ref.shape:
                raise EdgesegError(f"{name}: {v.name} predicts {pred.shape}, the reference "
                                   f"{ref.shape}")
            eq = pred == ref
            same[v.name] += int(eq.sum())
            band_same[v.name] += int(eq[edges].sum())
            preds[v.name] = pred
        if label is not None:
            for target_name, pred in preds.items():
                scorers[target_name].update(pred, label, name)
        if len(samples) < keep:
            samples.append(ParitySample(name, image, label, preds))
    if pixels == 0:
        raise EdgesegError(f"{data}: no frames to score")
    ref_metrics = scorers[reference.name].metrics() if scorers else None
    results = []
    for v in variants:
        row = VariantParity(
            v.name, v.precision, same[v.name] / pixels,
            band_same[v.name] / band_pixels if band_pixels else None,
            max_drop=max_drop.get(v.precision))
        if ref_metrics is not None:
            m = scorers[v.name].metrics()
            row.metrics = m
            if not (math.isnan(m.miou) or math.isnan(ref_metrics.miou)):
                row.miou_drop = 100 * (ref_metrics.miou - m.miou)
            row.iou_delta = {
                c: None if math.isnan(m.per_class.get(c, math.nan)) or math.isnan(iou)
                else 100 * (m.per_class[c] - iou)
                for c, iou in ref_metrics.per_class.items()}
            if row.max_drop is not None and row.miou_drop is not None:
                row.passed = row.miou_drop <= row.max_drop + 1e-9
        results.append(row)
    return ParityResult(data, count, ref_metrics is not None, reference.name,
                        reference.precision, space, ref_metrics, results, band, samples)
