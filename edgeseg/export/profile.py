"""The build profile and the types `build_engine` shares with the backend builders.

`build_engine` picks a builder (`ort_builder`, `trt_builder`, `ov_builder`) and each builder
needs the profile, the result type and the progress line; keeping them here lets
the builders import them without importing the module that imports the builders.
Torch-free.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeseg.config import from_dict, load_config, to_dict
from edgeseg.contract.manifest import BuildOptions, DeviceInfo
from edgeseg.contract.metadata import ModelMetadata, TensorSpec
from edgeseg.errors import EdgesegError
from edgeseg.metrics import Thresholds

Precision = Literal["fp32", "fp16", "int8", "auto"]


class EngineBuildError(EdgesegError):
    """A build that failed: unreadable ONNX, parser errors, builder errors, bad options."""


def say(message: str) -> None:
    """Progress and notices go to stderr, one line each, so stdout stays parseable."""
    print(f"build-engine: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the profile


@dataclass(frozen=True)
class ShapeRange:
    """Full input shapes (NHWC for frames) of a TensorRT optimisation profile."""

    min: list[int]
    opt: list[int]
    max: list[int]

    def validate(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError("shapes: min, opt and max need the same number of dims")
        if any(d < 1 for d in self.min):
            raise ValueError("shapes: every dim must be >= 1")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise ValueError("shapes: need min <= opt <= max in every dim")

    def as_profile(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class CalibrationConfig:
    """How the int8 ONNX is (or should be) made: used in hints and by the quantize step."""

    data: str | None = None  # dataset spec NAME:ROOT[:SPLIT] or a video file (quantize --calib)
    frames: int = 64
    #: minmax: onnxruntime's entropy search measured slower and less accurate (export/README.md)
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    #: Q/DQ style: tensorrt (symmetric int8) or onnxruntime (u8 activations); None = the backend's
    flavour: Literal["tensorrt", "onnxruntime"] | None = None


@dataclass(frozen=True)
class ParityConfig:
    """Accuracy gate against the fp32 ONNX (names as in `metrics.Thresholds`)."""

    min_agreement: float = 0.99  # fraction of pixels whose class matches
    max_abs_logit_diff: float | None = None
    max_miou_drop: float = 1.0  # mIoU points, for precision selection
    #: accuracy set for `best`: dataset spec (labelled -> mIoU drop) or video; None = calibration
    data: str | None = None
    frames: int = 32
    iterations: int = 20  # latency samples per candidate

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.min_agreement, self.max_miou_drop, self.max_abs_logit_diff)


@dataclass(frozen=True)
class BuildProfile:
    """A deployment target (export/*.yaml); every key is also a build-engine flag."""

    description: str = ""
    backend: Literal["auto", "tensorrt", "onnxruntime", "openvino"] = "auto"
    precision: Precision | None = None  # None: whatever the ONNX file is
    # TensorRT
    workspace_mb: int = 1024
    opt_level: int = 3
    dla_core: int | None = None
    gpu_fallback: bool = True
    hardware_compatibility: Literal["none", "ampere_plus", "same_compute_capability"] = "none"
    version_compatible: bool = False
    timing_cache: str | None = None
    shapes: ShapeRange | None = None  # profile of the (one) dynamic input
    # ONNX Runtime
    graph_optimization: Literal["basic", "extended", "layout", "all"] = "all"
    threads: int = 0  # intra-op threads (OpenVINO: inference threads), 0 = one per core
    # OpenVINO
    ov_device: str = "CPU"  # CPU; GPU, GPU.N, NPU (Intel hardware, unverified here)
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    streams: int = 0  # NUM_STREAMS; 0 = the hint's choice (LATENCY: 1)
    infer_requests: int = 0  # asynchronous infer requests in flight; 0 = max(2, optimal)
    #: precision of the layers outside the Q/DQ pairs; f32 keeps the ONNX file's numbers
    #: (OpenVINO's CPU default is bf16 where the CPU has AVX512_BF16/AMX)
    inference_precision: Literal["f32", "bf16", "f16"] = "f32"
    # precision conversion and acceptance
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)

    def validate(self) -> None:
        if not 0 <= self.opt_level <= 5:
            raise ValueError("opt_level must be in 0..5 (TensorRT's default is 3)")
        if self.workspace_mb < 1:
            raise ValueError("workspace_mb must be >= 1")
        if self.dla_core is not None and self.dla_core < 0:
            raise ValueError("dla_core must be null or >= 0")
        if self.threads < 0:
            raise ValueError("threads must be >= 0 (0 = one per core)")
        if self.streams < 0 or self.infer_requests < 0:
            raise ValueError("streams and infer_requests must be >= 0 (0 = OpenVINO's choice)")
        base = self.ov_device.split(".")[0]
        if base not in ("CPU", "GPU", "NPU", "AUTO") or (base != self.ov_device
                                                         and base != "GPU"):
            raise ValueError(f"ov_device {self.ov_device!r}: use CPU, GPU, GPU.N, NPU or AUTO "
                             "(OpenVINO device names, upper case)")
        if self.dla_core is not None and self.shapes and self.shapes.min != self.shapes.max:
            raise ValueError("DLA needs static shapes: set shapes min = opt = max")

    def build_options(self, backend: str) -> BuildOptions:
        """What the manifest records for ``backend``."""
        if backend == "tensorrt":
            return BuildOptions(workspace_mb=self.workspace_mb, opt_level=self.opt_level,
                                dla_core=self.dla_core,
                                gpu_fallback=self.gpu_fallback and self.dla_core is not None,
                                hardware_compatibility=self.hardware_compatibility,
                                version_compatible=self.version_compatible)
        if backend == "openvino":
            return BuildOptions(threads=self.threads, ov_device=self.ov_device,
                                performance_hint=self.performance_hint, streams=self.streams,
                                infer_requests=self.infer_requests,
                                inference_precision=self.inference_precision)
        return BuildOptions(graph_optimization=self.graph_optimization, threads=self.threads)


def load_profile(path: str | Path | None, overrides: dict[str, Any] | None = None
                 ) -> BuildProfile:
    """A profile file (or the defaults) with flag values on top, validated as one."""
    base = load_config(BuildProfile, path) if path else BuildProfile()
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return from_dict(BuildProfile, {**to_dict(base), **given}) if given else base


@dataclass
class BuiltEngine:
    """What a backend builder hands back; `build_engine` turns it into the manifest."""

    backend_version: str
    device: DeviceInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    side_files: dict[str, str] = field(default_factory=dict)  # suffix -> text, e.g. layers
    timing_cache: bytes | None = None  # updated cache to save after a successful build
    timing_cache_sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    #: BuildOptions fields the builder resolved on this machine (OpenVINO: streams, requests)
    resolved: dict[str, Any] = field(default_factory=dict)


def verify_engine_io(onnx_path: Path, engine_path: Path, meta: ModelMetadata,
                     profile: BuildProfile, inputs: list[TensorSpec], outputs: list[TensorSpec],
                     run_once: Callable[[Any], Any]) -> None:
    """The check every CPU builder runs on the engine it saved and loaded back: graph I/O
    names equal to the metadata's, then one zero frame through ``run_once`` (static
    dims, else the profile's opt shape) with the declared output dtype."""
    import numpy as np

    if [t.name for t in inputs] != [t.name for t in meta.inputs] or \
            [t.name for t in outputs] != [t.name for t in meta.outputs]:
        raise EngineBuildError(f"{onnx_path}: graph I/O {[t.name for t in inputs]} -> "
                               f"{[t.name for t in outputs]} disagrees with its metadata; "
                               "re-export it")
    spec, declared = inputs[0], meta.input
    if None not in spec.shape:
        shape: list[int] | None = [int(d) for d in spec.shape]
    else:
        opt = profile.shapes.opt if profile.shapes else declared.profile.get("opt")
        shape = list(opt) if opt and len(opt) == len(spec.shape) else None
    if shape is None:
        return
    result = run_once(np.zeros(shape, np.dtype(spec.dtype)))
    if result.dtype != np.dtype(outputs[0].dtype):
        raise EngineBuildError(f"{engine_path}: output {outputs[0].name} is {result.dtype}, "
                               f"the graph declares {outputs[0].dtype}")
    say(f"verified: {spec.name}{shape} -> {outputs[0].name}{list(result.shape)}")
