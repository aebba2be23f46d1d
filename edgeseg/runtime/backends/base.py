"""The one interface every inference backend offers, and the checks they share.

`Backend.load` reads the engine's manifest, compares it with this machine and
verifies the engine's hash *before* the backend library sees the file, so a
wrong engine fails with a message that says what to rebuild instead of a
TensorRT ``None`` or a segfault. Input checks (dtype, rank, static dims,
optimisation-profile ranges) live here once for every backend.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgeseg.contract.manifest import (
    BACKEND_TITLES,
    BackendName,
    EngineManifest,
    manifest_path,
    read_manifest,
    verify_engine_file,
)
from edgeseg.contract.metadata import ModelMetadata, TensorSpec
from edgeseg.errors import EdgesegError
from edgeseg.runtime.compat import MachineInfo, ensure_compatible

BackendChoice = Literal["auto", "tensorrt", "onnxruntime", "openvino"]
#: backend name -> (module, class), imported only when asked for
BACKEND_CLASSES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("edgeseg.runtime.backends.onnxruntime", "OrtBackend"),
    "tensorrt": ("edgeseg.runtime.backends.tensorrt", "TrtBackend"),
    "openvino": ("edgeseg.runtime.backends.openvino", "OvBackend"),
}


class InputShapeError(EdgesegError):
    """Frames whose dtype, layout or size the engine cannot take."""


class BackendUnavailableError(EdgesegError):
    """The backend library (TensorRT, ONNX Runtime, a CUDA binding) is not installed here."""


def describe_shape(shape: Any) -> str:
    return "[" + ",".join("?" if d is None or d < 0 else str(d) for d in shape) + "]"


def check_frames(frames: Any, spec: TensorSpec) -> np.ndarray:
    """``frames`` as a contiguous array the engine takes, or an error that says what is wrong."""
    if not isinstance(frames, np.ndarray):
        raise InputShapeError(f"frames: expected a numpy array, got {type(frames).__name__}")
    hint = " (camera frames as OpenCV reads them)" if spec.format == "uint8-nhwc-bgr" else ""
    if spec.dtype and frames.dtype != np.dtype(spec.dtype):
        raise InputShapeError(f"frames: dtype {frames.dtype}, the engine's input '{spec.name}' "
                              f"takes {spec.dtype} {spec.format}{hint}")
    if len(frames.shape) != len(spec.shape):
        batch = "; add a batch axis: frames[None]" if len(frames.shape) + 1 == len(spec.shape) else ""
        raise InputShapeError(f"frames: shape {describe_shape(frames.shape)} has {frames.ndim} "
                              f"dims, '{spec.name}' is {describe_shape(spec.shape)}{batch}")
    for axis, (got, want) in enumerate(zip(frames.shape, spec.shape)):
        if want is not None and want >= 0 and got != want:
            raise InputShapeError(f"frames: shape {describe_shape(frames.shape)} does not fit "
                                  f"'{spec.name}' {describe_shape(spec.shape)} (axis {axis})")
    lo, hi = spec.profile.get("min"), spec.profile.get("max")
    if lo and hi and any(not a <= g <= b for g, a, b in zip(frames.shape, lo, hi)):
        raise InputShapeError(
            f"frames: shape {describe_shape(frames.shape)} is outside the engine's optimisation "
            f"profile for '{spec.name}': min {describe_shape(lo)} .. max {describe_shape(hi)}; "
            "resize the frames, or rebuild with a wider `shapes:` range in the build profile")
    return np.ascontiguousarray(frames)


@dataclass
class InferResult:
    """One batch's output and where its time went (ms): ``infer`` always; ``h2d`` and ``d2h``
    where the backend can time the copies apart (TensorRT, through CUDA events)."""

    output: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


class Backend(ABC):
    """An engine ready to run: frames (NHWC uint8 BGR for the deploy contract) -> labels/logits.

    `infer` is synchronous. `submit`/`collect` is the streaming form: a backend
    that can overlap work (TensorRT: the next frame's copy during this frame's
    inference; OpenVINO: several asynchronous infer requests) accepts up to
    `max_in_flight` batches before the first `collect`, and `collect` returns them in
    the order they were submitted.
    """

    name: ClassVar[BackendName]
    max_in_flight: ClassVar[int] = 1

    def __init__(self, engine_path: Path | None, manifest: EngineManifest | None,
                 metadata: ModelMetadata, input_spec: TensorSpec, output_spec: TensorSpec) -> None:
        self.engine_path = engine_path
        self.manifest = manifest
        self.metadata = metadata
        self.input_spec = input_spec
        self.output_spec = output_spec
        self._done: deque[InferResult] = deque()

    @classmethod
    def load(cls, engine_path: str | Path, *, onnx_path: str | Path | None = None,
             machine: MachineInfo | None = None, manifest: EngineManifest | None = None,
             verify_hash: bool = True, device: int = 0, **options: Any) -> Backend:
        """Open an engine built by `build-engine`, refusing one that does not fit this machine.

        ``onnx_path`` also checks that the engine was built from that ONNX file;
        ``options`` go to the backend (threads, providers, verbose, ...).
        """
        path = Path(engine_path)
        manifest = manifest or read_manifest(path)
        machine = machine or MachineInfo.detect(cls.name, device, manifest.build.ov_device)
        ensure_compatible(manifest, machine, path, onnx_path)
        if verify_hash:
            verify_engine_file(manifest, path)
        return cls._open(path, manifest, device=device, **options)

    @classmethod
    @abstractmethod
    def _open(cls, engine_path: Path, manifest: EngineManifest, *, device: int,
              **options: Any) -> Backend:
        """Create the backend's session/context for an engine that passed the checks."""

    def infer(self, frames: np.ndarray) -> np.ndarray:
        """Run one batch; returns the output tensor (e.g. uint8 labels N x H x W) as numpy."""
        return self._infer(check_frames(frames, self.input_spec))

    @abstractmethod
    def _infer(self, frames: np.ndarray) -> np.ndarray: ...

    def submit(self, frames: np.ndarray) -> None:
        """Queue a batch; its result comes from the matching `collect` (first in, first out)."""
        frames = check_frames(frames, self.input_spec)
        start = time.perf_counter()
        output = self._infer(frames)
        self._done.append(InferResult(output, {"infer": (time.perf_counter() - start) * 1e3}))

    def collect(self) -> InferResult:
        """The oldest submitted batch's result (waits for it where the backend is asynchronous)."""
        if not self._done:
            raise EdgesegError("collect() without a submitted batch")
        return self._done.popleft()

    @property
    def in_flight(self) -> int:
        return len(self._done)

    @abstractmethod
    def close(self) -> None:
        """Release the session/context and device memory (idempotent)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.engine_path or "<onnx>"
        return (f"{type(self).__name__}({where}, {self.input_spec.name}"
                f"{describe_shape(self.input_spec.shape)} -> {self.output_spec.name}"
                f"{describe_shape(self.output_spec.shape)})")


def backend_class(name: str) -> type[Backend]:
    """The class for backend ``name``, importing only its module."""
    if name not in BACKEND_CLASSES:
        raise EdgesegError(f"unknown backend {name!r}; use one of {list(BACKEND_CLASSES)}")
    module, attr = BACKEND_CLASSES[name]
    return getattr(importlib.import_module(module), attr)


def _article(title: str) -> str:
    return f"{'an' if title[0] in 'AEIOU' else 'a'} {title}"


def open_backend(engine_path: str | Path, backend: BackendChoice = "auto",
                 **options: Any) -> Backend:
    """Open an engine with the backend its manifest names (``auto``) or the one asked for."""
    manifest = read_manifest(engine_path)
    if backend not in ("auto", *BACKEND_CLASSES):
        raise EdgesegError(f"unknown backend {backend!r}; use auto or one of "
                           f"{list(BACKEND_CLASSES)}")
    if backend != "auto" and backend != manifest.backend:
        raise EdgesegError(
            f"{engine_path}: its manifest {manifest_path(engine_path)} says it is "
            f"{_article(BACKEND_TITLES[manifest.backend])} engine, not "
            f"{BACKEND_TITLES[backend]}; "
            f"use --backend {manifest.backend} (or auto), or build one: "
            f"edgeseg build-engine MODEL.onnx --backend {backend}")
    cls = backend_class(manifest.backend)
    return cls.load(engine_path, manifest=manifest, **options)
