"""``edgeseg quantize MODEL.onnx -o OUT --precision fp16|int8 ...``: the fp16 or int8 variant.

fp16 needs no data. int8 needs calibration frames (``--calib`` video or
dataset spec) unless ``--calib-cache`` already holds ranges for this exact ONNX.
``--high-precision-dtype fp16`` (ModelOpt's ``--high_precision_dtype``) makes the int8 file
fp16 outside its Q/DQ pairs: a strongly typed TensorRT engine (every TensorRT 11 engine)
keeps each tensor's ONNX type, so this is how it runs int8 + fp16 as TensorRT 10's
``--int8 --fp16`` did.
A translator or relighting net (uint8 frame in and out) is calibrated through the same
frame input and keeps its output layer and output conversion in float (`int8`, `fp16`);
``edgeseg compare FP32 VARIANT`` measures what its variant costs (PSNR, SSIM, mIoU after).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeseg.argtypes import non_negative_int
from edgeseg.export.int8 import FLAVOURS, HIGH_PRECISION, METHODS
from edgeseg.export.outputs import guard_output
from edgeseg.export.variants import make_variant
from edgeseg.fileio import check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="fp32 ONNX from `edgeseg export` (a segmenter, or an "
                        "image network exported with --network)")
    parser.add_argument("-o", "--output", required=True, help="ONNX file to write")
    parser.add_argument("--precision", choices=("fp16", "int8"), required=True)
    parser.add_argument("--calib", metavar="SPEC|VIDEO",
                        help="int8 calibration frames: a dataset spec NAME:ROOT[:SPLIT] or a video")
    parser.add_argument("--calib-frames", type=int, default=64, metavar="N",
                        help="calibration frames to use (default 64)")
    parser.add_argument("--calib-every", type=non_negative_int, default=10, metavar="K",
                        help="video/folder: spread the frames over the first N*K frames "
                             "(default 10; 0 = the whole stream)")
    parser.add_argument("--calib-method", choices=list(METHODS), default="minmax",
                        help="int8 range calibration (default minmax)")
    parser.add_argument("--flavour", choices=FLAVOURS, default="tensorrt",
                        help="int8 Q/DQ form: tensorrt (symmetric, the only one TensorRT parses) "
                             "or onnxruntime (fastest on ONNX Runtime CPU)")
    parser.add_argument("--high-precision-dtype", choices=HIGH_PRECISION, default="fp32",
                        help="int8: the type of every layer outside the Q/DQ pairs (as "
                             "ModelOpt's --high_precision_dtype). fp16: what a strongly typed "
                             "TensorRT engine (TensorRT 11, or 10 with STRONGLY_TYPED) needs to "
                             "run them in fp16, as --int8 --fp16 did; Q/DQ also on residual Add "
                             "inputs, pooling and conv-fed Resizes, opset 19, tensorrt flavour "
                             "only. Default fp32")
    parser.add_argument("--keep-fp32", nargs="+", default=[], metavar="NODE",
                        help="node names or op types left in fp32 (not converted to fp16, not "
                             "quantised to int8), e.g. --keep-fp32 Resize")
    parser.add_argument("--calib-cache", metavar="FILE",
                        help="int8 calibration cache (JSON): reused if it matches the model, "
                             "else written")
    parser.add_argument("-f", "--force", action="store_true",
                        help="overwrite -o even if it is the input or another stage's file")


def run(args: argparse.Namespace) -> int:
    guard_output(args.output, "quantize", [args.model], force=args.force)
    check_outputs([args.output])
    out = make_variant(args.model, args.output, args.precision, calib=args.calib,
                       calib_frames=args.calib_frames, calib_every=args.calib_every,
                       method=args.calib_method, flavour=args.flavour,
                       keep_fp32=args.keep_fp32, cache=args.calib_cache,
                       high_precision=args.high_precision_dtype)
    size = Path(out).stat().st_size / 1e6
    kind = args.precision + ("+fp16" if args.high_precision_dtype == "fp16" else "")
    print(f"wrote {out} ({kind}, {size:.1f} MB)")
    return 0
