"""``edgeseg lint MODEL.onnx [--dla] [--trt 10|11|11.4.1]``: TensorRT pre-flight check, no GPU.

Exit status 1 when any finding is an error (the build would fail), else 0, so
it can gate a CI job or a Makefile target before a slow on-target build.
"""

from __future__ import annotations

import argparse

from edgeseg.errors import EdgesegError
from edgeseg.export.lint import TrtTarget, dla_coverage, exit_code, format_findings, lint


def _target(text: str) -> str:
    try:
        TrtTarget.parse(text)
    except EdgesegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX file to check")
    parser.add_argument("--dla", action="store_true",
                        help="also check what the Jetson DLA runs (the rest falls back to GPU) "
                             "and print the share of layers DLA can take")
    parser.add_argument("--trt", type=_target, default="10", metavar="VERSION",
                        help="TensorRT version of the target: 10, 11, or exact (11.4.1) for the "
                             "limits that depend on the minor release: opset 25 from 11.5, "
                             "DLA up to 10.7 and from 11.4.1 (default 10)")


def run(args: argparse.Namespace) -> int:
    findings = lint(args.model, dla=args.dla, trt_version=args.trt)
    print(f"{args.model}: TensorRT {args.trt}{' + DLA' if args.dla else ''}")
    if args.dla:
        print(dla_coverage(args.model))
    print(format_findings(findings))
    return exit_code(findings)
