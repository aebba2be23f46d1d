"""``edgeseg lint MODEL.onnx [--dla] [--trt 10|11]``: TensorRT pre-flight check, no GPU needed.

Exit status 1 when any finding is an error (the build would fail), else 0, so
it can gate a CI job or a Makefile target before a slow on-target build.
"""

from __future__ import annotations

import argparse

from edgeseg.export.lint import MAX_OPSET, exit_code, format_findings, lint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX file to check")
    parser.add_argument("--dla", action="store_true",
                        help="also check what the Jetson DLA runs (the rest falls back to GPU)")
    parser.add_argument("--trt", type=int, choices=sorted(MAX_OPSET), default=10,
                        help="TensorRT major version of the target (default 10)")


def run(args: argparse.Namespace) -> int:
    findings = lint(args.model, dla=args.dla, trt_major=args.trt)
    print(f"{args.model}: TensorRT {args.trt}{' + DLA' if args.dla else ''}")
    print(format_findings(findings))
    return exit_code(findings)
