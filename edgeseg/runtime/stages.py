"""The engine stages a frame passes through, and the frame<->engine geometry.

A stream runs an ordered list of stages over `Packet`s. Each stage reads
``packet.frame`` and writes its result back: a `TranslateStage` (an image-to-
image engine, e.g. Mutual-GAN night->day or a relighting net) replaces
``packet.frame`` with the translated frame, the final `SegmentStage` sets
``packet.labels``. So a two-engine chain is ``[TranslateStage(t), SegmentStage(s)]``
and the pipeline does not change; `TranslatedPredictor` is the same chain as a frame
predictor, so ``eval`` and ``bench --translator`` score and time what ``run`` runs. Stages time their own parts (preprocess, h2d, infer, d2h,
postprocess) into ``packet.timings``.

Streaming form: ``submit(packet)`` starts the work and ``collect()`` returns
the oldest packet finished, so a backend that can overlap copies with
inference (TensorRT double buffering) gets two frames in flight.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from edgeseg.contract.metadata import ModelMetadata, TensorSpec
from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import Backend
from edgeseg.runtime.sources import SourceFrame

AspectPolicy = Literal["stretch", "letterbox"]
Box = tuple[int, int, int, int]  # top, left, height, width of the valid region


@dataclass
class Packet:
    """A frame on its way through the pipeline."""

    source: SourceFrame
    frame: np.ndarray  # the image the next stage reads (BGR uint8)
    labels: np.ndarray | None = None  # class ids at the source frame's size
    timings: dict[str, float] = field(default_factory=dict)  # stage -> ms

    @property
    def index(self) -> int:
        return self.source.index


def engine_size(meta: ModelMetadata) -> tuple[int, int] | None:
    """(H, W) the engine takes, or None when height/width are dynamic."""
    spec = meta.input
    shape = spec.shape
    hw = shape[2:4] if spec.format == "float-nchw" else shape[1:3]
    if len(hw) != 2 or any(d is None or d < 0 for d in hw):
        return None
    return int(hw[0]), int(hw[1])


def profile_size(h: int, w: int, spec: TensorSpec) -> tuple[int, int] | None:
    """For a dynamic-shape engine: None if an H x W frame fits the optimisation profile as it
    is, else the nearest (H, W) inside it with the frame's aspect ratio (clamped at the edges)."""
    lo, hi = spec.profile.get("min"), spec.profile.get("max")
    if not lo or not hi:
        return None
    axes = (2, 3) if spec.format == "float-nchw" else (1, 2)
    (lo_h, lo_w), (hi_h, hi_w) = (lo[a] for a in axes), (hi[a] for a in axes)
    if lo_h <= h <= hi_h and lo_w <= w <= hi_w:
        return None
    scale = min(hi_h / h, hi_w / w) if h > hi_h or w > hi_w else max(lo_h / h, lo_w / w)
    return (min(max(round(h * scale), lo_h), hi_h), min(max(round(w * scale), lo_w), hi_w))


def fit_frame(image: np.ndarray, size: tuple[int, int] | None,
              aspect: AspectPolicy = "stretch") -> tuple[np.ndarray, Box]:
    """Resize (stretch) or letterbox ``image`` to ``size`` (H, W); returns the valid box.

    The only frame -> model-input resize in edgeseg (bilinear, as the vehicle runs it):
    calibration, the parity and precision gates, eval, bench and the runtime all call it,
    so int8 ranges and accuracy gates are measured on the pixels the engine will see."""
    h, w = image.shape[:2]
    if size is None or (h, w) == size:
        return image, (0, 0, h, w)
    th, tw = size
    if aspect == "stretch":
        return cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR), (0, 0, th, tw)
    scale = min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas = np.zeros((th, tw, *image.shape[2:]), image.dtype)
    canvas[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh),
                                                      interpolation=cv2.INTER_LINEAR)
    return canvas, (top, left, nh, nw)


def unfit_labels(labels: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Crop the valid box of an engine-sized label map and resize it to ``shape`` (H, W)."""
    top, left, nh, nw = box
    labels = labels[top:top + nh, left:left + nw]
    if labels.shape != shape:
        labels = cv2.resize(labels, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    return labels


def unfit_image(image: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
    top, left, nh, nw = box
    image = image[top:top + nh, left:left + nw]
    if image.shape[:2] != shape:
        image = cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return image


def frame_to_input(frame: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """A BGR uint8 frame as the graph input of ``meta`` (batch of one)."""
    return to_input(frame, meta.input.format, meta.mean, meta.std, meta.input.dtype)


def to_input(frame: np.ndarray, fmt: str, mean: tuple[float, ...] | list[float],
             std: tuple[float, ...] | list[float], dtype: str | None = None) -> np.ndarray:
    """A fitted BGR uint8 frame in input format ``fmt`` (batch of one): the one conversion
    the runtime, the calibrator and every accuracy gate share."""
    if fmt == "uint8-nhwc-bgr":
        return np.ascontiguousarray(frame[None])
    if fmt == "float-nchw":  # normalised exactly as in training
        from edgeseg.data.transforms import to_chw_float

        x = to_chw_float(frame[..., ::-1], mean, std)[None]
        return x.astype(np.dtype(dtype or "float32"), copy=False)
    raise EdgesegError(f"input format {fmt!r} is not known to edgeseg")


def prepare_frame(frame: np.ndarray, size: tuple[int, int] | None, fmt: str,
                  mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float],
                  dtype: str | None = None, aspect: AspectPolicy = "stretch"
                  ) -> tuple[np.ndarray, Box]:
    """A BGR uint8 frame of any size as the model input (batch of one) and its valid box:
    `fit_frame` then `to_input`, so every caller feeds the engine the vehicle's pixels."""
    fitted, box = fit_frame(frame, size, aspect)
    return to_input(fitted, fmt, mean, std, dtype), box


def output_to_labels(out: np.ndarray, kind: str) -> np.ndarray:
    """One image's engine output (labels H x W, or logits/probs C x H x W) -> uint8 ids."""
    if kind in ("logits", "probs"):
        return out.argmax(0).astype(np.uint8)
    return np.asarray(out, np.uint8)


class EngineStage:
    """Common part: an engine, its input size, the geometry policy, submit/collect."""

    name = "engine"

    def __init__(self, backend: Backend, aspect: AspectPolicy = "stretch") -> None:
        self.backend = backend
        self.meta: ModelMetadata = backend.metadata
        self.aspect = aspect
        self.size = engine_size(self.meta)
        self.pending: deque[tuple[Packet, Box]] = deque()

    @property
    def depth(self) -> int:
        return self.backend.max_in_flight

    def target_size(self, frame: np.ndarray) -> tuple[int, int] | None:
        """The engine's fixed size, or per frame for dynamic engines (within the profile)."""
        if self.size is not None:
            return self.size
        return profile_size(frame.shape[0], frame.shape[1], self.backend.input_spec)

    def submit(self, packet: Packet) -> None:
        t0 = time.perf_counter()
        meta = self.meta
        x, box = prepare_frame(packet.frame, self.target_size(packet.frame), meta.input.format,
                               meta.mean, meta.std, meta.input.dtype, self.aspect)
        packet.timings["preprocess"] = packet.timings.get("preprocess", 0.0) + \
            (time.perf_counter() - t0) * 1e3
        self.backend.submit(x)
        self.pending.append((packet, box))

    def collect(self) -> Packet:
        packet, box = self.pending.popleft()
        result = self.backend.collect()
        for stage, ms in result.timings.items():
            key = self.timing_key(stage)
            packet.timings[key] = packet.timings.get(key, 0.0) + ms
        t0 = time.perf_counter()
        self.finish(packet, result.output[0], box)
        packet.timings["postprocess"] = packet.timings.get("postprocess", 0.0) + \
            (time.perf_counter() - t0) * 1e3
        return packet

    def timing_key(self, stage: str) -> str:
        return stage

    def finish(self, packet: Packet, output: np.ndarray, box: Box) -> None:
        raise NotImplementedError

    def process(self, packet: Packet) -> Packet:
        """Synchronous: submit and collect one packet."""
        self.submit(packet)
        return self.collect()


class SegmentStage(EngineStage):
    """Segmentation engine: sets ``packet.labels`` (class ids at the source frame's size)."""

    name = "segment"

    def __init__(self, backend: Backend, aspect: AspectPolicy = "stretch") -> None:
        super().__init__(backend, aspect)
        if self.meta.network not in ("segmenter", ""):
            raise EdgesegError(f"{backend.engine_path or 'model'} is a {self.meta.network}, "
                               "not a segmentation engine; put it before the segmenter "
                               "(--translator)")
        self.kind = backend.output_spec.format or "labels"

    def finish(self, packet: Packet, output: np.ndarray, box: Box) -> None:
        labels = output_to_labels(output, self.kind)
        packet.labels = unfit_labels(labels, box, packet.source.image.shape[:2])


#: metadata ``network`` of the engines a `TranslateStage` runs (uint8 BGR frame in and out):
#: a translator (its own [-1, 1] range inside) or a relighting prenet (the segmenter's range)
IMAGE_NETWORKS = ("translator", "relighting")


def mean_luma(frame: np.ndarray) -> float:
    """Mean BT.601 luma (0-255) of a BGR uint8 frame: the day/dusk cue of `TranslateStage`'s
    gate (CamVid's dusk sequence averages about 60, its day sequences 100-140)."""
    return float(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).mean())


class TranslateStage(EngineStage):
    """Image-to-image engine (uint8 BGR in and out): replaces ``packet.frame``, so the
    segmenter sees the translated frame while the overlay shows the camera frame.

    ``below``: translate only frames whose `mean_luma` is below it, pass the others through
    untouched. A dusk->day translator costs day frames accuracy (Mutual-GAN on CamVid: 43.7
    -> 29.8 day mIoU), so a vehicle that drives through the day gates it on the light;
    ``translated`` / ``passed`` count the frames each way. Without ``below`` the gate the
    engine's metadata records (`ModelMetadata.translate_below`) applies; 256 translates
    every frame."""

    name = "translate"

    def __init__(self, backend: Backend, aspect: AspectPolicy = "stretch",
                 below: float | None = None) -> None:
        super().__init__(backend, aspect)
        #: where ``below`` came from: "flag" (the caller), "metadata" (the engine's recorded
        #: gate, `ModelMetadata.translate_below`) or "" (no gate)
        self.gate_source = "flag" if below is not None else ""
        if below is None and self.meta.translate_below is not None:
            below, self.gate_source = self.meta.translate_below, "metadata"
        if below is not None and not 0 < below <= 256:
            raise EdgesegError(f"{backend.engine_path or 'translator'}: translate-below luma "
                               f"{below:g} ({self.gate_source or 'flag'}): use a value in "
                               "(0, 256]")
        self.below = below
        self.translated = 0
        self.passed = 0
        if (self.meta.network not in IMAGE_NETWORKS
                or backend.output_spec.format != "uint8-nhwc-bgr"):
            raise EdgesegError(f"{backend.engine_path or 'model'}: not an image translator "
                               f"engine (a {self.meta.network or 'model'}; a translator or "
                               "relighting net with a uint8 BGR frame in and out); export one "
                               "from a checkpoint with `edgeseg export CKPT --network NAME -o "
                               "translator.onnx` (NAME: a network of role translator or "
                               "prenet)")

    def timing_key(self, stage: str) -> str:
        return "translate" if stage == "infer" else stage

    def process(self, packet: Packet) -> Packet:
        """Translate ``packet`` (or, gated and bright enough, leave it as it is)."""
        if self.below is not None:
            t0 = time.perf_counter()
            dark = mean_luma(packet.frame) < self.below
            packet.timings["gate"] = (time.perf_counter() - t0) * 1e3
            if not dark:
                self.passed += 1
                return packet
        self.translated += 1
        return self.translate(packet)

    def translate(self, packet: Packet) -> Packet:
        """The engine call alone, whatever the gate (``bench`` times the translator so)."""
        return super().process(packet)

    def finish(self, packet: Packet, output: np.ndarray, box: Box) -> None:
        packet.frame = unfit_image(np.ascontiguousarray(output), box, packet.frame.shape[:2])


class StageChain:
    """Runs stages in order; the last stage is streamed (up to its backend's depth in
    flight), the earlier ones synchronously."""

    def __init__(self, stages: list[EngineStage]) -> None:
        if not stages or not isinstance(stages[-1], SegmentStage):
            raise EdgesegError("a stream needs a segmentation engine as its last stage")
        self.stages = stages
        self.last = stages[-1]

    @property
    def depth(self) -> int:
        return self.last.depth

    def submit(self, packet: Packet) -> None:
        for stage in self.stages[:-1]:
            packet = stage.process(packet)
        self.last.submit(packet)

    def collect(self) -> Packet:
        return self.last.collect()

    @property
    def in_flight(self) -> int:
        return len(self.last.pending)


class TranslatedPredictor:
    """A frame predictor (RGB uint8 -> class ids: an engine's `BackendPredictor` or a
    checkpoint's) behind a translator engine, as ``edgeseg run --translator`` chains them:
    an engine segmenter runs in a `StageChain` [translate, segment], a checkpoint gets the
    translated frame. `edgeseg eval` and `edgeseg bench` score and time translated frames
    through it, so their numbers are those of the stream. Other attributes (label space,
    size, precision, info) are the segmenter's."""

    def __init__(self, translator: TranslateStage, predictor: Any) -> None:
        self.translator = translator
        self.predictor = predictor
        stage = getattr(predictor, "stage", None)
        self.chain = StageChain([translator, stage]) if isinstance(stage, SegmentStage) else None

    def process(self, packet: Packet) -> Packet:
        """``packet.frame`` (BGR) translated, then segmented: sets ``packet.labels`` (at the
        source frame's size) and both stages' ``packet.timings``."""
        if self.chain is not None:
            self.chain.submit(packet)
            return self.chain.collect()
        self.translator.process(packet)
        packet.labels = self.predictor(np.ascontiguousarray(packet.frame[..., ::-1]))
        return packet

    def __call__(self, image: np.ndarray) -> np.ndarray:
        bgr = np.ascontiguousarray(image[..., ::-1])
        return self.process(Packet(SourceFrame(0, bgr, 0.0), bgr)).labels

    def __getattr__(self, name: str) -> Any:
        if name in ("translator", "predictor", "chain"):  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.predictor, name)

    def close(self) -> None:
        try:
            self.translator.backend.close()
        finally:
            self.predictor.close()
