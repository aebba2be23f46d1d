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

from edgeseg.export.build_engine import (
    build_engine,
    default_engine_path,
    load_profile,
    resolve_backend,
)
from edgeseg.export.metadata import read_metadata
from edgeseg.export.variants import choose_precision, make_variant

#: profile keys settable from the command line: key -> argparse options (flag = --key-with-dashes)
FLAGS: dict[str, dict[str, Any]] = {
    "backend": {"choices": ["auto", "tensorrt", "onnxruntime"],
                "help": "auto = TensorRT if installed with a CUDA GPU, else ONNX Runtime (CPU)"},
    "precision": {"choices": ["fp32", "fp16", "int8", "best"],
                  "help": "must match the ONNX file's precision (default: the file's own)"},
    "workspace_mb": {"type": int, "metavar": "MB", "help": "TensorRT workspace limit"},
    "opt_level": {"type": int, "metavar": "N", "help": "TensorRT builder optimisation level 0..5"},
    "dla_core": {"type": int, "metavar": "N", "help": "build for DLA core N (Jetson), GPU fallback"},
    "timing_cache": {"metavar": "FILE", "help": "TensorRT timing cache to read and update"},
    "hardware_compatibility": {"choices": ["none", "ampere_plus", "same_compute_capability"],
                               "help": "TensorRT plans that load on other GPUs (slower)"},
    "version_compatible": {"action": "store_true", "default": None,
                           "help": "TensorRT plan that loads on later TensorRT versions"},
    "threads": {"type": int, "metavar": "N", "help": "ONNX Runtime intra-op threads (0 = all)"},
    "graph_optimization": {"choices": ["basic", "extended", "layout", "all"],
                           "help": "ONNX Runtime optimisation level saved into the engine"},
}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX file from `edgeseg export` / `edgeseg quantize`")
    parser.add_argument("-o", "--output", metavar="ENGINE",
                        help="engine to write; default MODEL.engine (TensorRT) or "
                             "MODEL.ort.onnx (ONNX Runtime)")
    parser.add_argument("--profile", metavar="YAML",
                        help="build profile, e.g. export/jetson-orin-int8.yaml")
    for key, options in FLAGS.items():
        parser.add_argument(_flag(key), dest=key, **{"default": None, **options})
    cal = parser.add_argument_group("precision conversion (an fp32 ONNX built as fp16/int8/best)")
    cal.add_argument("--calib", metavar="SPEC|VIDEO",
                     help="int8 calibration frames (target domain), e.g. camvid:DIR:dusk_train")
    cal.add_argument("--calib-frames", type=int, metavar="N", help="calibration frames")
    cal.add_argument("--method", choices=["minmax", "entropy", "percentile"],
                     help="int8 range calibration")
    cal.add_argument("--accuracy-data", metavar="SPEC|VIDEO",
                     help="best: set to score candidates on (labelled -> mIoU drop); "
                          "default the calibration data")
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="the builder's full log")


def rebuild_command(model: str | Path, out: str | Path, profile: str | None,
                    flags: dict[str, Any]) -> str:
    """The canonical command line for these inputs (only the flags that were given)."""
    cmd = ["edgeseg", "build-engine", str(model), "-o", str(out)]
    if profile:
        cmd += ["--profile", str(profile)]
    for key, value in flags.items():
        if value is True:
            cmd.append(_flag(key))
        elif value is not None and value is not False:
            cmd += [_flag(key), str(value)]
    return shlex.join(cmd)


#: conversion flags -> (profile section, key)
CONVERSION_FLAGS = {"calib": ("calibration", "data"), "calib_frames": ("calibration", "frames"),
                    "method": ("calibration", "method"), "accuracy_data": ("parity", "data")}


def _with_conversion_flags(profile: Any, args: argparse.Namespace) -> Any:
    for flag, (section, key) in CONVERSION_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            profile = replace(profile, **{section: replace(getattr(profile, section),
                                                           **{key: value})})
    return profile


def run(args: argparse.Namespace) -> int:
    flags = {key: getattr(args, key, None) for key in FLAGS}
    profile = _with_conversion_flags(load_profile(args.profile, flags), args)
    backend = resolve_backend(profile.backend)
    profile = replace(profile, backend=backend)
    out = Path(args.output) if args.output else default_engine_path(args.model, backend)
    extra = {f: getattr(args, f, None) for f in CONVERSION_FLAGS}
    command = rebuild_command(args.model, out, args.profile,
                              {**flags, **extra, "backend": backend})
    model = Path(args.model)
    if profile.precision == "best":
        manifest = choose_precision(model, out, profile, command)
    else:
        found = read_metadata(model).precision
        if profile.precision not in (None, found) and found == "fp32":
            # precision lives in the graph: make the variant beside the engine, then build it
            variant = out.with_name(f"{out.name.split('.')[0]}.{profile.precision}.onnx")
            cal = profile.calibration
            make_variant(model, variant, profile.precision, calib=cal.data,
                         calib_frames=cal.frames, method=cal.method,
                         flavour=cal.flavour or backend)
            print(f"made {variant} ({profile.precision}) from {model}")
            model, profile = variant, replace(profile, precision=None)
        manifest = build_engine(model, out, profile, command,
                                verbose=getattr(args, "verbose", False))
    print(f"{out}: {manifest.precision} {manifest.describe()}")
    return 0
