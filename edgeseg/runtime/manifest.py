"""The JSON manifest beside every engine, and the check that an engine fits this machine.

A TensorRT plan loads only on the TensorRT version and GPU compute capability
that built it, and the API offers no way to ask before deserialising (a mismatch
is a bare ``None`` or a crash). An ONNX Runtime model optimised at level
``all``/``layout`` carries kernels and layouts for the CPU it was built on. So
`build-engine` writes ``ENGINE.json`` (`manifest_path`) with everything needed to
decide, and every backend reads it and compares it with `MachineInfo.detect`
*before* touching the engine, refusing a mismatch with a message that names both
sides and the command that rebuilds the engine.

File names: the manifest is the engine's full name plus ``.json``
(``model.engine`` -> ``model.engine.json``, ``model.ort.onnx`` ->
``model.ort.onnx.json``), so an engine and its manifest sort together and any
engine suffix works. Torch-free and onnx-free: this runs on the vehicle.
"""

from __future__ import annotations

import json
import logging
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from edgeseg import __version__
from edgeseg.config import ConfigError, from_dict, to_dict
from edgeseg.errors import EdgesegError
from edgeseg.export.metadata import ModelMetadata, TensorSpec
from edgeseg.fileio import sha256_file

logger = logging.getLogger("edgeseg.runtime")

FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".json"
BackendName = Literal["tensorrt", "onnxruntime"]
BACKEND_TITLES = {"tensorrt": "TensorRT", "onnxruntime": "ONNX Runtime"}
#: ORT levels whose saved model holds layouts/kernels specific to the build CPU
CPU_SPECIFIC_LEVELS = ("layout", "all")
#: CPU features that change which kernels/layouts ONNX Runtime chooses (NCHWc block size, VNNI)
_ISA_FLAGS = frozenset({
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",  # x86_64 (/proc/cpuinfo flags)
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2",  # aarch64 (Features)
})


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

    kind: Literal["gpu", "cpu"]
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
    threads: int = 0  # ONNX Runtime intra-op threads (0 = one per core)


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
    #: `--precision best`: every candidate's latency and accuracy on the build machine
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
        return to_dict(self)

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
    """By suffix, for messages only (the manifest is the authority): .onnx/.ort = ORT."""
    return "onnxruntime" if Path(engine_path).suffix in (".onnx", ".ort") else "tensorrt"


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


# ------------------------------------------------------------------ this machine


def _cpu_device() -> DeviceInfo:
    name, flags = "", []
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = (s.strip() for s in line.partition(":"))
            if key in ("model name", "Model", "Hardware") and not name:
                name = value
            elif key in ("flags", "Features") and not flags:
                flags = value.split()
    except OSError:
        pass
    if not name:  # Jetson: /proc/cpuinfo names no model; the device tree names the board
        try:
            name = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00 \n")
        except OSError:
            name = platform.processor()
    return DeviceInfo("cpu", name or platform.machine(), arch=platform.machine(),
                      cpu_isa=sorted(_ISA_FLAGS.intersection(flags)))


def _gpu_device(index: int) -> tuple[DeviceInfo | None, str]:
    from edgeseg.runtime.backends.cuda_memory import CudaError, CudaUnavailableError, find_gpu

    try:
        gpu = find_gpu(index)
    except (CudaUnavailableError, CudaError) as exc:
        return None, str(exc)
    return DeviceInfo("gpu", gpu.name, gpu.compute_capability, platform.machine()), ""


def _backend_version(backend: str) -> tuple[str | None, str]:
    module = "tensorrt" if backend == "tensorrt" else "onnxruntime"
    try:
        return str(__import__(module).__version__), ""
    except Exception as exc:  # ImportError, or a wheel whose shared libraries are missing
        return None, f"{BACKEND_TITLES[backend]} is not installed here ({exc})"


@dataclass(frozen=True)
class MachineInfo:
    """The backend version and device of the machine that is about to load an engine."""

    backend: BackendName
    backend_version: str | None  # None: not installed
    device: DeviceInfo | None  # None: no CUDA GPU visible (TensorRT)
    note: str = ""  # why version/device is None

    @classmethod
    def detect(cls, backend: BackendName, device_index: int = 0) -> MachineInfo:
        """Ask the installed libraries; never raises (what is missing goes into ``note``)."""
        if backend not in BACKEND_TITLES:
            raise EdgesegError(f"unknown backend {backend!r}; use one of {list(BACKEND_TITLES)}")
        version, note = _backend_version(backend)
        if backend == "tensorrt":
            device, gpu_note = _gpu_device(device_index)
            note = "; ".join(n for n in (note, gpu_note) if n)
        else:
            device = _cpu_device()
        return cls(backend, version, device, note)

    def describe(self) -> str:
        title = BACKEND_TITLES[self.backend]
        version = f"{title} {self.backend_version}" if self.backend_version else f"no {title}"
        device = self.device.describe() if self.device else "no CUDA GPU"
        return f"{version} on {device}"


def _version_tuple(text: str, parts: int = 3) -> tuple[int, ...]:
    numbers = [int(n) for n in re.findall(r"\d+", text)[:parts]]
    return tuple(numbers + [0] * (parts - len(numbers)))


def _sm(cc: str) -> int:
    digits = re.sub(r"\D", "", cc)
    return int(digits) if digits else 0


def _compare_tensorrt(m: EngineManifest, machine: MachineInfo) -> tuple[list[str], list[str]]:
    errors, warnings = [], []
    built, here = _version_tuple(m.backend_version), _version_tuple(machine.backend_version or "")
    if m.build.version_compatible:
        if here[0] != built[0] or here < built:
            errors.append(f"TensorRT version: engine {m.backend_version} (version-compatible: "
                          f"loads on {built[0]}.x from that version on), this machine "
                          f"{machine.backend_version}")
    elif here != built:
        errors.append(f"TensorRT version: engine {m.backend_version}, this machine "
                      f"{machine.backend_version} (a plan loads only on the TensorRT version "
                      "that built it unless built --version-compatible)")
    if machine.device is None:
        errors.append(f"GPU: engine built for {m.device.describe()}, this machine has none "
                      f"visible ({machine.note})")
        return errors, warnings
    cc_built, cc_here = m.device.compute_capability, machine.device.compute_capability
    level = m.build.hardware_compatibility
    if level == "ampere_plus":
        if _sm(cc_here) < 80:
            errors.append(f"compute capability: engine built hardware-compatible for Ampere+ "
                          f"(sm_80 and newer), this machine {cc_here}")
    elif cc_here != cc_built:
        errors.append(f"compute capability: engine {cc_built}, this machine {cc_here}")
    elif level == "none" and machine.device.name != m.device.name:
        warnings.append(f"GPU model: engine built on {m.device.name}, this machine has "
                        f"{machine.device.name}; TensorRT tunes plans per GPU model, rebuild "
                        "here for the best speed")
    return errors, warnings


def _compare_onnxruntime(m: EngineManifest, machine: MachineInfo) -> tuple[list[str], list[str]]:
    errors, warnings = [], []
    if machine.backend_version != m.backend_version:
        warnings.append(f"ONNX Runtime version: engine saved by {m.backend_version}, this machine "
                        f"has {machine.backend_version}; it usually loads, rebuild if it fails")
    here = machine.device
    if m.build.graph_optimization in CPU_SPECIFIC_LEVELS and here is not None:
        if here.arch != m.device.arch or here.cpu_isa != m.device.cpu_isa:
            errors.append(
                f"CPU: engine optimised (level {m.build.graph_optimization}) for "
                f"{m.device.describe()}, this machine has {here.describe()}; its fused kernels "
                "and memory layouts are specific to the CPU features")
    return errors, warnings


def compare(manifest: EngineManifest, machine: MachineInfo,
            onnx_path: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(blocking differences, warnings) between an engine's manifest and this machine."""
    if machine.backend != manifest.backend:
        return [f"backend: engine is a {BACKEND_TITLES[manifest.backend]} engine, asked to load "
                f"it with {BACKEND_TITLES[machine.backend]}"], []
    if machine.backend_version is None:
        return [f"backend: {machine.note or BACKEND_TITLES[machine.backend] + ' missing'}"], []
    if manifest.backend == "tensorrt":
        errors, warnings = _compare_tensorrt(manifest, machine)
    else:
        errors, warnings = _compare_onnxruntime(manifest, machine)
    if onnx_path is not None:
        digest = sha256_file(onnx_path)
        if digest != manifest.onnx_sha256:
            errors.append(f"ONNX: engine built from sha256 {manifest.onnx_sha256[:12]}..., "
                          f"{onnx_path} has {digest[:12]}... (the model changed since the build)")
    return errors, warnings


def check_compatible(manifest: EngineManifest, machine: MachineInfo,
                     onnx_path: str | Path | None = None) -> list[str]:
    """The differences that stop ``manifest``'s engine from loading here (empty = loadable)."""
    return compare(manifest, machine, onnx_path)[0]


def ensure_compatible(manifest: EngineManifest, machine: MachineInfo,
                      engine_path: str | Path, onnx_path: str | Path | None = None) -> list[str]:
    """Raise `EngineMismatchError` on blocking differences; log and return the warnings."""
    errors, warnings = compare(manifest, machine, onnx_path)
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors)
        raise EngineMismatchError(
            f"{engine_path}: refusing to load an engine built for another machine:\n{lines}\n"
            f"engine built for {manifest.describe()}, this machine has {machine.describe()}.\n"
            f"Rebuild it on this machine: {manifest.build_command}", errors)
    for warning in warnings:
        logger.warning("%s: %s", engine_path, warning)
    return warnings
