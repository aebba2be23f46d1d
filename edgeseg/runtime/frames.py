"""Frames from any spec, evenly spaced: the one reader behind calibration, every accuracy
gate, compare and bench.

A spec is a dataset (``NAME:ROOT[:SPLIT]``, or ``data:NAME:ROOT[:SPLIT]`` as `edgeseg
run` spells it), a video file, an image folder (``images/`` + ``labels/`` give ground
truth), the generator's drive (``synthetic[:DOMAIN[:WxH[:FRAMES[:SEED]]]]``), or None for
synthetic day/night scenes. Files, folders and the drive are read through
`open_source`, so corrupt frames are skipped as the runtime skips them. N frames are
spread evenly over the whole set (the first seconds of a sequence are nearly one
frame), with `edgeseg.data.spread_indices`. Images are RGB uint8 at the source's size:
fitting them to a model is `stages.fit_frame`'s job. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data import spread_indices
from edgeseg.errors import EdgesegError
from edgeseg.runtime.sources import Source, SourceError, SourceFrame, open_source

#: frame size (H, W) of the synthetic scenes used when no spec is given
SYNTHETIC_SIZE = (256, 512)


@dataclass
class Frame:
    """One sampled frame: RGB uint8 image and its label map when the spec has labels."""

    name: str
    image: np.ndarray
    label: np.ndarray | None = None


@dataclass
class FrameSample:
    """Frames of a spec to iterate once; ``count`` is known before the first is read."""

    spec: str
    count: int
    label_space: str | None  # space of Frame.label; None: unlabelled
    frames: Iterable[Frame]

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def load(self) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """(RGB images, labels or None) in memory, for sets small enough to keep."""
        frames = list(self)
        return [f.image for f in frames], [f.label for f in frames]


def is_generator_spec(spec: str) -> bool:
    """``synthetic[:DOMAIN...]`` is the generator's drive; ``synthetic:ROOT:SPLIT`` a dataset."""
    if spec == "synthetic":
        return True
    if not spec.startswith("synthetic:"):
        return False
    from edgeseg.data.synth.domains import DOMAINS

    first = spec.split(":")[1]
    return first == "" or first in DOMAINS


def open_frames(spec: str | None, count: int = 0, *, model_space: str | None = None,
                size: tuple[int, int] = SYNTHETIC_SIZE, seed: int = 0,
                span: int = 0) -> FrameSample:
    """``count`` frames (0: all) spread evenly over ``spec``, with labels where it has them.

    ``model_space`` reads a Cityscapes-19 dataset in a subset model's classes, as `edgeseg
    eval` scores it; ``size`` (H, W) and ``seed`` shape the synthetic scenes used when
    ``spec`` is None; ``span`` > 0 spreads over the first ``span`` frames of a stream only.
    """
    if count < 0:
        raise EdgesegError(f"frames: need a count >= 0, got {count}")
    if not spec:
        return _synthetic_scenes(count or 16, size, seed)
    spec = str(spec)
    path = Path(spec)
    if spec.startswith("data:"):
        return _dataset(spec, spec[len("data:"):], count, model_space)
    if path.exists() or is_generator_spec(spec):
        return _stream(spec, count, model_space, span)
    if ":" in spec:
        return _dataset(spec, spec, count, model_space)
    raise EdgesegError(f"{spec}: neither a video file, an image folder, a dataset spec "
                       "NAME:ROOT[:SPLIT] (e.g. camvid:data/camvid:dusk_train) nor "
                       "synthetic[:DOMAIN]")


def _dataset(spec: str, dataset_spec: str, count: int, model_space: str | None) -> FrameSample:
    from edgeseg.data import open_dataset
    from edgeseg.evaluate import open_eval_dataset

    dataset = (open_eval_dataset(dataset_spec, model_space) if model_space
               else open_dataset(dataset_spec))
    if len(dataset) == 0:
        raise EdgesegError(f"{dataset_spec}: the dataset has no images")
    indices = spread_indices(len(dataset), count)
    labelled = dataset.has_labels

    def frames() -> Iterator[Frame]:
        for i in indices:
            sample = dataset[i]
            yield Frame(str(sample["name"]), sample["image"],
                        sample.get("label") if labelled else None)

    return FrameSample(spec, len(indices), dataset.label_space.name if labelled else None,
                       frames())


def _stream(spec: str, count: int, model_space: str | None, span: int) -> FrameSample:
    source = open_source(spec, model_space=model_space)
    try:
        total = source.frame_count if source.frame_count and source.frame_count > 0 else None
        if total is not None and span > 0:
            total = min(total, span)
        if total is None:  # length unknown until read: keep a thinned list while reading
            kept = _thinned(source, count, span)
            picked = [kept[i] for i in spread_indices(len(kept), count)]
            source.close()
            return _from_list(spec, source, picked)
    except BaseException:
        source.close()
        raise
    wanted = spread_indices(total, count)

    def frames() -> Iterator[Frame]:
        try:
            position, want = 0, iter(wanted)
            target = next(want, None)
            while target is not None:
                frame = source.read()
                if frame is None:
                    return
                if position == target:
                    yield _frame(frame)
                    target = next(want, None)
                position += 1
        finally:
            source.close()

    if not wanted:
        source.close()
        raise SourceError(f"{spec}: no frames to read")
    return FrameSample(spec, len(wanted), source.label_space, frames())


def _thinned(source: Source, count: int, span: int) -> list[Frame]:
    """Every frame of a stream of unknown length, halved whenever more than 2 x ``count``
    are kept (every 2nd, 4th, ... frame), so memory stays bounded and the spread even."""
    kept: list[tuple[int, Frame]] = []
    stride, position = 1, 0
    while span <= 0 or position < span:
        frame = source.read()
        if frame is None:
            break
        if position % stride == 0:
            kept.append((position, _frame(frame)))
        position += 1
        if count and len(kept) > 2 * count:
            stride *= 2
            kept = [(i, f) for i, f in kept if i % stride == 0]
    if not kept:
        raise SourceError(f"{source.spec}: no frames could be read")
    return [f for _, f in kept]


def _frame(frame: SourceFrame) -> Frame:
    return Frame(frame.name or f"frame{frame.index:05d}",
                 cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB), frame.labels)


def _from_list(spec: str, source: Source, frames: list[Frame]) -> FrameSample:
    labelled = source.label_space if all(f.label is not None for f in frames) else None
    return FrameSample(spec, len(frames), labelled, frames)


def _synthetic_scenes(count: int, size: tuple[int, int], seed: int) -> FrameSample:
    """Scenes of the generator at ``size`` (H, W), alternating day and night (the domains
    a UDA model must handle); unlabelled, so they measure agreement, not mIoU."""
    from edgeseg.data.synth import render_scene

    h, w = size
    domains = [("day", "night")[i % 2] for i in range(count)]
    frames = [Frame(f"synthetic{i:03d}-{d}", render_scene(seed, i, (d,), size=(w, h)).images[d])
              for i, d in enumerate(domains)]
    return FrameSample("synthetic scenes", count, None, frames)
