"""Frames of any size -> class maps, through any backend (ONNX file or engine).

Adapts a frame to the engine's input contract (size, uint8 BGR NHWC or
normalised float NCHW) and the output back to class ids at the frame's size,
so evaluation, benchmarks and the runtime score every precision and backend
the same way. Torch-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.export.metadata import ModelMetadata
from edgeseg.runtime.backends.base import Backend, open_backend
from edgeseg.runtime.sources import SourceFrame
from edgeseg.runtime.stages import AspectPolicy, Packet, SegmentStage

__all__ = ["AspectPolicy", "BackendPredictor", "load_backend"]


def load_backend(path: str | Path, backend: str = "auto", **options: object) -> Backend:
    """A plain ``.onnx`` file runs in ONNX Runtime directly; anything with a manifest beside
    it (TensorRT plan, optimised ONNX Runtime model) goes through the engine loader."""
    from edgeseg.runtime.manifest import manifest_path

    p = Path(path)
    if p.suffix == ".onnx" and not manifest_path(p).exists():
        from edgeseg.runtime.backends.onnxruntime import OrtBackend

        return OrtBackend.from_onnx(p, **options)
    return open_backend(p, backend, **options)


class BackendPredictor:
    """RGB uint8 (H, W, 3) -> uint8 (H, W) class ids of ``metadata.label_space``."""

    def __init__(self, backend: Backend, aspect: AspectPolicy = "stretch") -> None:
        self.stage = SegmentStage(backend, aspect)
        self.backend = backend
        self.meta: ModelMetadata = backend.metadata

    @property
    def label_space(self) -> str:
        return self.meta.label_space

    @property
    def size(self) -> tuple[int, int] | None:
        """(H, W) the engine takes; None when dynamic."""
        return self.stage.size

    def __call__(self, image: np.ndarray) -> np.ndarray:
        bgr = np.ascontiguousarray(image[..., ::-1])
        packet = Packet(SourceFrame(0, bgr, 0.0), bgr)
        return self.stage.process(packet).labels
