"""Any model file as one thing to time and score: ONNX file, ONNX Runtime engine, TensorRT
plan or PyTorch checkpoint.

A `Target` offers the two things the benchmark needs, the same way for every
backend: ``predict`` (RGB frame -> class ids at the frame's size, for parity)
and ``runner`` (a function that runs one timed iteration and returns the stage
times the backend can tell apart). ONNX files and engines run through the
runtime's own engine stage (`SegmentStage`), so the numbers are those of the
path a vehicle runs, pre- and post-processing included. A target this machine
cannot run (a TensorRT plan without TensorRT or a GPU, a checkpoint without
PyTorch) raises `TargetSkipped` with the reason: it is reported as skipped,
never given a number.

With a translator engine (``bench --translator``) a `TranslatorTarget` times the
translator alone and a `ChainTarget` per model times and scores the chain
translator -> model, through the runtime's `TranslatedPredictor` (a `StageChain` for
engines): the chain ``edgeseg run --translator`` streams.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.argtypes import Device
from edgeseg.contract.manifest import BACKEND_TITLES
from edgeseg.errors import EdgesegError
from edgeseg.export.predictors import open_predictor
from edgeseg.runtime.backends.base import BackendUnavailableError
from edgeseg.runtime.latency import RunFn, StageClock
from edgeseg.runtime.predictor import BackendPredictor
from edgeseg.runtime.sources import SourceFrame
from edgeseg.runtime.stages import (
    Packet,
    TranslatedPredictor,
    TranslateStage,
    engine_size,
    fit_frame,
    frame_to_input,
    output_to_labels,
    unfit_labels,
)

if TYPE_CHECKING:
    from edgeseg.train.predict import TorchPredictor

class TargetSkipped(EdgesegError):
    """A model this machine cannot run here (no TensorRT/GPU, no PyTorch, batch too large)."""


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1e3


class Target(ABC):
    """A loaded model: what it is (for tables) and how to run it (for timing and scoring)."""

    kind: str  # "torch", "onnxruntime", "tensorrt" or "openvino"

    def __init__(self, path: Path, precision: str, label_space: str,
                 size: tuple[int, int] | None, max_batch: int | None, runs_on: str,
                 stages_note: str) -> None:
        self.path = path
        self.name = path.name
        self.precision = precision
        self.label_space = label_space
        self.size = size  # (H, W) the model runs at; None = the frame's own size
        self.max_batch = max_batch  # None = any batch
        self.runs_on = runs_on  # e.g. "ONNX Runtime 1.31.1, CPUExecutionProvider, 2 threads"
        self.stages_note = stages_note  # what the stage times cover on this backend

    @abstractmethod
    def predict(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> uint8 (H, W) class ids in ``label_space``."""

    @abstractmethod
    def runner(self, frames: Sequence[np.ndarray], batch: int) -> RunFn:
        """A function running iteration i on RGB ``frames`` (cycled), ``batch`` per run."""

    def check_batch(self, batch: int) -> None:
        if batch < 1:
            raise EdgesegError(f"batch {batch}: must be >= 1")
        if self.max_batch is not None and batch > self.max_batch:
            raise TargetSkipped(
                f"{self.name} takes at most {self.max_batch} frame(s) per run "
                f"(its batch size is fixed in the graph); export with --dynamic "
                f"--max-batch {batch} to measure batches")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "kind": self.kind,
                "precision": self.precision, "label_space": self.label_space,
                "size": list(self.size) if self.size else None, "max_batch": self.max_batch,
                "runs_on": self.runs_on, "stages": self.stages_note}

    def close(self) -> None:  # noqa: B027 - a checkpoint has nothing to release
        """Release the engine or model."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _groups(frames: Sequence[np.ndarray], batch: int) -> list[list[np.ndarray]]:
    """``len(frames)`` batches of ``batch`` frames each, cycling through ``frames``."""
    n = len(frames)
    return [[frames[(i * batch + j) % n] for j in range(batch)] for i in range(n)]


def _backend_description(backend: Any, threads: int) -> tuple[str, str, str]:
    """(precision, runs_on, stages note) of an ONNX Runtime or TensorRT backend."""
    meta, manifest = backend.metadata, backend.manifest
    precision = manifest.precision if manifest else meta.precision
    if backend.name == "tensorrt":
        runs_on = manifest.describe() if manifest else "TensorRT"
        note = ("preprocess/postprocess on the CPU; h2d, infer (GPU compute) and d2h timed "
                "on the GPU with CUDA events; end_to_end is the wall clock")
    elif backend.name == "openvino":
        props = getattr(backend, "properties", {})
        where = manifest.describe() if manifest else f"OpenVINO {getattr(backend, 'device', '')}"
        runs_on = (f"{where}, {props.get('PERFORMANCE_HINT', '?')} hint, "
                   f"{props.get('NUM_STREAMS', '?')} stream(s), "
                   f"{props.get('INFERENCE_NUM_THREADS', '?')} threads, "
                   f"{props.get('INFERENCE_PRECISION_HINT', '?')} outside Q/DQ, "
                   f"{backend.max_in_flight} infer requests")
        note = ("end_to_end = preprocess + infer + postprocess; infer is an infer request "
                "(in-graph normalisation and argmax included; on the CPU there are no copies)")
    else:
        providers = ", ".join(getattr(backend, "providers", []) or ["?"])
        version = manifest.backend_version if manifest else _ort_version()
        threads = threads or (manifest.build.threads if manifest else 0)
        runs_on = (f"{BACKEND_TITLES['onnxruntime']} {version}, {providers}, "
                   f"{threads or 'default'} intra-op threads")
        note = ("end_to_end = preprocess + infer + postprocess: ONNX Runtime does not "
                "report copies apart (on the CPU there are none; a GPU provider copies "
                "inside session.run); infer is session.run, in-graph normalisation and "
                "argmax included")
    return precision, runs_on, note


class BackendTarget(Target):
    """An ONNX file or engine, run through the runtime's `SegmentStage` (ORT, TensorRT or
    OpenVINO)."""

    def __init__(self, path: Path, predictor: BackendPredictor, threads: int = 0) -> None:
        backend = predictor.backend
        self.backend = backend
        self.kind = backend.name
        meta = backend.metadata
        first = backend.input_spec.shape[0] if backend.input_spec.shape else None
        max_batch: int | None = int(first) if first is not None and first > 0 else None
        hi = backend.input_spec.profile.get("max")
        if max_batch is None and hi:
            max_batch = int(hi[0])
        precision, runs_on, note = _backend_description(backend, threads)
        super().__init__(path, precision, meta.label_space, engine_size(meta), max_batch,
                         runs_on, note)
        self.predictor = predictor
        self.stage = predictor.stage

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predictor(image)

    def runner(self, frames: Sequence[np.ndarray], batch: int) -> RunFn:
        self.check_batch(batch)
        bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]  # camera frames are BGR
        if batch == 1:
            def run_one(i: int) -> dict[str, float]:
                image = bgr[i % len(bgr)]
                packet = Packet(SourceFrame(i, image, 0.0), image)
                self.stage.process(packet)
                return dict(packet.timings)

            return run_one
        groups = _groups(bgr, batch)
        meta, kind = self.backend.metadata, self.stage.kind

        def run_batch(i: int) -> dict[str, float]:
            group = groups[i % len(groups)]
            t0 = time.perf_counter()
            fitted = [fit_frame(f, self.size) for f in group]
            x = np.concatenate([frame_to_input(f, meta) for f, _ in fitted])
            t1 = time.perf_counter()
            self.backend.submit(x)
            result = self.backend.collect()
            t2 = time.perf_counter()
            for out, (_, box), f in zip(result.output, fitted, group):
                unfit_labels(output_to_labels(out, kind), box, f.shape[:2])
            t3 = time.perf_counter()
            return {"preprocess": _ms(t0, t1), **result.timings, "postprocess": _ms(t2, t3)}

        return run_batch

    def close(self) -> None:
        self.backend.close()


def _ort_version() -> str:
    try:
        import onnxruntime

        return str(onnxruntime.__version__)
    except ImportError:
        return "?"


class _TimedModule:
    """A torch module whose forward calls go through a `StageClock` (other attributes pass)."""

    def __init__(self, module: Any, clock: StageClock) -> None:
        self._module = module
        self._clock = clock

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._clock(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class TorchTarget(Target):
    """A training checkpoint in PyTorch eager mode, fp32: the reference every engine is held
    to. ``size`` resizes frames first, as an engine of that size would."""

    kind = "torch"

    def __init__(self, path: Path, predictor: TorchPredictor) -> None:
        import torch

        self.torch = torch
        self.predictor = predictor
        device = str(predictor.device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else None
        self.model = self.predictor.model
        self.clock = StageClock(self.model, sync)
        self.predictor.model = _TimedModule(self.model, self.clock)  # type: ignore[assignment]
        runs_on = (f"PyTorch {torch.__version__} eager fp32 on {device}, "
                   f"{torch.get_num_threads()} threads")
        note = ("preprocess = tensor conversion and normalisation, infer = the module's forward, "
                "postprocess = argmax and copy to numpy")
        super().__init__(path, "fp32", predictor.label_space, predictor.size, None, runs_on,
                         note)

    @property
    def size(self) -> tuple[int, int] | None:  # type: ignore[override]
        return self.predictor.size

    @size.setter
    def size(self, value: tuple[int, int] | None) -> None:
        self.predictor.size = value

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predictor(image)

    def runner(self, frames: Sequence[np.ndarray], batch: int) -> RunFn:
        self.check_batch(batch)
        clock = self.clock
        if batch == 1:
            def run_one(i: int) -> dict[str, float]:
                t0 = time.perf_counter()
                self.predict(frames[i % len(frames)])
                t1 = time.perf_counter()
                return {"preprocess": _ms(t0, clock.start), "infer": _ms(clock.start, clock.end),
                        "postprocess": _ms(clock.end, t1)}

            return run_one
        torch, p = self.torch, self.predictor
        groups = _groups(frames, batch)

        def run_batch(i: int) -> dict[str, float]:
            group = groups[i % len(groups)]
            t0 = time.perf_counter()
            fitted = [fit_frame(f, self.size) for f in group]
            x = torch.from_numpy(np.stack([f for f, _ in fitted])).to(p.device)
            x = (x.permute(0, 3, 1, 2).float() - p.mean) / p.std  # as TorchPredictor.logits
            with torch.no_grad():
                t1 = time.perf_counter()
                logits = clock(x)
                t2 = time.perf_counter()
            labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
            for lab, (_, box), f in zip(labels, fitted, group):
                unfit_labels(lab, box, f.shape[:2])
            t3 = time.perf_counter()
            return {"preprocess": _ms(t0, t1), "infer": _ms(t1, t2), "postprocess": _ms(t2, t3)}

        return run_batch


class TranslatorTarget(Target):
    """A translator engine timed alone (frame in, translated frame at the frame's size out);
    it predicts no classes, so it has no parity."""

    def __init__(self, path: Path, stage: TranslateStage, threads: int = 0) -> None:
        self.stage = stage
        self.kind = stage.backend.name
        precision, runs_on, note = _backend_description(stage.backend, threads)
        note = ("end_to_end = preprocess + translate (the engine call) + postprocess (the "
                "translated frame back at the frame's size)")
        super().__init__(path, precision, "", stage.size, 1, runs_on, note)

    def predict(self, image: np.ndarray) -> np.ndarray:
        raise EdgesegError(f"{self.name} is an image translator: it predicts no classes")

    def runner(self, frames: Sequence[np.ndarray], batch: int) -> RunFn:
        self.check_batch(batch)
        bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]

        def run_one(i: int) -> dict[str, float]:
            image = bgr[i % len(bgr)]
            packet = Packet(SourceFrame(i, image, 0.0), image)
            self.stage.translate(packet)  # the engine on every frame: its cost, ungated
            return dict(packet.timings)

        return run_one

    def check_batch(self, batch: int) -> None:
        if batch != 1:
            raise TargetSkipped(f"{self.name}: a translator chain runs one frame at a time, "
                                "as `edgeseg run --translator` does")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "role": "translator"}

    def close(self) -> None:
        self.stage.backend.close()


class ChainTarget(Target):
    """``translator -> model``: the model's target behind a translator engine, timed and
    scored through `TranslatedPredictor` (the runtime's chain). Closing it closes the
    model's target, not the translator (shared by every chain)."""

    def __init__(self, translator: TranslatorTarget, inner: Target) -> None:
        self.translator = translator
        self.inner = inner
        self.kind = inner.kind if inner.kind == translator.kind else \
            f"{translator.kind}+{inner.kind}"
        source = inner.predictor  # type: ignore[attr-defined]
        self.chain = TranslatedPredictor(translator.stage, source)
        below, gate = translator.stage.below, ""
        if below is not None:
            origin = ("the translator's recorded gate"
                      if translator.stage.gate_source == "metadata" else "--translate-below")
            gate = (f"; gated as `edgeseg run` gates it ({origin}): frames with mean luma "
                    f"below {below:g} are translated, the others go straight to the model")
        super().__init__(inner.path, inner.precision, inner.label_space, inner.size, 1,
                         f"{translator.name}: {translator.runs_on}; {inner.name}: "
                         f"{inner.runs_on}",
                         "end_to_end = the translator's stages then the model's "
                         "(preprocess/postprocess summed over both, translate = the "
                         "translator's engine call, infer = the model's)" + gate)
        self.name = f"{translator.name}+{inner.name}"

    @property
    def size(self) -> tuple[int, int] | None:  # type: ignore[override]
        return self.inner.size

    @size.setter
    def size(self, value: tuple[int, int] | None) -> None:
        self.inner.size = value

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.chain(image)

    def runner(self, frames: Sequence[np.ndarray], batch: int) -> RunFn:
        self.check_batch(batch)
        bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
        clock = getattr(self.inner, "clock", None)  # a checkpoint: its forward pass

        def run_one(i: int) -> dict[str, float]:
            image = bgr[i % len(bgr)]
            packet = Packet(SourceFrame(i, image, 0.0), image)
            t0 = time.perf_counter()
            self.chain.process(packet)
            timings = dict(packet.timings)
            if self.chain.chain is None and clock is not None:
                t1 = time.perf_counter()
                before = sum(timings.values())
                timings["infer"] = _ms(clock.start, clock.end)
                timings["postprocess"] = timings.get("postprocess", 0.0) + _ms(clock.end, t1)
                timings["preprocess"] = timings.get("preprocess", 0.0) + max(
                    0.0, _ms(t0, clock.start) - before)
            return timings

        return run_one

    def check_batch(self, batch: int) -> None:
        if batch != 1:
            raise TargetSkipped(f"{self.name}: a translator chain runs one frame at a time, "
                                "as `edgeseg run --translator` does")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "role": "chain", "translator": self.translator.name,
                "model": self.inner.name, "translate_below": self.translator.stage.below}


def open_target(path: str | Path, *, threads: int = 0, size: tuple[int, int] | None = None,
                device: Device | str = "auto", cuda_graphs: bool = False) -> Target:
    """Open ``path`` with `open_predictor` (as eval and compare open it) and wrap it for
    timing. Raises `TargetSkipped` for what this machine cannot run, `EdgesegError` for
    what is wrong with the file (an engine built for another machine included)."""
    p = Path(path)
    try:
        predictor = open_predictor(p, device, threads=threads, size=size,
                                   cuda_graphs=cuda_graphs)
    except BackendUnavailableError as exc:
        raise TargetSkipped(str(exc)) from None
    if isinstance(predictor, BackendPredictor):
        return BackendTarget(p, predictor, threads)
    return TorchTarget(p, predictor)  # type: ignore[arg-type]
