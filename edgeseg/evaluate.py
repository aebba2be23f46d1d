"""Evaluation over a dataset for any predictor (checkpoint, ONNX model, engine).

Torch-free: a predictor is any callable RGB uint8 frame -> (H, W) class ids in
the predictor's label space, so the same loop scores a PyTorch checkpoint, an
fp16/int8 ONNX file or a TensorRT engine, and the numbers are comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from edgeseg.data import open_dataset, spread_indices
from edgeseg.data.base import SegDataset
from edgeseg.labels import IGNORE_INDEX, LabelSpace, cityscapes_to, get_label_space, remap_labels
from edgeseg.metrics import ConfusionMatrix, SegMetrics, boundary_mask

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvalResult:
    metrics: SegMetrics
    confusion: ConfusionMatrix
    samples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=list)
    #: the same scores over the pixels within ``band`` px of a label boundary (`evaluate`)
    band_metrics: SegMetrics | None = None


def prediction_mapping(model_space: LabelSpace, data_space: LabelSpace) -> dict[int, int] | None:
    """How to map predictions into the dataset's classes (None = same space)."""
    if model_space.name == data_space.name:
        return None
    if model_space.name == "cityscapes19":
        return cityscapes_to(data_space)
    raise ValueError(
        f"cannot score a {model_space.name} model on {data_space.name} labels; "
        "train in the dataset's label space or in cityscapes19"
    )


class FrameScorer:
    """Accumulates the confusion matrix of predictions in ``model_space`` against labels in
    ``data_space``, mapping the predictions where the spaces differ; shared by `evaluate`
    and the runtime's online mIoU, so both count the same way."""

    def __init__(self, model_space: LabelSpace | str, data_space: LabelSpace | str) -> None:
        self.model_space = get_label_space(model_space) if isinstance(model_space, str) \
            else model_space
        self.space = get_label_space(data_space) if isinstance(data_space, str) else data_space
        self.mapping = prediction_mapping(self.model_space, self.space)
        # A mapped model can predict a class the dataset lacks (e.g. terrain on CamVid):
        # it lands in an extra "other" column, so it counts as a miss of the true class.
        self.other = self.space.num_classes if self.mapping is not None else None
        self.confusion = ConfusionMatrix(self.space.num_classes + (self.other is not None),
                                         self.space.ignore_index)

    def map_prediction(self, pred: np.ndarray) -> np.ndarray:
        if self.mapping is None:
            return pred
        pred = remap_labels(pred, self.mapping)
        pred[pred == IGNORE_INDEX] = self.other
        return pred

    def update(self, pred: np.ndarray, label: np.ndarray, name: str = "frame") -> np.ndarray:
        """Score one frame; returns the prediction in the dataset's classes."""
        pred = self.map_prediction(pred)
        if pred.shape != label.shape:
            raise ValueError(f"{name}: prediction {pred.shape} vs label {label.shape}")
        self.confusion.update(pred, label)
        return pred

    def metrics(self) -> SegMetrics:
        return metrics_of(self.confusion, self.space)


class PairScorer:
    """A candidate's class maps against a reference's on the same frames: pixel agreement,
    agreement in a ``band``-px band around the reference's boundaries (where quantisation
    errors show first), pooled over all frames, and on labelled frames each model's
    confusion matrix through `FrameScorer`. The one scorer behind `edgeseg compare`, `edgeseg
    bench` and ``build-engine --precision auto``, so they report the same numbers."""

    def __init__(self, model_space: LabelSpace | str | None = None,
                 data_space: LabelSpace | str | None = None, band: int = 3) -> None:
        self.band = band
        self.same = self.pixels = self.band_same = self.band_pixels = 0
        self.frames = self.labelled_frames = 0
        scored = model_space is not None and data_space is not None
        self.reference = FrameScorer(model_space, data_space) if scored else None  # type: ignore[arg-type]
        self.candidate = FrameScorer(model_space, data_space) if scored else None  # type: ignore[arg-type]

    def update(self, reference: np.ndarray, candidate: np.ndarray,
               label: np.ndarray | None = None, name: str = "frame") -> None:
        """Score one frame (class maps in the model's space, at the label's size)."""
        if candidate.shape != reference.shape:
            raise ValueError(f"{name}: prediction {candidate.shape} vs reference "
                             f"{reference.shape}")
        eq = candidate == reference
        self.same += int(eq.sum())
        self.pixels += eq.size
        if self.band:
            edges = boundary_mask(reference, self.band)
            self.band_same += int(eq[edges].sum())
            self.band_pixels += int(edges.sum())
        if label is not None and self.reference is not None and self.candidate is not None:
            self.reference.update(reference, label, name)
            self.candidate.update(candidate, label, name)
            self.labelled_frames += 1
        self.frames += 1

    @property
    def agreement(self) -> float:
        return self.same / max(self.pixels, 1)

    @property
    def boundary_agreement(self) -> float | None:
        """None where the reference predicted no boundary at all."""
        return self.band_same / self.band_pixels if self.band_pixels else None

    @property
    def labelled(self) -> bool:
        return self.labelled_frames > 0

    def metrics(self) -> tuple[SegMetrics, SegMetrics] | None:
        """(reference, candidate) metrics on the labelled frames, or None."""
        if not self.labelled or self.reference is None or self.candidate is None:
            return None
        return self.reference.metrics(), self.candidate.metrics()

    def miou_drop(self) -> float | None:
        """mIoU points the candidate loses against the reference (None: unlabelled)."""
        both = self.metrics()
        if both is None or any(np.isnan(m.miou) for m in both):
            return None
        return 100 * (both[0].miou - both[1].miou)


def agreement(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> float:
    """Fraction of pixels whose class matches over two lists of class maps (`PairScorer`)."""
    scorer = PairScorer(band=0)
    for ref, pred in zip(reference, other, strict=True):
        scorer.update(np.asarray(ref), np.asarray(pred))
    return scorer.agreement


def open_eval_dataset(spec: str, model_space: LabelSpace | str) -> SegDataset:
    """Open ``spec`` for scoring a model of ``model_space``.

    A Cityscapes-19 dataset scored by a subset model (SYNTHIA-16/13, CamVid-11)
    is read in the model's classes; the reverse (a Cityscapes-19 model on
    CamVid) maps the predictions instead (`prediction_mapping`).
    """
    name = model_space if isinstance(model_space, str) else model_space.name
    dataset = open_dataset(spec)
    if dataset.label_space.name == "cityscapes19" and name != "cityscapes19":
        dataset = open_dataset(spec, name)
    return dataset


def evaluate(predict: Predictor, dataset: SegDataset, model_space: LabelSpace | str,
             max_images: int = 0, keep_samples: int = 0, desc: str = "eval",
             progress: bool = True, indices: list[int] | None = None,
             band: int = 0) -> EvalResult:
    """Confusion-matrix metrics of ``predict`` over a labelled ``dataset``.

    ``indices`` restricts the images (DDP ranks evaluate disjoint shards and
    sum their confusion matrices); ``keep_samples`` keeps the first few
    (name, image, prediction, label) tuples for overlay pictures. ``band`` > 0 also
    scores only the pixels within ``band`` px of a label boundary (`boundary_mask` of the
    ground truth; ``band_metrics``): where a blurred or misaligned prediction loses, which
    the whole-frame mIoU dilutes.
    """
    if isinstance(model_space, str):
        model_space = get_label_space(model_space)
    if not dataset.has_labels:
        raise ValueError(f"{dataset.root}: split {dataset.split!r} has no labels to evaluate")
    scorer = FrameScorer(model_space, dataset.label_space)
    edges = FrameScorer(model_space, dataset.label_space) if band > 0 else None
    ignore = dataset.label_space.ignore_index
    if indices is None:
        indices = list(range(len(dataset)))
    if max_images:  # spread over the set, as bench, compare and the gates sample
        indices = [indices[i] for i in spread_indices(len(indices), max_images)]
    samples = []
    for i in tqdm(indices, desc=desc, disable=not progress, leave=False):
        sample = dataset[i]
        label = sample["label"]
        pred = scorer.update(predict(sample["image"]), label, sample["name"])
        if edges is not None:  # the prediction is already in the dataset's classes
            near = boundary_mask(label, band, ignore)
            edges.confusion.update(pred, np.where(near, label, ignore).astype(label.dtype))
        if len(samples) < keep_samples:
            samples.append((sample["name"], sample["image"], pred, label))
    return EvalResult(scorer.metrics(), scorer.confusion, samples,
                      edges.metrics() if edges is not None else None)


def metrics_of(cm: ConfusionMatrix, space: LabelSpace) -> SegMetrics:
    """Summary in ``space``'s classes, dropping the "other" column if there is one."""
    if cm.num_classes == space.num_classes:
        return cm.summary(space.names)
    summary = cm.summary([*space.names, "(other)"])
    per_class = {n: summary.per_class[n] for n in space.names}
    with np.errstate(invalid="ignore"):
        miou = float(np.nanmean(list(per_class.values())))
    return SegMetrics(miou, summary.pixel_acc, per_class, summary.num_pixels,
                      {n: summary.per_class_acc[n] for n in space.names})
