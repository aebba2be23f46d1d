"""Does an engine fit this machine? `MachineInfo` and the comparison with a manifest.

The manifest (`edgeseg.contract.manifest`) records what an engine was built for;
this module asks the installed libraries what this machine has and compares the
two before any backend touches the engine. It imports the runtime's CUDA binding
lazily (for the GPU), which is why it lives in the runtime and not in the contract.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgeseg.contract.manifest import (
    BACKEND_TITLES,
    CPU_SPECIFIC_LEVELS,
    BackendName,
    DeviceInfo,
    EngineManifest,
    EngineMismatchError,
)
from edgeseg.errors import EdgesegError
from edgeseg.fileio import sha256_file
from edgeseg.runtime.ov_core import openvino_core

logger = logging.getLogger("edgeseg.runtime")

#: CPU features that change which kernels/layouts ONNX Runtime chooses (NCHWc block size, VNNI)
_ISA_FLAGS = frozenset({
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",  # x86_64 (/proc/cpuinfo flags)
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2",  # aarch64 (Features)
})
#: x86 instruction sets with an int8 dot product that accumulates in int32 (VNNI, AMX); without
#: them (AVX2) int8 kernels sum uint8 x int8 pairs in int16, which can saturate
INT8_DOT_ISA = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


# ------------------------------------------------------------------ this machine


def cpu_device() -> DeviceInfo:
    """This machine's CPU: model name, architecture and the ISA flags edgeseg tracks."""
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


def cuda_major_from_distributions(names: Iterable[str]) -> int | None:
    """The CUDA major of the TensorRT wheels among installed distribution ``names``
    (``tensorrt-cu12``, ``tensorrt_cu13_libs``, ...), or None when unknown or mixed."""
    majors = {int(m.group(1)) for n in names
              if (m := re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_].*)?", n.lower()))}
    return majors.pop() if len(majors) == 1 else None


def tensorrt_cuda_major() -> int | None:
    """The CUDA major the installed TensorRT was built for, from its wheel's name; None for
    TensorRT from JetPack, a tar file or a Debian package (no wheel says it)."""
    try:
        names = importlib.metadata.packages_distributions().get("tensorrt", [])
    except Exception:  # noqa: BLE001 - broken metadata: the label is informational
        return None
    return cuda_major_from_distributions(names)


def tensorrt_build_label(version: str, cuda_major: int | None) -> str:
    """``10.13.0.35+cu12``: the TensorRT version with the CUDA major of its build (PEP 440
    local label, as torch's ``+cu121``); the manifest records it so that a plan built with
    one build is not mistaken for the other's."""
    return f"{version}+cu{cuda_major}" if cuda_major else version


def cuda_build_of(label: str | None) -> int | None:
    """The CUDA major in a `tensorrt_build_label` (None for manifests written without one)."""
    match = re.search(r"\+cu(\d+)", label or "")
    return int(match.group(1)) if match else None


def _backend_version(backend: str) -> tuple[str | None, str]:
    try:
        version = str(__import__(backend).__version__)
    except Exception as exc:  # ImportError, or a wheel whose shared libraries are missing
        return None, f"{BACKEND_TITLES[backend]} is not installed here ({exc}){_INSTALL[backend]}"
    if backend == "tensorrt":
        version = tensorrt_build_label(version, tensorrt_cuda_major())
    return version, ""


#: how to install each backend, appended to "not installed" notes
_INSTALL = {"tensorrt": "; pip install 'edgeseg[trt-cu12]' (CUDA-12 driver) or "
                        "'edgeseg[trt-cu13]' (driver >= 580); on a Jetson it comes with JetPack",
            "onnxruntime": "; pip install onnxruntime",
            "openvino": "; pip install 'edgeseg[openvino]'"}


def _openvino_device(target: str) -> tuple[DeviceInfo | None, tuple[str, ...], str]:
    """(this machine's device for OpenVINO device name ``target``, the devices OpenVINO
    sees, why the device is None). The CPU is described as for ONNX Runtime (model, arch,
    ISA flags), so a manifest compares the same way; other devices by OpenVINO's name."""
    try:
        core = openvino_core()
        available = tuple(core.available_devices)
    except Exception as exc:  # noqa: BLE001 - a plugin that fails to load: say so, never raise
        return None, (), f"OpenVINO cannot list its devices ({exc})"
    base = target.split(".")[0].upper()
    if base in ("CPU", "AUTO"):  # AUTO starts on the CPU (and cannot export a compiled model)
        return cpu_device(), available, ""
    if target not in available and base not in available:
        return None, available, (f"OpenVINO sees no {target} device here (available: "
                                 f"{', '.join(available) or 'none'})")
    try:
        name = str(core.get_property(target, "FULL_DEVICE_NAME"))
    except Exception:  # noqa: BLE001
        name = target
    kind = "npu" if base == "NPU" else "gpu"
    return DeviceInfo(kind, name, arch=platform.machine()), available, ""


@dataclass(frozen=True)
class MachineInfo:
    """The backend version and device of the machine that is about to load an engine."""

    backend: BackendName
    backend_version: str | None  # None: not installed
    device: DeviceInfo | None  # None: no CUDA GPU visible (TensorRT), no such OpenVINO device
    note: str = ""  # why version/device is None
    available: tuple[str, ...] = ()  # OpenVINO: the device names its plugins see here

    @classmethod
    def detect(cls, backend: BackendName, device_index: int = 0,
               target: str | None = None) -> MachineInfo:
        """Ask the installed libraries; never raises (what is missing goes into ``note``).

        ``target`` is OpenVINO's device name (``CPU`` when None; ``GPU``, ``GPU.1``, ``NPU``)."""
        if backend not in BACKEND_TITLES:
            raise EdgesegError(f"unknown backend {backend!r}; use one of {list(BACKEND_TITLES)}")
        version, note = _backend_version(backend)
        available: tuple[str, ...] = ()
        if backend == "tensorrt":
            device, gpu_note = _gpu_device(device_index)
            note = "; ".join(n for n in (note, gpu_note) if n)
        elif backend == "openvino" and version is not None:
            device, available, ov_note = _openvino_device(target or "CPU")
            note = "; ".join(n for n in (note, ov_note) if n)
        else:
            device = cpu_device()
        return cls(backend, version, device, note, available)

    def describe(self) -> str:
        title = BACKEND_TITLES[self.backend]
        version = f"{title} {self.backend_version}" if self.backend_version else f"no {title}"
        missing = "no usable CUDA GPU" if self.backend == "tensorrt" else "no such device"
        error = re.search(r"cuda\w*Error\w* \(\d+\)", self.note)  # the driver query's error
        device = self.device.describe() if self.device else \
            f"{missing}{f' ({error.group(0)})' if error else ''}"
        return f"{version} on {device}"


def _version_tuple(text: str, parts: int = 3) -> tuple[int, ...]:
    numbers = [int(n) for n in re.findall(r"\d+", text)[:parts]]
    return tuple(numbers + [0] * (parts - len(numbers)))


def _sm(cc: str) -> int:
    digits = re.sub(r"\D", "", cc)
    return int(digits) if digits else 0


#: pairs (built major, runtime major) across which NVIDIA supports version-compatible plans
#: (TensorRT 11.4.1 Support Matrix, "Engine Portability")
CROSS_MAJOR_VERSION_COMPATIBLE = frozenset({(8, 10), (10, 11)})


def tensorrt_version_rule(built: str, here: str, version_compatible: bool) -> str:
    """Why a plan built by TensorRT ``built`` cannot load on TensorRT ``here`` ('' if it can).

    A plain plan loads only on the version that built it. A version-compatible plan
    loads on that version and every later one of the same major, and TensorRT 10
    version-compatible plans also on TensorRT 11 (NVIDIA's engine-compatibility docs);
    never on an older runtime.
    """
    b, h = _version_tuple(built), _version_tuple(here)
    if not version_compatible:
        if h == b:
            return ""
        return (f"TensorRT version: engine {built}, this machine {here} (a plan loads only on "
                "the TensorRT version that built it unless built --version-compatible)")
    if h < b:
        return (f"TensorRT version: engine {built} (version-compatible), this machine {here}: "
                "a plan never loads on an older TensorRT")
    if h[0] == b[0] or (b[0], h[0]) in CROSS_MAJOR_VERSION_COMPATIBLE:
        return ""
    return (f"TensorRT version: engine {built} (version-compatible: loads on {b[0]}.x from that "
            f"version on{' and on 11.x' if b[0] == 10 else ''}), this machine {here}")


def _compare_tensorrt(m: EngineManifest, machine: MachineInfo) -> tuple[list[str], list[str]]:
    errors, warnings = [], []
    version = tensorrt_version_rule(m.backend_version, machine.backend_version or "",
                                    m.build.version_compatible)
    if version:
        errors.append(version)
    cuda_built, cuda_here = cuda_build_of(m.backend_version), cuda_build_of(machine.backend_version)
    if cuda_built and cuda_here and cuda_built != cuda_here:
        warnings.append(f"TensorRT build: engine built with TensorRT's CUDA-{cuda_built} build, "
                        f"this machine has the CUDA-{cuda_here} build; NVIDIA documents no "
                        "compatibility between the two: rebuild here if it fails to load")
    if machine.device is None:
        errors.append(f"GPU: engine built for {m.device.describe()}, this machine has none "
                      f"visible ({machine.note})")
        return errors, warnings
    if m.device.arch and machine.device.arch and m.device.arch != machine.device.arch:
        errors.append(f"platform: engine built on {m.device.arch}, this machine is "
                      f"{machine.device.arch} (TensorRT plans are not portable across platforms)")
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


def _compare_openvino(m: EngineManifest, machine: MachineInfo) -> tuple[list[str], list[str]]:
    """A compiled OpenVINO model loads only on the OpenVINO build that exported it and on its
    device; on a CPU the layer precisions and kernels it gets follow the ISA (bf16 on
    AVX512_BF16/AMX, VNNI for int8), so the CPU features must match too."""
    errors, warnings = [], []
    if machine.backend_version != m.backend_version:
        errors.append(f"OpenVINO version: engine compiled by {m.backend_version}, this machine "
                      f"has {machine.backend_version} (a compiled model loads only on the "
                      "OpenVINO build that exported it)")
    target = m.build.ov_device or "CPU"
    here = machine.device
    if here is None:
        errors.append(f"OpenVINO device: engine compiled for {target} "
                      f"({m.device.describe()}); {machine.note or 'no such device here'}")
        return errors, warnings
    if here.kind != m.device.kind:
        errors.append(f"OpenVINO device: engine compiled for {target} ({m.device.describe()}), "
                      f"this machine's {target} is {here.describe()}")
    elif here.kind == "cpu":
        if here.arch != m.device.arch or here.cpu_isa != m.device.cpu_isa:
            errors.append(f"CPU: engine compiled for {m.device.describe()}, this machine has "
                          f"{here.describe()}; OpenVINO picks kernels and layer precisions by "
                          "the CPU features")
    elif here.name != m.device.name:
        warnings.append(f"OpenVINO {target}: engine compiled on {m.device.name}, this machine "
                        f"has {here.name}; rebuild here if it fails to load")
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
    elif manifest.backend == "openvino":
        errors, warnings = _compare_openvino(manifest, machine)
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
    if errors:  # one line, so a log or a systemd journal keeps the cause and the fix together
        raise EngineMismatchError(
            f"{engine_path}: refusing to load an engine built for another machine "
            f"(engine built for {manifest.describe()}, this machine has {machine.describe()}): "
            f"{'; '.join(errors)}. Rebuild it on this machine: {manifest.build_command}", errors)
    for warning in warnings:
        logger.warning("%s: %s", engine_path, warning)
    return warnings
