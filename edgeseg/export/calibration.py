"""Calibration frames for int8: from a dataset spec or a video, shaped like the model's input.

The ranges int8 uses are only as good as the frames they come from, so frames
are prepared exactly as the deployed graph sees them: resized to the model's
input size and in its input format (uint8 NHWC BGR ``frame``, or float NCHW
``image`` normalised with the metadata's mean/std), read from the ONNX file so
a calibration set cannot silently disagree with the model. Dataset frames are
spread evenly over the split (the first N frames of a video sequence are
nearly the same frame); videos are sampled every k-th frame. Torch-free.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx

from edgeseg.contract.metadata import load_onnx, metadata_or_none
from edgeseg.data import DatasetError, spread_samples
from edgeseg.data.transforms import to_chw_float
from edgeseg.errors import EdgesegError

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
        """(H, W, 3) uint8 RGB -> one sample (no batch dim) in this input's format."""
        h, w = rgb.shape[:2]
        if (h, w) != (self.height, self.width):
            shrink = h > self.height or w > self.width  # INTER_AREA: no aliasing when shrinking
            rgb = cv2.resize(rgb, (self.width, self.height),
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if self.format == "uint8-nhwc-bgr":
            return np.ascontiguousarray(rgb[:, :, ::-1])
        return to_chw_float(rgb, self.mean, self.std)


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


def read_video_frames(path: Path, count: int, every: int) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CalibrationError(f"{path}: cannot open as a video (OpenCV/FFmpeg could not read "
                               "it); pass a video file or a dataset spec NAME:ROOT[:SPLIT]")
    try:
        index = taken = 0
        while taken < count:
            ok, bgr = cap.read()
            if not ok:
                break
            if index % every == 0:
                taken += 1
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()


def _read_dataset(spec: str, count: int) -> Iterator[np.ndarray]:
    try:
        samples = spread_samples(spec, count)
    except DatasetError as exc:
        first = str(exc).splitlines()[0].rstrip(". :")
        raise CalibrationError(f"{first}: nothing to calibrate with (check the spec "
                               f"{spec}: NAME:ROOT[:SPLIT])") from None
    return (sample["image"] for sample in samples)


def load_frames(source: str | Path, contract: InputContract, count: int = 64,
                every: int = 10) -> np.ndarray:
    """``count`` calibration inputs from a video file or a dataset spec, as (N, *input shape).

    Each entry is one model input (batch dim = the model's static batch, or 1);
    a source that yields no frame raises `CalibrationError` naming it.
    """
    if count < 1 or every < 1:
        raise CalibrationError(f"calibration frames {count} / every {every}: both must be >= 1")
    path = Path(source)
    if path.is_file():
        frames = read_video_frames(path, count, every)
    elif ":" in str(source):
        frames = _read_dataset(str(source), count)
    elif path.is_dir():
        raise CalibrationError(f"{source}: a folder, not a video file or a dataset spec; "
                               f"name the dataset and split, e.g. camvid:{source}:dusk_train "
                               f"or synthetic:{source}:night_train")
    else:
        raise CalibrationError(f"{source}: neither a video file nor a dataset spec "
                               "NAME:ROOT[:SPLIT] (e.g. camvid:data/camvid:dusk_train)")
    samples = [contract.prepare(rgb) for rgb in frames]
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
