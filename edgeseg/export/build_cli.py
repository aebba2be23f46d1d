"""``edgeseg build-engine MODEL.onnx -o ENGINE [--profile export/X.yaml] [flags]``.

Flags override the profile's keys of the same name (``--workspace-mb`` ->
``workspace_mb``). The manifest records the command that rebuilds the engine
with the backend resolved, so a mismatch on a vehicle prints something that
can be pasted.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeseg.argtypes import Device, add_device_argument
from edgeseg.config import ConfigError
from edgeseg.contract.metadata import read_metadata
from edgeseg.export.build_engine import (
    build_engine,
    default_engine_path,
    default_flavour,
    resolve_backend,
)
from edgeseg.export.outputs import guard_output
from edgeseg.export.profile import ShapeRange, load_profile
from edgeseg.export.variants import (
    calib_cache_path,
    choose_precision,
    default_candidates,
    make_variant,
    variant_path,
)
from edgeseg.fileio import check_outputs

#: profile keys settable from the command line: key -> argparse options (flag = --key-with-dashes)
FLAGS: dict[str, dict[str, Any]] = {
    "backend": {"choices": ["auto", "tensorrt", "onnxruntime", "openvino"],
                "help": "auto = TensorRT if installed with a CUDA GPU, else OpenVINO if "
                        "installed (CPU), else ONNX Runtime (CPU)"},
    "precision": {"choices": ["fp32", "fp16", "int8", "auto"],
                  "help": "fp32/fp16/int8: build that precision (an fp32 ONNX is converted "
                          "first; default: the file's own). auto: build fp32, fp16 (TensorRT) "
                          "and int8, measure each on this machine (latency) and against fp32 "
                          "on the --calib and --accuracy-data frames (pixel agreement, mIoU "
                          "drop), keep the fastest within --min-agreement/--max-miou-drop. "
                          "Not trtexec --best, which picks per-layer precisions unmeasured"},
    "workspace_mb": {"type": int, "metavar": "MB", "help": "TensorRT workspace limit"},
    "opt_level": {"type": int, "metavar": "N", "help": "TensorRT builder optimisation level 0..5"},
    "dla_core": {"type": int, "metavar": "N", "help": "build for DLA core N (Jetson)"},
    "gpu_fallback": {"action": argparse.BooleanOptionalAction,
                     "help": "with --dla-core: run layers DLA cannot on the GPU (trtexec "
                             "--allowGPUFallback; default on, --no-gpu-fallback fails the "
                             "build instead, as trtexec does without the flag)"},
    "timing_cache": {"metavar": "FILE", "help": "TensorRT timing cache to read and update"},
    "hardware_compatibility": {"choices": ["none", "ampere+", "same-compute-capability"],
                               "help": "TensorRT plans that load on other GPUs (slower), as "
                                       "trtexec --hardwareCompatibilityLevel: ampere+ = "
                                       "HardwareCompatibilityLevel.AMPERE_PLUS"},
    "version_compatible": {"action": "store_true", "default": None,
                           "help": "TensorRT plan that loads on later TensorRT versions"},
    "threads": {"type": int, "metavar": "N",
                "help": "ONNX Runtime intra-op / OpenVINO inference threads (0 = all)"},
    "graph_optimization": {"choices": ["basic", "extended", "layout", "all"],
                           "help": "ONNX Runtime optimisation level saved into the engine"},
    "ov_device": {"metavar": "CPU|GPU[.N]|NPU|AUTO", "type": str.upper,
                  "help": "OpenVINO device to compile for (default CPU; GPU/NPU need Intel "
                          "hardware and are unverified here; AUTO cannot be exported)"},
    "performance_hint": {"choices": ["LATENCY", "THROUGHPUT"], "type": str.upper,
                         "help": "OpenVINO: LATENCY (cameras: one stream, all threads on a "
                                 "frame) or THROUGHPUT (files: several streams in parallel)"},
    "streams": {"type": int, "metavar": "N",
                "help": "OpenVINO NUM_STREAMS (0 = the hint's choice)"},
    "infer_requests": {"type": int, "metavar": "N",
                       "help": "OpenVINO asynchronous infer requests kept in flight by "
                               "`edgeseg run` (0 = max(2, OpenVINO's optimal number))"},
    "inference_precision": {"choices": ["f32", "bf16", "f16"],
                            "help": "OpenVINO precision of the layers outside Q/DQ pairs "
                                    "(default f32: the ONNX file's numbers; bf16 is faster on "
                                    "AVX512_BF16/AMX CPUs and changes them)"},
}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX file from `edgeseg export` / `edgeseg quantize`")
    parser.add_argument("-o", "--output", metavar="ENGINE",
                        help="engine to write; default MODEL.engine (TensorRT), "
                             "MODEL.ort.onnx (ONNX Runtime) or MODEL.ov.blob (OpenVINO)")
    parser.add_argument("--profile", metavar="YAML",
                        help="build profile, e.g. export/jetson-orin-int8.yaml")
    for key, options in FLAGS.items():
        parser.add_argument(_flag(key), dest=key, **{"default": None, **options})
    cal = parser.add_argument_group("precision conversion (an fp32 ONNX built as fp16/int8/auto)")
    cal.add_argument("--calib", metavar="SPEC|VIDEO",
                     help="int8 calibration frames (target domain), e.g. camvid:DIR:dusk_train")
    cal.add_argument("--calib-frames", type=int, metavar="N", help="calibration frames")
    cal.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"],
                     help="int8 range calibration")
    cal.add_argument("--flavour", choices=["tensorrt", "onnxruntime"],
                     help="int8 Q/DQ form (default: the backend's; OpenVINO: tensorrt, the "
                          "file a Jetson builds too)")
    cal.add_argument("--accuracy-data", metavar="SPEC|VIDEO",
                     help="auto: source/accuracy set scored besides the --calib frames "
                          "(labelled -> mIoU drop); each set must pass the budget")
    cal.add_argument("--min-agreement", type=float, metavar="FRACTION",
                     help="auto: pixel agreement with fp32 a candidate needs on every set")
    cal.add_argument("--max-miou-drop", type=float, metavar="POINTS",
                     help="auto: mIoU points a candidate may lose on every labelled set")
    shapes = parser.add_argument_group("dynamic input shape profile (TensorRT; the `shapes` key)")
    for name in SHAPE_FLAGS:
        shapes.add_argument(f"--{name}-shapes", dest=f"{name}_shapes", metavar="[NAME:]NxHxWxC",
                            help=f"{name} input shape, as trtexec --{name}Shapes "
                                 "(e.g. frame:1x720x1280x3); NAME, if given, must be the "
                                 "ONNX input's")
    add_device_argument(parser, "cuda:N builds the TensorRT plan on GPU N (trtexec --device=N); "
                        "cpu builds a CPU engine (OpenVINO if installed, else ONNX Runtime; "
                        "--backend picks one); default auto", default=None)
    parser.add_argument("-f", "--force", action="store_true",
                        help="overwrite -o (or a variant ONNX) even if another stage wrote it")
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="the builder's full log")


def rebuild_command(model: str | Path, out: str | Path, profile: str | None,
                    flags: dict[str, Any]) -> str:
    """The canonical command line for these inputs (only the flags that were given)."""
    cmd = ["edgeseg", "build-engine", str(model), "-o", str(out)]
    if profile:
        cmd += ["--profile", str(profile)]
    for key, value in flags.items():
        if value is False and FLAGS.get(key, {}).get("action") is argparse.BooleanOptionalAction:
            cmd.append("--no-" + _flag(key)[2:])
        elif value is True:
            cmd.append(_flag(key))
        elif value is not None and value is not False:
            cmd += [_flag(key), str(value)]
    return shlex.join(cmd)


#: --hardware-compatibility spellings (trtexec's) -> the profile's values
HARDWARE_COMPATIBILITY = {"none": "none", "ampere+": "ampere_plus",
                          "same-compute-capability": "same_compute_capability"}

#: conversion flags -> (profile section, key)
CONVERSION_FLAGS = {"calib": ("calibration", "data"), "calib_frames": ("calibration", "frames"),
                    "calib_method": ("calibration", "method"),
                    "flavour": ("calibration", "flavour"),
                    "accuracy_data": ("parity", "data"),
                    "min_agreement": ("parity", "min_agreement"),
                    "max_miou_drop": ("parity", "max_miou_drop")}
SHAPE_FLAGS = ("min", "opt", "max")


def shape_name(text: str) -> str | None:
    """The input name of ``frame:1x720x1280x3`` (trtexec's form; quotes allowed), or None."""
    if ":" not in text:
        return None
    return text.rsplit(":", 1)[0].strip().strip("'\"") or None


def parse_shape(text: str, flag: str) -> list[int]:
    """``frame:1x720x1280x3`` or ``1x720x1280x3`` (trtexec's form) -> [1, 720, 1280, 3]."""
    dims = text.rsplit(":", 1)[-1]
    try:
        shape = [int(d) for d in dims.lower().split("x")]
    except ValueError:
        shape = []
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"{flag} {text!r}: expected NxHxWxC (NHWC frame input) or NxCxHxW, "
                          "four positive dims, e.g. frame:1x720x1280x3")
    return shape


def _with_shapes(profile: Any, args: argparse.Namespace, inputs: list[str] | None = None
                 ) -> Any:
    """--min/opt/max-shapes -> the profile's ``shapes`` (min and max default to opt); a
    name given with a shape must be one of ``inputs`` (the ONNX input names) when known."""
    given = {n: getattr(args, f"{n}_shapes", None) for n in SHAPE_FLAGS}
    if not any(given.values()):
        return profile
    for n, text in given.items():
        name = shape_name(text) if text else None
        if name is not None and inputs is not None and name not in inputs:
            raise ConfigError(f"--{n}-shapes {text!r}: the ONNX has no input {name!r} "
                              f"(inputs: {', '.join(inputs)})")
    if not given["opt"]:
        raise ConfigError("--min-shapes/--max-shapes need --opt-shapes too")
    dims = {n: parse_shape(v, f"--{n}-shapes") for n, v in given.items() if v}
    shapes = ShapeRange(dims.get("min", dims["opt"]), dims["opt"], dims.get("max", dims["opt"]))
    try:
        shapes.validate()
    except ValueError as exc:
        raise ConfigError(f"--min/opt/max-shapes: {exc}") from None
    return replace(profile, shapes=shapes)


def _with_conversion_flags(profile: Any, args: argparse.Namespace) -> Any:
    for flag, (section, key) in CONVERSION_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            profile = replace(profile, **{section: replace(getattr(profile, section),
                                                           **{key: value})})
    return profile


def _outputs(model: Path, out: Path, profile: Any, backend: str) -> list[Path]:
    """Every model file this build writes besides its manifest: engine, variants, caches."""
    paths = [out]
    if profile.precision == "auto":
        paths += [variant_path(out, p)
                  for p in default_candidates(backend, profile.calibration.flavour)
                  if p != "fp32"]
    elif profile.precision not in (None, "auto") and read_metadata(model).precision == "fp32" \
            and profile.precision != "fp32":
        paths.append(variant_path(out, profile.precision))
    return paths


def profile_values(flags: dict[str, Any]) -> dict[str, Any]:
    """Flag values as the profile spells them (``ampere+`` -> ``ampere_plus``)."""
    hw = flags.get("hardware_compatibility")
    return {**flags, "hardware_compatibility": HARDWARE_COMPATIBILITY.get(hw, hw)}


def device_backend(device: Device | None, backend: str | None) -> str | None:
    """The backend ``--device`` implies: cpu -> a CPU backend (the one asked for, else
    OpenVINO when installed, else ONNX Runtime); refuses cpu with tensorrt."""
    if device is None or device.kind != "cpu":
        return backend
    if backend == "tensorrt":
        raise ConfigError("--device cpu with --backend tensorrt: TensorRT builds on a GPU; "
                          "give --device cuda[:N] or --backend openvino/onnxruntime")
    if backend in ("onnxruntime", "openvino"):
        return backend
    from edgeseg.export.build_engine import cpu_backend

    return cpu_backend()


def run(args: argparse.Namespace) -> int:
    flags = {key: getattr(args, key, None) for key in FLAGS}
    device: Device | None = getattr(args, "device", None)
    flags["backend"] = device_backend(device, flags["backend"])
    gpu = device.index if device is not None else 0
    profile = _with_conversion_flags(load_profile(args.profile, profile_values(flags)), args)
    model = Path(args.model)
    profile = _with_shapes(profile, args, [t.name for t in read_metadata(model).inputs]
                           if model.suffix == ".onnx" and model.is_file() else None)
    force = getattr(args, "force", False)
    if args.output:  # before anything is printed: a bad -o is the whole message
        guard_output(args.output, "build-engine", [model], force=force, input_force=False)
        check_outputs([args.output])
    backend = resolve_backend(profile.backend, gpu)
    profile = replace(profile, backend=backend)
    out = Path(args.output) if args.output else default_engine_path(model, backend)
    outputs = _outputs(model, out, profile, backend)
    for path in outputs:
        guard_output(path, "build-engine", [model], force=force, input_force=False)
    timing = profile.timing_cache if backend == "tensorrt" else None
    cache = calib_cache_path(out) if profile.precision == "auto" else None
    check_outputs([*outputs, timing, cache])
    extra = {f: getattr(args, f, None) for f in CONVERSION_FLAGS}
    extra.update({f"{n}_shapes": getattr(args, f"{n}_shapes", None) for n in SHAPE_FLAGS})
    if device is not None and device.is_cuda:
        extra["device"] = device.torch
    command = rebuild_command(args.model, out, args.profile,
                              {**flags, **extra, "backend": backend})
    if profile.precision == "auto":
        manifest = choose_precision(model, out, profile, command, device=gpu)
    else:
        found = read_metadata(model).precision
        if profile.precision not in (None, found) and found == "fp32":
            # precision lives in the graph: make the variant beside the engine, then build it
            variant = variant_path(out, profile.precision)
            cal = profile.calibration
            make_variant(model, variant, profile.precision, calib=cal.data,
                         calib_frames=cal.frames, method=cal.method,
                         flavour=cal.flavour or default_flavour(backend), made_by="build-engine")
            print(f"made {variant} ({profile.precision}) from {model}")
            model, profile = variant, replace(profile, precision=None)
        manifest = build_engine(model, out, profile, command,
                                verbose=getattr(args, "verbose", False), device=gpu)
    print(f"{out}: {manifest.precision} {manifest.describe()}")
    return 0
