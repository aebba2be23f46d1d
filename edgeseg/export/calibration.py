"""Calibration frames for int8: from a dataset spec or a video, shaped like the model's input.

The ranges int8 uses are only as good as the frames they come from, so frames
are prepared exactly as the deployed graph sees them: resized to the model's
input size and in its input format (uint8 NHWC BGR ``frame``, or float NCHW
``image`` normalised with the metadata's mean/std), read from the ONNX file so
a calibration set cannot silently disagree with the model, and fitted by the
runtime's own `prepare_frame`. Frames come from `runtime.frames.open_frames`, spread
evenly over the set (the first N frames of a video sequence are nearly the same
frame). Torch-free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeseg.contract.metadata import load_onnx, metadata_or_none
from edgeseg.errors import EdgesegError
from edgeseg.runtime.frames import open_frames
from edgeseg.runtime.stages import prepare_frame

FORMATS = ("uint8-nhwc-bgr", "float-nchw")


class CalibrationError(EdgesegError):
    """Calibration data that is missing, empty or unreadable."""


@dataclass(frozen=True)
class InputContract:
    """What the model's (first) input expects: name, format, batch and spatial size."""

    name: str
    format: str
    batch: int
    height: int
    width: int
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> one sample (no batch dim) in this input's format, fitted
        by the runtime's own `prepare_frame` so the ranges come from the vehicle's pixels."""
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        x, _ = prepare_frame(bgr, (self.height, self.width), self.format, self.mean, self.std)
        return x[0]


def input_contract(model: str | Path | onnx.ModelProto) -> InputContract:
    """Read the input contract from the ONNX graph, completed by its edgeseg metadata.

    Dynamic dims take the metadata profile's ``opt`` shape; a float input needs
    the metadata's mean/std (there is no safe default normalisation).
    """
    proto = load_onnx(model)
    source = model if not isinstance(model, onnx.ModelProto) else "model"
    initializers = {i.name for i in proto.graph.initializer}
    graph_input = next(vi for vi in proto.graph.input if vi.name not in initializers)
    tensor = graph_input.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    meta = metadata_or_none(proto)
    spec = next((t for t in meta.inputs if t.name == graph_input.name), None) if meta else None
    if len(dims) != 4:
        raise CalibrationError(f"{source}: input {graph_input.name!r} has shape {dims}; "
                               "calibration expects an NHWC or NCHW image")
    if spec and spec.format in FORMATS:
        fmt = spec.format
    elif tensor.elem_type == onnx.TensorProto.UINT8 and dims[3] == 3:
        fmt = "uint8-nhwc-bgr"
    elif dims[1] == 3:
        fmt = "float-nchw"
    else:
        raise CalibrationError(f"{source}: cannot tell the layout of input {graph_input.name!r} "
                               f"{dims}; export it with edgeseg metadata")
    if None in dims:
        opt = (spec.profile.get("opt") if spec else None) or []
        if len(opt) != 4:
            raise CalibrationError(f"{source}: input {graph_input.name!r} has dynamic dims "
                                   f"{dims} and no profile 'opt' shape in its metadata")
        dims = [d if d is not None else o for d, o in zip(dims, opt, strict=True)]
    h, w = (dims[1], dims[2]) if fmt == "uint8-nhwc-bgr" else (dims[2], dims[3])
    if fmt == "float-nchw" and meta is None:
        raise CalibrationError(f"{source}: float input without edgeseg metadata: the "
                               "normalisation (mean/std) is unknown")
    norm = (tuple(meta.mean), tuple(meta.std)) if meta else ((0.0,) * 3, (1.0,) * 3)
    return InputContract(graph_input.name, fmt, dims[0], h, w, *norm)


def load_frames(source: str | Path, contract: InputContract, count: int = 64,
                every: int = 10) -> np.ndarray:
    """``count`` calibration inputs from any frame spec (`open_frames`: a dataset spec, a
    video, an image folder, ``synthetic:``), as (N, *input shape).

    Frames are spread evenly over the set; for a stream (video, folder, drive) over its
    first ``count * every`` frames (``every`` 0: the whole stream). Each entry is one model
    input (batch dim = the model's static batch, or 1); a source that yields no frame
    raises `CalibrationError` naming it.
    """
    if count < 1 or every < 0:
        raise CalibrationError(f"calibration frames {count} / every {every}: need frames >= 1 "
                               "and every >= 0")
    try:
        sample = open_frames(str(source), count, span=count * every)
        samples = [contract.prepare(frame.image) for frame in sample]
    except CalibrationError:
        raise
    except EdgesegError as exc:
        first = str(exc).splitlines()[0].rstrip(". :")
        example = (f"camvid:{source}:dusk_train or synthetic:{source}:night_train"
                   if Path(source).is_dir() else "camvid:data/camvid:dusk_train")
        raise CalibrationError(f"{first}: nothing to calibrate with (--calib takes a video, an "
                               "image folder or a dataset spec NAME:ROOT[:SPLIT], e.g. "
                               f"{example})") from None
    batch = max(contract.batch, 1)
    usable = len(samples) // batch * batch
    if usable == 0:
        raise CalibrationError(f"{source}: no calibration frames could be read "
                               f"(got {len(samples)}, the model's batch is {batch})")
    stacked = np.stack(samples[:usable])
    return stacked.reshape(usable // batch, batch, *stacked.shape[1:])


class FrameReader:
    """onnxruntime CalibrationDataReader over prepared inputs; counts and hashes what it yields.

    The count and sha256 go into the calibration cache and the model metadata,
    so an int8 model records which frames its ranges came from.
    """

    def __init__(self, input_name: str, frames: Sequence[np.ndarray] | np.ndarray,
                 source: str = "calibration frames") -> None:
        self.input_name = input_name
        self.frames = frames
        self.source = source
        self.rewind()

    def rewind(self) -> None:
        self._next = 0
        self.count = 0
        self._hash = hashlib.sha256()

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.frames):
            return None
        frame = np.ascontiguousarray(self.frames[self._next])
        self._next += 1
        self.count += 1
        self._hash.update(frame.tobytes())
        return {self.input_name: frame}

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def sha256(self) -> str:
        """Hash of the frames yielded so far (all of them after a calibration pass)."""
        return self._hash.hexdigest()
