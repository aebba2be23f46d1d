"""Does an engine fit this machine? `MachineInfo` and the comparison with a manifest.

The manifest (`edgeseg.contract.manifest`) records what an engine was built for;
this module asks the installed libraries what this machine has and compares the
two before any backend touches the engine. It imports the runtime's CUDA binding
lazily (for the GPU), which is why it lives in the runtime and not in the contract.
"""

from __future__ import annotations

import logging
import platform
import re
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

logger = logging.getLogger("edgeseg.runtime")

#: CPU features that change which kernels/layouts ONNX Runtime chooses (NCHWc block size, VNNI)
_ISA_FLAGS = frozenset({
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",  # x86_64 (/proc/cpuinfo flags)
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2",  # aarch64 (Features)
})


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
    try:
        return str(__import__(backend).__version__), ""
    except Exception as exc:  # ImportError, or a wheel whose shared libraries are missing
        return None, f"{BACKEND_TITLES[backend]} is not installed here ({exc}){_INSTALL[backend]}"


#: how to install each backend, appended to "not installed" notes
_INSTALL = {"tensorrt": "", "onnxruntime": "; pip install onnxruntime",
            "openvino": "; pip install 'edgeseg[openvino]'"}


def _openvino_device(target: str) -> tuple[DeviceInfo | None, tuple[str, ...], str]:
    """(this machine's device for OpenVINO device name ``target``, the devices OpenVINO
    sees, why the device is None). The CPU is described as for ONNX Runtime (model, arch,
    ISA flags), so a manifest compares the same way; other devices by OpenVINO's name."""
    try:
        import openvino

        core = openvino.Core()
        available = tuple(core.available_devices)
    except Exception as exc:  # noqa: BLE001 - a plugin that fails to load: say so, never raise
        return None, (), f"OpenVINO cannot list its devices ({exc})"
    base = target.split(".")[0].upper()
    if base in ("CPU", "AUTO"):  # AUTO starts on the CPU (and cannot export a compiled model)
        return _cpu_device(), available, ""
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
            device = _cpu_device()
        return cls(backend, version, device, note, available)

    def describe(self) -> str:
        title = BACKEND_TITLES[self.backend]
        version = f"{title} {self.backend_version}" if self.backend_version else f"no {title}"
        missing = "no CUDA GPU" if self.backend == "tensorrt" else "no such device"
        device = self.device.describe() if self.device else missing
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
