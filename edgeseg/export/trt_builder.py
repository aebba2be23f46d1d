"""ONNX -> TensorRT plan (TensorRT 10/11, strongly typed; names as in docs/tensorrt.md).

Strongly typed networks take their precision from the ONNX graph (fp16 tensors,
int8 Q/DQ pairs): the STRONGLY_TYPED flag on 10.x, no flag on 11.x where every
network is strongly typed, and never the removed FP16/INT8 builder flags. The
ONNX file is linted first (edgeseg.export.lint) so parser failures come with the
node and the fix; the built plan is deserialised once to check it and to save
the engine inspector's layer report beside it (``ENGINE.layers.json``).
"""

from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.contract.manifest import DeviceInfo
from edgeseg.contract.metadata import ModelMetadata, TensorSpec
from edgeseg.export.profile import BuildProfile, BuiltEngine, EngineBuildError, ShapeRange, say
from edgeseg.runtime.backends.cuda_memory import find_gpu, get_api
from edgeseg.runtime.backends.tensorrt import import_tensorrt, last_errors, make_logger

LAYERS_SUFFIX = ".layers.json"
_HW_LEVELS = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt: Any) -> int:
    """STRONGLY_TYPED on 10.x; 11.x networks are always strongly typed (no flag)."""
    major = trt_major(trt)
    if major < 10:
        raise EngineBuildError(f"TensorRT {trt.__version__} is too old: edgeseg needs 10 or newer "
                               "(precision from the ONNX graph, named-tensor API)")
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if major == 10 else 0


def parser_errors(parser: Any) -> list[str]:
    """One line per ONNX parser error, naming the node (name and op) where TensorRT says."""
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        name = getattr(err, "node_name", lambda: "")() or f"#{err.node()}"
        op = getattr(err, "node_operator", lambda: "")()
        lines.append(f"node {name}{f' ({op})' if op else ''}: {err.desc()}")
    return lines


def _preflight(onnx_path: Path, profile: BuildProfile, major: int,
               ranges: dict[str, dict[str, list[int]]] | None) -> str:
    """Lint findings as text ('' if clean); printed before the build, quoted if it fails."""
    from edgeseg.export.lint import format_findings, lint

    try:
        findings = lint(onnx_path, dla=profile.dla_core is not None, trt_major=major,
                        profile=ranges)
    except Exception as exc:  # advisory only: the parser below decides
        say(f"notice: lint skipped ({type(exc).__name__}: {exc})")
        return ""
    if not findings:
        return ""
    text = format_findings(findings)
    say(f"lint ({onnx_path}):\n{text}")
    return text


def input_ranges(network: Any, meta: ModelMetadata, shapes: ShapeRange | None
                 ) -> dict[str, dict[str, list[int]]]:
    """min/opt/max for every dynamic network input: the build profile's ``shapes`` (one
    dynamic input) or the ranges the exporter recorded in the ONNX metadata."""
    declared = {t.name: t.profile for t in meta.inputs}
    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if any(d < 0 for d in dims):
            dynamic.append((tensor.name, dims))
    if shapes is not None and not dynamic:
        say("notice: `shapes` ignored: the ONNX inputs are static")
    if shapes is not None and len(dynamic) > 1:
        raise EngineBuildError(f"shapes: {len(dynamic)} dynamic inputs; give each a range in "
                               "the ONNX metadata profile instead")
    ranges = {}
    for name, dims in dynamic:
        rng = shapes.as_profile() if shapes is not None else declared.get(name) or {}
        if not rng:
            raise EngineBuildError(
                f"input '{name}' has dynamic dims {dims}: give `shapes: {{min, opt, max}}` in "
                "the build profile (or export with --dynamic, which records a range)")
        for key, shape in rng.items():
            bad = len(shape) != len(dims) or any(d >= 0 and s != d for s, d in zip(shape, dims))
            if bad:
                raise EngineBuildError(f"shapes.{key} {shape} does not fit input '{name}' {dims}")
        ranges[name] = {k: list(rng[k]) for k in ("min", "opt", "max")}
    return ranges


def _configure(trt: Any, builder: Any, config: Any, profile: BuildProfile) -> None:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mb << 20)
    config.builder_optimization_level = profile.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if profile.dla_core is not None:
        if builder.num_DLA_cores <= profile.dla_core:
            raise EngineBuildError(f"dla_core {profile.dla_core}: this machine has "
                                   f"{builder.num_DLA_cores} DLA core(s) (Jetson Orin AGX: 2)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = profile.dla_core
        if profile.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if profile.hardware_compatibility != "none":
        level = getattr(getattr(trt, "HardwareCompatibilityLevel", None),
                        _HW_LEVELS[profile.hardware_compatibility], None)
        if level is None:
            raise EngineBuildError(f"hardware_compatibility {profile.hardware_compatibility} "
                                   f"is not in TensorRT {trt.__version__}")
        config.hardware_compatibility_level = level
    if profile.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)


def _timing_cache(config: Any, path: str | None) -> None:
    """Load ``path`` (if it exists) into the config; a cache from another GPU/TensorRT
    starts fresh instead of failing the build."""
    old = Path(path).read_bytes() if path and Path(path).is_file() else b""
    cache = config.create_timing_cache(old)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        say(f"notice: timing cache {path} is from another GPU or TensorRT; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    elif old:
        say(f"timing cache: {path} ({len(old)} bytes)")


def _engine_specs(trt: Any, engine: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dims = [int(d) for d in engine.get_tensor_shape(name)]
        spec = TensorSpec(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
                          [d if d >= 0 else None for d in dims])
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            if None in spec.shape:
                lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
                spec.profile = {"min": list(lo), "opt": list(opt), "max": list(hi)}
            inputs.append(spec)
        else:
            outputs.append(spec)
    return inputs, outputs


def build_tensorrt(onnx_path: Path, engine_path: Path, meta: ModelMetadata,
                   profile: BuildProfile, verbose: bool = False, device: int = 0) -> BuiltEngine:
    """Parse, configure, build, check and describe one plan; writes it to ``engine_path``.

    ``device`` is the CUDA GPU index the plan is built (and tuned) on, as trtexec --device.
    """
    trt = import_tensorrt()
    gpu = find_gpu(device)
    get_api().set_device(device)  # the builder and runtime use the current device
    flags = network_flags(trt)
    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing with TensorRT {trt.__version__} on GPU {device}: {gpu.compute_capability} "
        f"({gpu.name})")
    parsed = parser.parse_from_file(str(onnx_path))
    ranges = input_ranges(network, meta, profile.shapes) if parsed else None
    lint_text = _preflight(onnx_path, profile, trt_major(trt), ranges)
    if not parsed:
        errors = "\n  ".join(parser_errors(parser)) or last_errors(logger)
        hint = f"\nlint says:\n{lint_text}" if lint_text else ""
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it:\n  "
                               f"{errors}{hint}")
    config = builder.create_builder_config()
    _configure(trt, builder, config, profile)
    _timing_cache(config, profile.timing_cache)
    if ranges:
        opt_profile = builder.create_optimization_profile()
        for name, rng in ranges.items():
            opt_profile.set_shape(name, rng["min"], rng["opt"], rng["max"])
        config.add_optimization_profile(opt_profile)
    say(f"building (opt level {profile.opt_level}, workspace {profile.workspace_mb} MB"
        f"{f', DLA core {profile.dla_core}' if profile.dla_core is not None else ''}); "
        "this takes minutes")
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: the TensorRT build failed ({last_errors(logger)}); "
                               "re-run with -v for the full log")
    say(f"built in {time.perf_counter() - start:.1f} s")
    with open(engine_path, "wb") as f:
        f.write(plan)
    runtime = trt.Runtime(logger)
    if profile.version_compatible:
        runtime.engine_host_code_allowed = True
    if profile.dla_core is not None:
        runtime.DLA_core = profile.dla_core
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise EngineBuildError(f"{engine_path}: the new plan does not deserialise "
                               f"({last_errors(logger)})")
    layers = engine.create_engine_inspector().get_engine_information(
        trt.LayerInformationFormat.JSON)
    inputs, outputs = _engine_specs(trt, engine)
    cache = bytes(config.get_timing_cache().serialize()) if profile.timing_cache else None
    return BuiltEngine(
        backend_version=str(trt.__version__),
        device=DeviceInfo("gpu", gpu.name, gpu.compute_capability, platform.machine()),
        inputs=inputs, outputs=outputs, side_files={LAYERS_SUFFIX: layers},
        timing_cache=cache,
        timing_cache_sha256=hashlib.sha256(cache).hexdigest() if cache else None,
        notes=[f"strongly typed (precision from the ONNX graph), TensorRT {trt.__version__}"])
