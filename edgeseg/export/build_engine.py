"""ONNX -> engine for one deployment target: a TensorRT plan, an optimised ONNX Runtime model or
an OpenVINO compiled model.

The precision is already in the ONNX file (fp32, fp16, or int8 Q/DQ; see
docs/tensorrt.md: TensorRT 11 has no precision flags, so both backends build
exactly what the graph says). `build_engine` therefore only checks that the
file has the precision asked for and refuses otherwise with the command that
makes the right file (`PrecisionMismatchError`, the hook for an automatic
conversion).

Every build writes the engine and its manifest (`edgeseg.contract.manifest`),
plus TensorRT's layer report, under temp names and renames them together at
the end: a failed or interrupted build leaves nothing behind. Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import shlex
import time
from dataclasses import replace
from pathlib import Path

from edgeseg import __version__
from edgeseg.contract.manifest import (
    BACKEND_TITLES,
    OPENVINO_SUFFIX,
    EngineManifest,
    manifest_path,
    utc_now,
)
from edgeseg.contract.metadata import (
    ModelMetadata,
    TensorSpec,
    calibration_info,
    edgeseg_props,
    load_onnx,
    metadata_of,
)
from edgeseg.errors import EdgesegError
from edgeseg.export.profile import BuildProfile, EngineBuildError, say
from edgeseg.fileio import atomic_path, is_disk_full, output_error, sha256_file, write_bytes
from edgeseg.runtime.compat import MachineInfo

#: keys that only mean something to TensorRT, with their defaults (notice when set for ORT)
_TRT_ONLY = {"dla_core": None, "hardware_compatibility": "none", "version_compatible": False,
             "timing_cache": None}
#: keys that only mean something to OpenVINO, with their defaults (notice when set elsewhere)
_OV_ONLY = {"ov_device": "CPU", "performance_hint": "LATENCY", "streams": 0,
            "infer_requests": 0, "inference_precision": "f32"}
#: the int8 Q/DQ flavour each backend builds from an fp32 file unless told otherwise: with
#: OpenVINO the TensorRT-style (symmetric) file serves a Jetson and a CPU alike
DEFAULT_FLAVOUR = {"tensorrt": "tensorrt", "onnxruntime": "onnxruntime", "openvino": "tensorrt"}


def default_flavour(backend: str) -> str:
    return DEFAULT_FLAVOUR.get(backend, "tensorrt")


class PrecisionMismatchError(EdgesegError):
    """The ONNX file's precision is not the one asked for.

    ``requested``/``found``/``onnx_path`` let a caller convert the file (the
    ``edgeseg quantize`` step) and retry instead of showing the message.
    """

    def __init__(self, message: str, requested: str, found: str, onnx_path: Path) -> None:
        super().__init__(message)
        self.requested, self.found, self.onnx_path = requested, found, onnx_path


# ------------------------------------------------------------------ helpers


def read_onnx_metadata(onnx_path: str | Path) -> tuple[ModelMetadata, dict[str, str]]:
    """The edgeseg metadata of an ONNX file, parsed and as raw ``edgeseg.*`` props (kept
    verbatim in the manifest, keys this version does not know included); weights not loaded."""
    model = load_onnx(onnx_path, external_data=False)
    return metadata_of(model, str(onnx_path)), edgeseg_props(model)


def quantize_hint(onnx_path: Path, precision: str, profile: BuildProfile, backend: str) -> str:
    """The command that makes the ``precision`` variant of ``onnx_path`` for ``backend``."""
    out = onnx_path.with_name(f"{onnx_path.stem}-{precision}.onnx")
    cmd = ["edgeseg", "quantize", str(onnx_path), "--precision", precision, "-o", str(out)]
    if precision == "int8":
        cal = profile.calibration
        cmd += ["--calib", cal.data or "SPEC|VIDEO", "--calib-frames", str(cal.frames),
                "--calib-method", cal.method, "--flavour", cal.flavour or default_flavour(backend)]
    return shlex.join(cmd)


def check_precision(meta: ModelMetadata, profile: BuildProfile, onnx_path: Path,
                    backend: str) -> str:
    """The precision to build: the ONNX's own; refuse a different request, explain ``best``."""
    requested = profile.precision
    if requested == "auto":
        raise EngineBuildError(
            "build_engine builds the one precision its ONNX has; --precision auto is chosen by "
            "edgeseg.export.variants.choose_precision (what `edgeseg build-engine` runs)")
    if requested is None or requested == meta.precision:
        return meta.precision
    raise PrecisionMismatchError(
        f"{onnx_path} is an {meta.precision} ONNX, but {requested} was asked for. TensorRT 10/11 "
        f"and ONNX Runtime build the precision the graph has (docs/tensorrt.md). Make the "
        f"{requested} file first:\n  {quantize_hint(onnx_path, requested, profile, backend)}\n"
        f"then build that file, or drop --precision to build {onnx_path} as {meta.precision}",
        requested, meta.precision, onnx_path)


def cpu_backend() -> str:
    """The CPU backend ``auto`` picks: OpenVINO when it is installed (int8 Q/DQ runs in its
    VNNI/AMX kernels, TensorRT-style files included), else ONNX Runtime."""
    return "openvino" if MachineInfo.detect("openvino").backend_version else "onnxruntime"


def gpu_problem(note: str) -> str:
    """The part of a failed GPU query worth a one-line notice: the CUDA error with its name
    and code and the fix (a CUDA-13 wheel on a CUDA-12 driver is not "no GPU")."""
    text = note.split("; install a CUDA binding")[0].strip()
    return text or "none visible"


def tensorrt_unusable(machine: MachineInfo) -> str:
    """Why ``auto`` does not pick TensorRT on ``machine`` ('' when it does).

    Raises when TensorRT is installed but the CUDA driver query failed with an error
    other than "no device" (a driver too old for the CUDA binding, a broken install):
    building a CPU engine then would hide a setup the user meant to be a GPU one.
    """
    if not machine.backend_version:
        return "TensorRT is not installed"
    if machine.device:
        return ""
    problem = gpu_problem(machine.note)
    if "cudaError" in problem and "cudaErrorNoDevice" not in problem:
        raise EngineBuildError(
            f"TensorRT {machine.backend_version} is installed but CUDA fails: {problem}; fix "
            "the driver or the CUDA binding, or build for the CPU with --device cpu")
    return f"no usable CUDA GPU ({problem})"


def resolve_backend(choice: str, device: int = 0, *, cpu: bool = False) -> str:
    """``auto`` -> TensorRT when it imports and CUDA GPU ``device`` is visible (unless
    ``cpu``: a CPU target was asked for), else OpenVINO when installed, else ONNX Runtime,
    with a one-line notice saying why."""
    if choice != "auto":
        return choice
    if not cpu:
        why = tensorrt_unusable(MachineInfo.detect("tensorrt", device))
        if not why:
            return "tensorrt"
    else:
        why = "--device cpu"
    backend = cpu_backend()
    if backend == "openvino":
        say(f"notice: {why}; building an OpenVINO engine for this CPU "
            "(--backend onnxruntime or tensorrt to insist)")
    else:
        say(f"notice: {why}; building an ONNX Runtime engine for this CPU (OpenVINO is not "
            "installed; --backend tensorrt to insist)")
    return backend


ENGINE_SUFFIXES = {"tensorrt": ".engine", "onnxruntime": ".ort.onnx", "openvino": OPENVINO_SUFFIX}


def default_engine_path(onnx_path: str | Path, backend: str) -> Path:
    """model.onnx -> model.engine (TensorRT), model.ort.onnx (ONNX Runtime, still an ONNX) or
    model.ov.blob (OpenVINO's exported compiled model)."""
    path = Path(onnx_path)
    return path.with_name(path.stem + ENGINE_SUFFIXES.get(backend, ".engine"))


def merge_specs(declared: list[TensorSpec], actual: list[TensorSpec]) -> list[TensorSpec]:
    """The engine's real names/dtypes/shapes with the metadata's format, by tensor name."""
    formats = {t.name: t.format for t in declared}
    for spec in actual:
        spec.format = spec.format or formats.get(spec.name, "")
    return actual


def check_flavour(meta: ModelMetadata, backend: str, onnx_path: Path) -> None:
    """TensorRT parses only symmetric (``tensorrt`` flavour) Q/DQ: refuse the other early."""
    flavour = calibration_info(meta).get("flavour")
    if meta.precision == "int8" and backend == "tensorrt" and flavour == "onnxruntime":
        raise EngineBuildError(
            f"{onnx_path}: int8 Q/DQ in the onnxruntime flavour (uint8 activations), which "
            "TensorRT cannot parse; quantise again with --flavour tensorrt "
            "(`edgeseg quantize ... --precision int8 --flavour tensorrt`)")


# ------------------------------------------------------------------ the build


def build_engine(onnx_path: str | Path, out_path: str | Path | None, profile: BuildProfile,
                 command: str, *, verbose: bool = False,
                 selection: list[dict] | None = None, device: int = 0) -> EngineManifest:
    """Build ``onnx_path`` for ``profile``'s target; writes the engine + manifest atomically.

    ``device`` is the CUDA GPU index a TensorRT plan is built on (ignored for the CPU).

    ``command`` is the command line that rebuilds this engine; it goes into the
    manifest and every load-time mismatch message.
    """
    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    meta, props = read_onnx_metadata(onnx_path)
    backend = resolve_backend(profile.backend, device)
    precision = check_precision(meta, profile, onnx_path, backend)
    check_flavour(meta, backend, onnx_path)
    calibration = calibration_info(meta)
    out = Path(out_path) if out_path else default_engine_path(onnx_path, backend)
    if out.resolve() == onnx_path.resolve():
        raise EngineBuildError(f"{out}: the engine would overwrite its ONNX input; pick another -o")
    if backend == "onnxruntime":
        if out.suffix != ".onnx":
            raise EngineBuildError(f"{out}: an ONNX Runtime engine is an ONNX file; name it "
                                   f"*.ort.onnx, e.g. {default_engine_path(onnx_path, backend)}")
    if backend == "openvino" and out.suffix in (".onnx", ".engine"):
        picked = " (backend auto picked OpenVINO; --backend onnxruntime builds an ONNX " \
            "Runtime engine)" if profile.backend == "auto" else ""
        raise EngineBuildError(f"{out}: an OpenVINO engine is a compiled model, not an ONNX "
                               f"file or a TensorRT plan; name it *{OPENVINO_SUFFIX}, e.g. "
                               f"{default_engine_path(onnx_path, backend)}{picked}")
    if backend != "tensorrt":
        ignored = [k for k, d in _TRT_ONLY.items() if getattr(profile, k) != d]
        if ignored:
            say(f"notice: TensorRT-only settings ignored for {BACKEND_TITLES[backend]}: "
                f"{', '.join(ignored)}")
    if backend != "openvino":
        ignored = [k for k, d in _OV_ONLY.items() if getattr(profile, k) != d]
        if ignored:
            say(f"notice: OpenVINO-only settings ignored for {BACKEND_TITLES[backend]}: "
                f"{', '.join(ignored)}")
    say(f"{onnx_path} ({precision}) -> {out} with {BACKEND_TITLES[backend]}")
    if backend == "tensorrt":
        from edgeseg.export.trt_builder import build_tensorrt as build
    elif backend == "openvino":
        from edgeseg.export.ov_builder import build_openvino as build
    else:
        from edgeseg.export.ort_builder import build_onnxruntime as build
    with contextlib.ExitStack() as stack:
        tmp_engine = stack.enter_context(atomic_path(out))
        tmp_manifest = stack.enter_context(atomic_path(manifest_path(out)))
        try:
            built = build(onnx_path, tmp_engine, meta, profile, verbose, device)
        except EngineBuildError:
            # ONNX Runtime and TensorRT report a failed write as a load/serialisation error
            if is_disk_full(out):
                raise output_error(out, OSError(errno.ENOSPC, "No space left on device")
                                   ) from None
            raise
        for suffix, text in built.side_files.items():
            stack.enter_context(atomic_path(str(out) + suffix)).write_text(text)
        manifest = EngineManifest(
            backend=backend, backend_version=built.backend_version, device=built.device,
            precision=precision, inputs=merge_specs(meta.inputs, built.inputs),
            outputs=merge_specs(meta.outputs, built.outputs),
            onnx_sha256=sha256_file(onnx_path), engine_sha256=sha256_file(tmp_engine),
            build_command=command,
            build=replace(profile.build_options(backend), **built.resolved),
            onnx_path=str(onnx_path), timing_cache_sha256=built.timing_cache_sha256,
            calibration_sha256=calibration.get("frames_sha256") or None,
            metadata=props, notes=built.notes, selection=selection or [], created=utc_now(),
            edgeseg_version=__version__)
        tmp_manifest.write_text(manifest.to_json())
    if built.timing_cache is not None and profile.timing_cache:
        write_bytes(profile.timing_cache, built.timing_cache)
    size = out.stat().st_size / 1e6
    say(f"done in {time.perf_counter() - start:.1f} s: {out} ({size:.1f} MB), "
        f"manifest {manifest_path(out)}")
    return manifest
