"""ONNX -> OpenVINO engine: the model compiled for one device, exported, re-imported and verified.

OpenVINO reads the same ONNX files as ONNX Runtime and TensorRT (uint8 NHWC frame in,
pre/post-processing in the graph, fp32 or int8 Q/DQ in either flavour) and runs Q/DQ
int8 with its int8 kernels (VNNI/AMX on x86). ``compile_model`` with the profile's
properties (performance hint, streams, threads, the precision of the layers outside
Q/DQ) compiles it; ``export_model`` gives the bytes saved as the engine. The engine is
imported again with the same properties, run once on a zero frame (output name, dtype
and shape checked), and its resolved stream count and optimal number of infer requests
go into the manifest. A compiled model is specific to the OpenVINO build and the device
(on a CPU, to its ISA: bf16 and VNNI kernels), which the manifest records and the runtime
checks before it loads one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgeseg.contract.metadata import ModelMetadata, TensorSpec, calibration_info
from edgeseg.export.profile import (
    BuildProfile,
    BuiltEngine,
    EngineBuildError,
    say,
    verify_engine_io,
)
from edgeseg.runtime.backends.openvino import (
    import_openvino,
    load_properties,
    ov_error,
    port_spec,
)
from edgeseg.runtime.compat import INT8_DOT_ISA, MachineInfo, cpu_device
from edgeseg.runtime.ov_core import openvino_core


def openvino_has_bf16(device: str = "CPU") -> bool:
    """Whether OpenVINO's ``device`` computes bf16 in hardware: a CPU with AVX512_BF16 or
    AMX-BF16, read from the CPU flags (what the CPU plugin reports as BF16 in its
    OPTIMIZATION_CAPABILITIES), so asking does not need OpenVINO loaded."""
    if device.split(".")[0].upper() != "CPU":
        return False
    isa = set(cpu_device().cpu_isa or ())
    return bool(isa & {"avx512_bf16", "amx_bf16"})


def int8_saturation_notice(meta: ModelMetadata, target: str, isa: Iterable[str]) -> str | None:
    """Why a tensorrt-flavour int8 file can lose accuracy in OpenVINO on an AVX2-only CPU.

    Without VNNI/AMX the CPU plugin's int8 convolutions sum uint8 x int8 pairs in int16
    (vpmaddubsw), which can saturate with full-range 8-bit weights (the CamVid start loses
    5.35 mIoU points on day_val there: benchmarks/results/camvid/int8-avx2.md); the
    onnxruntime flavour quantises weights to 7 bits (reduce_range) for that. None where it
    does not apply."""
    isa = set(isa)
    if (target.split(".")[0].upper() != "CPU"
            or calibration_info(meta).get("flavour") != "tensorrt"
            or "avx2" not in isa or isa & INT8_DOT_ISA):
        return None
    return ("this CPU has no VNNI/AMX int8 dot product (AVX2 only): OpenVINO sums uint8 x "
            "int8 pairs in int16 there, which can saturate with the tensorrt flavour's 8-bit "
            "weights; check the engine's accuracy (`edgeseg eval`) or build from `edgeseg "
            "quantize ... --flavour onnxruntime` (7-bit weights) for this CPU")


def _specs(compiled: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return [port_spec(p) for p in compiled.inputs], [port_spec(p) for p in compiled.outputs]


def build_openvino(onnx_path: Path, engine_path: Path, meta: ModelMetadata,
                   profile: BuildProfile, verbose: bool = False, device: int = 0
                   ) -> BuiltEngine:
    """Compile ``onnx_path`` for ``profile.ov_device`` and write the exported model to
    ``engine_path``; import it back and run one frame through it."""
    ov = import_openvino()
    target = profile.ov_device
    machine = MachineInfo.detect("openvino", target=target)
    if machine.device is None:
        raise EngineBuildError(f"{onnx_path}: cannot build for OpenVINO {target}: "
                               f"{machine.note}")
    core = openvino_core()
    props = load_properties(target, hint=profile.performance_hint, threads=profile.threads,
                            streams=profile.streams, precision=profile.inference_precision)
    if verbose:
        props["LOG_LEVEL"] = "LOG_INFO"
    say(f"compiling for OpenVINO {ov.__version__} {target} ({machine.device.describe()}): "
        + ", ".join(f"{k}={v}" for k, v in props.items()))
    try:
        compiled = core.compile_model(str(onnx_path), target, props)
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with C++ traces
        raise EngineBuildError(f"{onnx_path}: OpenVINO {ov.__version__} cannot compile it for "
                               f"{target} ({ov_error(exc)})") from None
    try:
        blob = compiled.export_model()
    except Exception as exc:  # noqa: BLE001 - AUTO and some plugins cannot export
        raise EngineBuildError(f"{onnx_path}: OpenVINO {target} cannot export a compiled model "
                               f"({ov_error(exc)}); build for a concrete device: --ov-device "
                               "CPU, GPU or NPU") from None
    data = blob.getvalue() if hasattr(blob, "getvalue") else bytes(blob)
    with open(engine_path, "wb") as f:
        f.write(data)
    streams = int(compiled.get_property("NUM_STREAMS")) if target != "NPU" else 1
    optimal = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    requests = profile.infer_requests or max(2, optimal)
    # what a load does: import with the same properties (pinning the resolved streams)
    load = load_properties(target, hint=profile.performance_hint, threads=profile.threads,
                           streams=streams, precision=profile.inference_precision)
    try:
        loaded = core.import_model(engine_path.read_bytes(), target, load)
    except Exception as exc:  # noqa: BLE001
        raise EngineBuildError(f"{engine_path}: the exported model does not import again "
                               f"({ov_error(exc)})") from None
    inputs, outputs = _specs(loaded)
    verify_engine_io(onnx_path, engine_path, meta, profile, inputs, outputs,
                     lambda frame: loaded.create_infer_request().infer({0: frame})[
                         loaded.outputs[0]])
    precision = str(loaded.get_property("INFERENCE_PRECISION_HINT").get_type_name()) \
        if target.startswith(("CPU", "GPU")) else "?"
    threads = int(loaded.get_property("INFERENCE_NUM_THREADS")) if target == "CPU" else 0
    caps = ", ".join(str(c) for c in core.get_property(target, "OPTIMIZATION_CAPABILITIES"))
    notes = [f"OpenVINO {target}: {profile.performance_hint} hint, {streams} stream(s), "
             f"{threads or 'default'} threads, layers outside Q/DQ in {precision}, "
             f"optimal infer requests {optimal} (the runtime keeps {requests} in flight); "
             f"device capabilities: {caps}",
             "a compiled OpenVINO model loads only with the same OpenVINO build, on the same "
             "device type and (CPU) the same ISA features (cpu_isa)"]
    saturation = int8_saturation_notice(meta, target, machine.device.cpu_isa or ())
    if saturation:
        say(f"warning: {saturation}")
        notes.append(saturation)
    if target != "CPU":
        notes.append(f"OpenVINO {target} builds are not verified on the development machines "
                     "(no Intel GPU/NPU there)")
    return BuiltEngine(ov.__version__, machine.device, inputs, outputs, notes=notes,
                       resolved={"streams": streams, "infer_requests": requests})
