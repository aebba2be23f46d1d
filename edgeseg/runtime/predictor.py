"""Frames of any size -> class maps, through any backend (ONNX file or engine).

Adapts a frame to the engine's input contract (size, uint8 BGR NHWC or
normalised float NCHW) and the output back to class ids at the frame's size,
so evaluation, benchmarks and the runtime score every precision and backend
the same way. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edgeseg.data.transforms import to_chw_float
from edgeseg.errors import EdgesegError
from edgeseg.export.metadata import ModelMetadata
from edgeseg.runtime.backends.base import Backend, open_backend

AspectPolicy = Literal["stretch", "letterbox"]


def load_backend(path: str | Path, backend: str = "auto", **options: object) -> Backend:
    """A plain ``.onnx`` file runs in ONNX Runtime directly; anything with a manifest beside
    it (TensorRT plan, optimised ONNX Runtime model) goes through the engine loader."""
    from edgeseg.runtime.manifest import manifest_path

    p = Path(path)
    if p.suffix == ".onnx" and not manifest_path(p).exists():
        from edgeseg.runtime.backends.onnxruntime import OrtBackend

        return OrtBackend.from_onnx(p, **options)
    return open_backend(p, backend, **options)


def frame_to_input(frame: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    """A BGR uint8 frame as the graph input of ``meta`` (batch of one)."""
    fmt = meta.input.format
    if fmt == "uint8-nhwc-bgr":
        return np.ascontiguousarray(frame[None])
    if fmt == "float-nchw":  # normalised exactly as in training
        return to_chw_float(frame[..., ::-1], meta.mean, meta.std)[None]
    raise EdgesegError(f"input format {fmt!r} is not known to edgeseg")


class BackendPredictor:
    """RGB uint8 (H, W, 3) -> uint8 (H, W) class ids of ``metadata.label_space``."""

    def __init__(self, backend: Backend, aspect: AspectPolicy = "stretch") -> None:
        self.backend = backend
        self.meta: ModelMetadata = backend.metadata
        self.spec = backend.input_spec
        self.aspect = aspect
        self.nchw = self.spec.format == "float-nchw"
        shape = self.spec.shape
        hw = shape[2:4] if self.nchw else shape[1:3]
        self.size = None if any(d is None or d < 0 for d in hw) else (int(hw[0]), int(hw[1]))
        self.kind = backend.output_spec.format or "labels"

    @property
    def label_space(self) -> str:
        return self.meta.label_space

    def _fit(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Resize (stretch) or letterbox to the engine size; returns the valid box."""
        h, w = image.shape[:2]
        if self.size is None or (h, w) == self.size:
            return image, (0, 0, h, w)
        th, tw = self.size
        if self.aspect == "stretch":
            return cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR), (0, 0, th, tw)
        scale = min(th / h, tw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (th - nh) // 2, (tw - nw) // 2
        canvas = np.zeros((th, tw, 3), image.dtype)
        canvas[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh),
                                                          interpolation=cv2.INTER_LINEAR)
        return canvas, (top, left, nh, nw)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        fitted, (top, left, nh, nw) = self._fit(image)
        bgr = np.ascontiguousarray(fitted[..., ::-1])
        x = frame_to_input(bgr, self.meta)
        if self.nchw:
            x = x.astype(np.dtype(self.spec.dtype or "float32"), copy=False)
        out = self.backend.infer(x)[0]
        labels = out.argmax(0).astype(np.uint8) if self.kind in ("logits", "probs") else out
        labels = np.asarray(labels, np.uint8)[top:top + nh, left:left + nw]
        if labels.shape != (h, w):
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        return labels
