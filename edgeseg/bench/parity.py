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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from edgeseg.bench.targets import Target
from edgeseg.errors import EdgesegError
from edgeseg.metrics import SegMetrics, Thresholds
from edgeseg.runtime.frames import open_frames

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


def check_bench_parity(reference: Target, variants: Sequence[Target], data: str,
                       max_images: int = 0, max_drop: Mapping[str, float] = DEFAULT_MAX_DROP,
                       band: int = 3, keep: int = 3, progress: bool = False) -> ParityResult:
    """Score ``variants`` against ``reference`` on ``data`` in one pass over its frames,
    with `PairScorer` (as `edgeseg compare` and ``--precision auto`` score)."""
    from edgeseg.evaluate import FrameScorer, PairScorer

    space = reference.label_space
    for v in variants:
        if v.label_space != space:
            raise EdgesegError(f"{v.name} predicts {v.label_space}, the reference {reference.name}"
                               f" {space}: parity needs the same label space")
    sample = open_frames(data, max_images, model_space=space)
    data_space = sample.label_space
    try:
        ref_scorer = FrameScorer(space, data_space) if data_space else None
        pairs = {v.name: PairScorer(space, data_space, band) for v in variants}
    except ValueError as exc:  # a model that cannot be scored on these labels
        raise EdgesegError(f"{data}: {exc}") from None
    samples: list[ParitySample] = []
    seen = 0
    for frame in tqdm(sample, total=sample.count, desc=f"parity {data}", disable=not progress,
                      leave=False):
        name, image, label = frame.name, frame.image, frame.label
        seen += 1
        ref = reference.predict(image)
        preds = {reference.name: ref}
        if label is not None and ref_scorer is not None:
            ref_scorer.update(ref, label, name)
        for v in variants:
            pred = v.predict(image)
            try:
                pairs[v.name].update(ref, pred, label, name)
            except ValueError as exc:
                raise EdgesegError(f"{v.name}: {exc}") from None
            preds[v.name] = pred
        if len(samples) < keep:
            samples.append(ParitySample(name, image, label, preds))
    if seen == 0:
        raise EdgesegError(f"{data}: no frames to score")
    ref_metrics = ref_scorer.metrics() if ref_scorer is not None else None
    results = []
    for v in variants:
        pair = pairs[v.name]
        row = VariantParity(v.name, v.precision, pair.agreement, pair.boundary_agreement,
                            max_drop=max_drop.get(v.precision))
        both = pair.metrics()
        if ref_metrics is not None and both is not None:
            m = both[1]
            row.metrics = m
            row.miou_drop = pair.miou_drop()
            row.iou_delta = {
                c: None if math.isnan(m.per_class.get(c, math.nan)) or math.isnan(iou)
                else 100 * (m.per_class[c] - iou)
                for c, iou in ref_metrics.per_class.items()}
            if row.max_drop is not None and row.miou_drop is not None:
                row.passed = Thresholds(max_miou_drop=row.max_drop).passes(
                    miou_drop=row.miou_drop)
        results.append(row)
    return ParityResult(data, seen, ref_metrics is not None, reference.name,
                        reference.precision, space, ref_metrics, results, band, samples)
