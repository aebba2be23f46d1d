"""Inference backends behind one interface (`Backend`): ONNX Runtime, TensorRT and OpenVINO.

`open_backend(engine)` picks the backend the engine's manifest names. The
backend modules import their libraries lazily, and this package imports neither
module until one is asked for (``from edgeseg.runtime.backends import OrtBackend``
works; so does ``import edgeseg.runtime.backends`` on a machine with only one of
ONNX Runtime, TensorRT and OpenVINO).
"""

from __future__ import annotations

from typing import Any

from edgeseg.runtime.backends.base import (
    Backend,
    BackendUnavailableError,
    InputShapeError,
    backend_class,
    open_backend,
)

__all__ = ["Backend", "BackendUnavailableError", "InputShapeError", "OrtBackend", "OvBackend",
           "TrtBackend", "backend_class", "open_backend"]


def __getattr__(name: str) -> Any:
    if name == "OrtBackend":
        return backend_class("onnxruntime")
    if name == "TrtBackend":
        return backend_class("tensorrt")
    if name == "OvBackend":
        return backend_class("openvino")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
