"""ONNX -> TensorRT plan (TensorRT 10/11, strongly typed; names as in docs/tensorrt.md).

Strongly typed networks take their precision from the ONNX graph (fp16 tensors,
int8 Q/DQ pairs): the STRONGLY_TYPED flag on 10.x, no flag on 11.x where every
network is strongly typed, and never the removed FP16/INT8 builder flags. The
ONNX file is linted first (edgeseg.export.lint) so parser failures come with the
node and the fix; the built plan is deserialised once to check it and to save
the engine inspector's layer report beside it (``ENGINE.layers.json``).

TensorRT's errors come from the process's one logger (`trt_logger`), collected per
step (`trt_errors`), so a failed build quotes that step's errors only. A timing
cache TensorRT cannot read (corrupt, or from another TensorRT or GPU) is replaced
by a fresh one with a warning naming the file. polygraphy's loaders
(``NetworkFromOnnxPath``, ``CreateConfig``, ``EngineBytesFromNetwork``) would cover
the glue but bring their own process-wide TensorRT logger, raise their own text on
parser errors (without the node lines and lint findings printed here) and pass a
timing cache TensorRT rejected straight to ``set_timing_cache``, so they are not used.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.contract.manifest import DeviceInfo
from edgeseg.contract.metadata import ModelMetadata, TensorSpec
from edgeseg.export.profile import BuildProfile, BuiltEngine, EngineBuildError, ShapeRange, say
from edgeseg.runtime.backends.cuda_memory import find_gpu, get_api
from edgeseg.runtime.backends.tensorrt import import_tensorrt, trt_errors, trt_logger
from edgeseg.runtime.compat import tensorrt_build_label, tensorrt_cuda_major

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


def _preflight(onnx_path: Path, profile: BuildProfile, version: str,
               ranges: dict[str, dict[str, list[int]]] | None) -> str:
    """Lint findings as text ('' if clean); printed before the build, quoted if it fails."""
    from edgeseg.export.lint import format_findings, lint

    try:
        findings = lint(onnx_path, dla=profile.dla_core is not None, trt_version=version,
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
            from edgeseg.export.lint import dla_support

            note = dla_support(str(trt.__version__))[1]
            raise EngineBuildError(f"dla_core {profile.dla_core}: this machine has "
                                   f"{builder.num_DLA_cores} DLA core(s) (Jetson AGX Orin: 2)"
                                   f"{f'; {note}' if note else ''}")
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


def choose_timing_cache(old: bytes, create: Callable[[bytes], Any],
                        attach: Callable[[Any], bool], path: str) -> tuple[Any, str]:
    """(the timing cache the build uses, a warning or '').

    ``create`` is ``config.create_timing_cache`` (None for bytes TensorRT cannot read:
    a corrupt file, another TensorRT's format), ``attach`` is ``config.set_timing_cache``
    with ``ignore_mismatch=False`` (False for a cache from another GPU or TensorRT).
    Either way the build goes on with a fresh cache and says which file was skipped.
    """
    warning = ""
    if old:
        try:
            cache = create(old)
        except Exception as exc:  # noqa: BLE001 - a cache is an optimisation, never a failure
            cache, warning = None, f"({type(exc).__name__}: {exc})"
        if cache is not None and attach(cache):
            return cache, ""
        why = "TensorRT cannot read it" if cache is None else \
            "it is from another GPU or TensorRT version"
        warning = (f"warning: timing cache {path}: {why}{f' {warning}' if warning else ''}; "
                   "building with a fresh cache, which replaces the file after the build")
    cache = create(b"")
    if cache is None or not attach(cache):
        raise EngineBuildError(f"{path}: TensorRT could not create an empty timing cache; "
                               "build without --timing-cache")
    return cache, warning


def _timing_cache(config: Any, path: str | None) -> None:
    """Load ``path`` (if it exists) into the config; an unreadable or foreign cache starts
    fresh with a warning instead of failing the build."""
    try:
        old = Path(path).read_bytes() if path and Path(path).is_file() else b""
    except OSError as exc:
        say(f"warning: timing cache {path}: cannot read it ({exc}); starting a new one")
        old = b""
    with trt_errors() as log:
        _, warning = choose_timing_cache(
            old, config.create_timing_cache,
            lambda cache: bool(config.set_timing_cache(cache, ignore_mismatch=False)),
            str(path))
    if warning:
        say(warning + (f" (TensorRT: {log.text()})" if log.errors else ""))
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
    logger = trt_logger(trt, verbose)
    version = str(trt.__version__)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing with TensorRT {version} on GPU {device}: {gpu.compute_capability} "
        f"({gpu.name})")
    with trt_errors() as log:
        parsed = parser.parse_from_file(str(onnx_path))
    ranges = input_ranges(network, meta, profile.shapes) if parsed else None
    lint_text = _preflight(onnx_path, profile, version, ranges)
    if not parsed:
        errors = "\n  ".join(parser_errors(parser)) or log.text()
        hint = f"\nlint says:\n{lint_text}" if lint_text else ""
        raise EngineBuildError(f"{onnx_path}: TensorRT {version} cannot parse it:\n  "
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
    with trt_errors() as log:
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: the TensorRT build failed ({log.text()}); "
                               "re-run with -v for the full log")
    say(f"built in {time.perf_counter() - start:.1f} s")
    with open(engine_path, "wb") as f:
        f.write(plan)
    runtime = trt.Runtime(logger)
    if profile.version_compatible:  # the plan this process just built: its own code
        runtime.engine_host_code_allowed = True
    if profile.dla_core is not None:
        runtime.DLA_core = profile.dla_core
    with trt_errors() as log:
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise EngineBuildError(f"{engine_path}: the new plan does not deserialise "
                               f"({log.text()})")
    layers = engine.create_engine_inspector().get_engine_information(
        trt.LayerInformationFormat.JSON)
    inputs, outputs = _engine_specs(trt, engine)
    cache = bytes(config.get_timing_cache().serialize()) if profile.timing_cache else None
    label = tensorrt_build_label(version, tensorrt_cuda_major())
    return BuiltEngine(
        backend_version=label,
        device=DeviceInfo("gpu", gpu.name, gpu.compute_capability, platform.machine()),
        inputs=inputs, outputs=outputs, side_files={LAYERS_SUFFIX: layers},
        timing_cache=cache,
        timing_cache_sha256=hashlib.sha256(cache).hexdigest() if cache else None,
        notes=[f"strongly typed (precision from the ONNX graph), TensorRT {label}"])
