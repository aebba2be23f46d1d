"""The JSON manifest beside every engine: part of the engine contract.

A TensorRT plan loads only on the TensorRT version and GPU compute capability
that built it, and the API offers no way to ask before deserialising (a mismatch
is a bare ``None`` or a crash). An ONNX Runtime model optimised at level
``all``/``layout`` carries kernels and layouts for the CPU it was built on. So
`build-engine` writes ``ENGINE.json`` (`manifest_path`) with everything needed to
decide, and every backend reads it and compares it with this machine
(`edgeseg.runtime.compat`) *before* touching the engine, refusing a mismatch with a
message that names both sides and the command that rebuilds the engine.

File names: the manifest is the engine's full name plus ``.json``
(``model.engine`` -> ``model.engine.json``, ``model.ort.onnx`` ->
``model.ort.onnx.json``), so an engine and its manifest sort together and any
engine suffix works. Torch-free and onnx-free: this runs on the vehicle. Written by
``build-engine`` (export), read by the runtime and bench, so it sits below all three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from edgeseg import __version__
from edgeseg.config import ConfigError, from_dict, to_dict
from edgeseg.contract.metadata import ModelMetadata, TensorSpec
from edgeseg.errors import EdgesegError
from edgeseg.fileio import sha256_file

FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".json"
BackendName = Literal["tensorrt", "onnxruntime", "openvino"]
BACKEND_TITLES = {"tensorrt": "TensorRT", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
#: what `build-engine` names an OpenVINO engine: the compiled model (`export_model`) bytes
OPENVINO_SUFFIX = ".ov.blob"
#: ORT levels whose saved model holds layouts/kernels specific to the build CPU
CPU_SPECIFIC_LEVELS = ("layout", "all")


class ManifestError(EdgesegError):
    """An engine without a readable manifest beside it."""


class EngineLoadError(EdgesegError):
    """An engine file that is missing, altered after its build, or rejected by its backend."""


class EngineMismatchError(EdgesegError):
    """An engine built for another machine (backend version, GPU, CPU) or another ONNX file."""

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine is specific to: a GPU (name + compute capability) or a CPU."""

    kind: Literal["gpu", "cpu", "npu"]
    name: str
    compute_capability: str = ""  # gpu: sm_87 (Orin), sm_90 (H100)
    arch: str = ""  # platform.machine(): x86_64, aarch64
    cpu_isa: list[str] = field(default_factory=list)  # cpu: the _ISA_FLAGS present

    def describe(self) -> str:
        if self.kind == "gpu":
            return f"{self.compute_capability} ({self.name})"
        isa = f", {'/'.join(self.cpu_isa)}" if self.cpu_isa else ""
        return f"{self.arch or 'unknown'} CPU ({self.name}{isa})"


@dataclass(frozen=True)
class BuildOptions:
    """The build settings a load check or a user needs to know (None = backend default)."""

    workspace_mb: int | None = None
    opt_level: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    hardware_compatibility: Literal["none", "ampere_plus", "same_compute_capability"] = "none"
    version_compatible: bool = False
    graph_optimization: Literal["basic", "extended", "layout", "all"] | None = None
    threads: int = 0  # ONNX Runtime intra-op / OpenVINO inference threads (0 = one per core)
    # OpenVINO: the device the model was compiled for and the properties it is loaded with
    # (a compiled blob keeps the transformed graph; hint, streams, threads and the precision
    # of the layers outside Q/DQ are applied again at every load, so they are recorded here)
    ov_device: str | None = None  # CPU, GPU, GPU.1, NPU
    performance_hint: Literal["LATENCY", "THROUGHPUT"] | None = None
    streams: int | None = None  # NUM_STREAMS the build resolved (the hint's choice when 0)
    infer_requests: int | None = None  # asynchronous infer requests the runtime keeps in flight
    inference_precision: Literal["f32", "bf16", "f16"] | None = None  # INFERENCE_PRECISION_HINT


#: BuildOptions keys only OpenVINO engines have (left out of other manifests when unset)
OPENVINO_BUILD_KEYS = ("ov_device", "performance_hint", "streams", "infer_requests",
                       "inference_precision")


@dataclass
class EngineManifest:
    backend: BackendName
    backend_version: str
    device: DeviceInfo
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    onnx_sha256: str
    engine_sha256: str
    build_command: str  # the exact command line that rebuilds this engine
    build: BuildOptions = field(default_factory=BuildOptions)
    onnx_path: str = ""  # informational: where the ONNX was on the build machine
    timing_cache_sha256: str | None = None
    calibration_sha256: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # the ONNX's metadata_props
    notes: list[str] = field(default_factory=list)
    #: `--precision auto`: every candidate's latency and accuracy on the build machine
    selection: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""  # UTC ISO 8601
    edgeseg_version: str = __version__
    format_version: int = FORMAT_VERSION

    def describe(self) -> str:
        """E.g. ``TensorRT 10.8.0 on sm_87 (Orin)``."""
        return f"{BACKEND_TITLES[self.backend]} {self.backend_version} on {self.device.describe()}"

    def model_metadata(self, source: str = "engine manifest") -> ModelMetadata:
        return ModelMetadata.from_props(self.metadata, source)

    def to_dict(self) -> dict[str, Any]:
        data = to_dict(self)
        # OpenVINO's build keys only where set: manifests of the other backends stay
        # readable by an edgeseg that predates them (its reader rejects unknown keys)
        for key in OPENVINO_BUILD_KEYS:
            if data["build"].get(key) is None:
                data["build"].pop(key, None)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> EngineManifest:
        if isinstance(data, dict) and data.get("format_version", 0) > FORMAT_VERSION:
            raise ManifestError(
                f"{source}: manifest format {data['format_version']} is newer than this "
                f"edgeseg ({__version__}, format {FORMAT_VERSION}); update edgeseg here")
        try:
            return from_dict(cls, data)
        except ConfigError as exc:
            raise ManifestError(f"{source}: not a valid engine manifest: {exc}") from None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def manifest_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json`` (the full name plus ``.json``)."""
    return Path(str(engine_path) + MANIFEST_SUFFIX)


def guess_backend(engine_path: str | Path) -> BackendName:
    """By suffix, for messages only (the manifest is the authority): .onnx/.ort = ORT,
    .ov.blob/.blob = OpenVINO, anything else TensorRT."""
    suffix = Path(engine_path).suffix
    if suffix in (".onnx", ".ort"):
        return "onnxruntime"
    return "openvino" if suffix == ".blob" else "tensorrt"


def write_manifest(manifest: EngineManifest, engine_path: str | Path) -> Path:
    """Write ``ENGINE.json`` atomically; returns its path."""
    from edgeseg.fileio import write_text  # fileio pulls in OpenCV: build side only

    path = manifest_path(engine_path)
    write_text(path, manifest.to_json())
    return path


def read_manifest(engine_path: str | Path) -> EngineManifest:
    """The manifest beside ``engine_path``; errors name both files and how to rebuild."""
    engine = Path(engine_path)
    path = manifest_path(engine)
    rebuild = (f"edgeseg build-engine MODEL.onnx -o {engine} "
               f"--backend {guess_backend(engine)}")
    if not engine.is_file():
        raise EngineLoadError(f"{engine}: no such engine file; build it with `{rebuild}`")
    if not path.is_file():
        raise ManifestError(
            f"{engine}: its manifest {path} is missing. An engine is only loaded together with "
            f"the manifest `edgeseg build-engine` writes beside it (it says which machine the "
            f"engine fits); copy both files together, or rebuild: `{rebuild}`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc}); rebuild {engine}: `{rebuild}`"
                            ) from None
    return EngineManifest.from_dict(data, str(path))


def verify_engine_file(manifest: EngineManifest, engine_path: str | Path) -> None:
    """Refuse an engine whose bytes are not the ones its manifest describes."""
    digest = sha256_file(engine_path)
    if digest != manifest.engine_sha256:
        raise EngineLoadError(
            f"{engine_path}: does not match its manifest {manifest_path(engine_path)} "
            f"(sha256 {digest[:12]}... != {manifest.engine_sha256[:12]}...): the engine was "
            f"replaced or corrupted after its build. Rebuild: `{manifest.build_command}`")
