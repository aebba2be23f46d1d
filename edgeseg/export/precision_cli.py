"""``edgeseg quantize MODEL.onnx -o OUT --precision fp16|int8 ...``: the fp16 or int8 variant.

fp16 needs no data. int8 needs calibration frames (``--calib`` video or
dataset spec) unless ``--cache`` already holds ranges for this exact ONNX.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.export.calibration import input_contract, load_frames
from edgeseg.export.int8 import FLAVOURS, METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="fp32 ONNX from `edgeseg export`")
    parser.add_argument("-o", "--output", required=True, help="ONNX file to write")
    parser.add_argument("--precision", choices=("fp16", "int8"), required=True)
    parser.add_argument("--calib", metavar="SPEC|VIDEO",
                        help="int8 calibration frames: a dataset spec NAME:ROOT[:SPLIT] or a video")
    parser.add_argument("--calib-frames", type=int, default=64, metavar="N",
                        help="calibration frames to use (default 64)")
    parser.add_argument("--calib-every", type=int, default=10, metavar="K",
                        help="video: take every K-th frame (default 10)")
    parser.add_argument("--method", choices=list(METHODS), default="minmax",
                        help="int8 range calibration (default minmax)")
    parser.add_argument("--flavour", choices=FLAVOURS, default="tensorrt",
                        help="int8 Q/DQ form: tensorrt (symmetric, the only one TensorRT parses) "
                             "or onnxruntime (fastest on ONNX Runtime CPU)")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="NODE",
                        help="int8: node names or op types to keep in float")
    parser.add_argument("--keep-fp32", nargs="+", default=[], metavar="NAME",
                        help="fp16: node names or op types to keep in fp32")
    parser.add_argument("--cache", metavar="FILE",
                        help="int8 calibration cache (JSON): reused if it matches the model, "
                             "else written")


def run(args: argparse.Namespace) -> int:
    if args.precision == "fp16":
        if args.calib or args.exclude or args.cache:
            raise EdgesegError("--calib/--exclude/--cache apply to --precision int8 only")
        from edgeseg.export.fp16 import convert_fp16

        out = convert_fp16(args.model, args.output, keep_fp32=args.keep_fp32)
    else:
        if args.keep_fp32:
            raise EdgesegError("--keep-fp32 applies to --precision fp16; use --exclude for int8")
        if not args.calib and not (args.cache and Path(args.cache).is_file()):
            raise EdgesegError("int8 needs calibration frames: --calib VIDEO|NAME:ROOT[:SPLIT] "
                               "(or --cache FILE with ranges for this model)")
        from edgeseg.export.int8 import quantize_int8

        frames = None
        if args.calib and not (args.cache and Path(args.cache).is_file()):
            frames = load_frames(args.calib, input_contract(args.model), args.calib_frames,
                                 args.calib_every)
        out = quantize_int8(args.model, args.output, frames, method=args.method,
                            flavour=args.flavour, exclude=args.exclude, cache=args.cache,
                            source=args.calib or "")
    size = Path(out).stat().st_size / 1e6
    print(f"wrote {out} ({args.precision}, {size:.1f} MB)")
    return 0
