"""What a benchmark ran on: CPU, GPU, library versions, Jetson power mode, load.

A latency number means nothing without its machine, so every report carries
this. The CPU and GPU come from the runtime's `MachineInfo` (the same detection
that decides whether an engine fits this machine); nvidia-smi adds the driver
where it exists, nvpmodel the Jetson power mode. Nothing here raises: what
cannot be read is left out or noted.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgeseg import __version__
from edgeseg.runtime.compat import MachineInfo

_PACKAGES = ("numpy", "opencv-python", "onnxruntime", "onnxruntime-gpu", "openvino", "torch",
             "tensorrt", "cuda-python", "cuda-bindings", "pycuda")


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    """stdout of ``cmd`` if it exists and succeeds, else None."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00 \n")
    except OSError:
        return None


def _memory_gib() -> float | None:
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _versions() -> dict[str, str]:
    """Installed package versions, read from their metadata (nothing is imported)."""
    found = {"edgeseg": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _nvidia_smi() -> list[dict[str, str]]:
    fields = ("name", "driver_version", "compute_cap", "memory.total", "clocks.max.sm",
              "power.limit")
    out = _run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if not out:
        return []
    return [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.splitlines()]


def _jetson() -> dict[str, Any] | None:
    release = _read("/etc/nv_tegra_release")
    model = _read("/proc/device-tree/model")
    if release is None and not (model and "jetson" in model.lower()):
        return None
    info: dict[str, Any] = {"model": model, "l4t": (release or "").splitlines()[0] or None}
    mode = _run(["nvpmodel", "-q"])
    info["power_mode"] = " ".join(mode.split()) if mode else (
        "unreadable (nvpmodel -q failed or needs root)")
    return info


def detect_machine() -> dict[str, Any]:
    """A JSON-friendly description of this machine, for reports."""
    cpu_side = MachineInfo.detect("onnxruntime")
    gpu_side = MachineInfo.detect("tensorrt")
    cpu = cpu_side.device
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": {
            "model": cpu.name if cpu else platform.processor(),
            "arch": platform.machine(),
            "logical_cores": os.cpu_count(),
            "usable_cores": usable,
            "simd": list(cpu.cpu_isa) if cpu else [],
            "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "memory_gib": _memory_gib(),
            "load_1min_at_start": load,
        },
        "gpu": None,
        "versions": _versions(),
    }
    if gpu_side.device is not None:
        info["gpu"] = {"name": gpu_side.device.name,
                       "compute_capability": gpu_side.device.compute_capability}
    smi = _nvidia_smi()
    if smi:
        info["gpu"] = {**(info["gpu"] or {}), "nvidia_smi": smi,
                       "driver": smi[0].get("driver_version")}
    if info["gpu"] is None:
        info["gpu_note"] = gpu_side.note or "no CUDA GPU visible"
    info["tensorrt"] = gpu_side.backend_version
    info["onnxruntime"] = cpu_side.backend_version
    info["openvino"] = MachineInfo.detect("openvino").backend_version
    try:
        import onnxruntime

        info["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    jetson = _jetson()
    if jetson:
        info["jetson"] = jetson
    return info


def describe_machine(info: dict[str, Any]) -> list[str]:
    """Short lines for the Markdown report and the console."""
    cpu = info["cpu"]
    simd = "/".join(cpu.get("simd") or []) or "n/a"
    lines = [f"CPU: {cpu['model']} ({cpu['arch']}), {cpu['usable_cores']} usable of "
             f"{cpu['logical_cores']} logical cores, SIMD {simd}, {cpu.get('memory_gib')} GiB, "
             f"load {cpu.get('load_1min_at_start')} at start"]
    gpu = info.get("gpu")
    if gpu:
        driver = f", driver {gpu['driver']}" if gpu.get("driver") else ""
        cc = f" ({gpu['compute_capability']})" if gpu.get("compute_capability") else ""
        lines.append(f"GPU: {gpu.get('name') or gpu['nvidia_smi'][0]['name']}{cc}{driver}")
    else:
        lines.append(f"GPU: none ({info.get('gpu_note', '')})")
    lines.append(f"TensorRT: {info.get('tensorrt') or 'not installed'}; ONNX Runtime: "
                 f"{info.get('onnxruntime') or 'not installed'} "
                 f"({', '.join(info.get('onnxruntime_providers', [])) or 'no providers'}); "
                 f"OpenVINO: {info.get('openvino') or 'not installed'}")
    if "jetson" in info:
        j = info["jetson"]
        lines.append(f"Jetson: {j.get('model')}, {j.get('l4t')}, power mode {j['power_mode']}")
    versions = info.get("versions", {})
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append(f"OS: {info['os']}")
    return lines
