"""``edgeseg export CKPT -o model.onnx [--network NAME]``: export, gate on parity, publish.

Without ``--network`` the file is what the checkpoint's method deploys: its
pre-networks (e.g. a relighting net), segmenter and class bias composed into one
graph, or the bare segmenter (the composition is recorded in ``extra.deploy``).
``--network NAME`` exports one stored network alone: a segmenter (e.g. the student
``model`` where the method deploys an EMA ``teacher``), or a translator / prenet as
a uint8 frame -> uint8 frame engine for ``edgeseg run/eval/bench --translator``.

The ONNX file is written under a temp name, checked against the checkpoint's
PyTorch network on sample frames (`parity.FP32` for segmenters, `parity.IMAGE_FP32`
for image networks), and renamed to its final name only if the gate passes, so a
model.onnx on disk has always passed parity.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeseg.argtypes import add_device_argument, parse_hw, parse_luma, torch_device
from edgeseg.contract.metadata import read_metadata
from edgeseg.export.gate import check_translate_below, record_translate_below
from edgeseg.export.onnx_export import (
    INPUT_FORMATS,
    LABELS_DTYPES,
    OUTPUT_KINDS,
    ExportError,
    ExportOptions,
    ExportResult,
    ExportSource,
)
from edgeseg.export.outputs import guard_output
from edgeseg.export.parity import (
    FP32,
    IMAGE_FP32,
    ImageParityReport,
    ImageThresholds,
    ParityError,
    ParityReport,
    check_image_parity,
    check_onnx_parity,
    sample_frames,
)
from edgeseg.fileio import atomic_path, check_outputs, sha256_file
from edgeseg.metrics import Thresholds

#: the segmenter-only flags, with the value each takes when not given
SEGMENTER_FLAGS = {"input_format": "uint8-nhwc-bgr", "output_kind": "labels",
                   "labels_dtype": "uint8"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="training checkpoint (.pt), e.g. runs/x/best.pt")
    parser.add_argument("-o", "--output", required=True, metavar="ONNX",
                        help="ONNX file to write, e.g. model.onnx")
    parser.add_argument("--network", metavar="NAME",
                        help="export this stored network alone: a segmenter (e.g. model, the "
                             "student, where the method deploys its EMA teacher), or a "
                             "translator / relighting prenet as a uint8 frame -> uint8 frame "
                             "engine for --translator; default: what the method deploys "
                             "(pre-networks -> segmenter -> class bias in one graph)")
    parser.add_argument("--size", type=parse_hw, default=(256, 512), metavar="WxH",
                        help="input size (the opt size if --dynamic); default 512x256")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic batch/height/width (TensorRT needs a shape profile)")
    for name, default in (("min", "half --size"), ("opt", "--size"), ("max", "twice --size")):
        parser.add_argument(f"--{name}-size", type=parse_hw, metavar="WxH",
                            help=f"--dynamic profile {name} size; default {default}")
    parser.add_argument("--max-batch", type=int, default=1, metavar="N",
                        help="--dynamic profile max batch; default 1")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset; default 17")
    # segmenter-only flags default to None so a translator export can tell them given
    parser.add_argument("--input-format", choices=INPUT_FORMATS,
                        help="segmenters: graph input: camera frame (preprocessing in the "
                             "graph) or a normalised RGB tensor; default uint8-nhwc-bgr")
    parser.add_argument("--output-kind", choices=OUTPUT_KINDS,
                        help="segmenters: graph output: class map (argmax in the graph), "
                             "logits or softmax probabilities; default labels")
    parser.add_argument("--labels-dtype", choices=LABELS_DTYPES,
                        help="segmenters: class map dtype for --output-kind labels; "
                             "default uint8")
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    parser.add_argument("--parity-data", metavar="SPEC",
                        help="dataset spec NAME:ROOT[:SPLIT] for parity frames; default "
                             "synthetic scenes")
    parser.add_argument("--parity-frames", type=int, default=8, metavar="N",
                        help="frames for the parity gate; default 8")
    add_device_argument(parser, "where the parity gate runs the PyTorch reference (the graph is "
                        "always traced on the CPU); default cpu", default="cpu")
    parser.add_argument("--skip-parity", action="store_true",
                        help="publish without the parity gate (not recommended)")
    parser.add_argument("--translate-below", metavar="LUMA", type=parse_luma,
                        help="translator / relighting net: record the mean-luma gate "
                             "`edgeseg run/eval` apply (frames at or above LUMA skip it), "
                             "e.g. from benchmarks/luma_gate.py")
    parser.add_argument("-f", "--force", action="store_true",
                        help="overwrite -o even if it is the checkpoint or another stage's file")


def _flag(args: argparse.Namespace, name: str) -> str:
    value = getattr(args, name, None)
    return SEGMENTER_FLAGS[name] if value is None else value


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    h, w = args.size
    return ExportOptions(
        height=h, width=w, dynamic=args.dynamic, min_size=args.min_size, opt_size=args.opt_size,
        max_size=args.max_size, max_batch=args.max_batch, opset=args.opset,
        input_format=_flag(args, "input_format"),  # type: ignore[arg-type]
        output=_flag(args, "output_kind"),  # type: ignore[arg-type]
        labels_dtype=_flag(args, "labels_dtype"),  # type: ignore[arg-type]
        simplify=not args.no_simplify)


def segmenter_flags(args: argparse.Namespace) -> list[str]:
    """The segmenter-only flags given with a value an image network cannot have (an
    explicit ``--input-format uint8-nhwc-bgr`` is what every image network takes)."""
    given = []
    for name in SEGMENTER_FLAGS:
        value = getattr(args, name, None)
        if value is None or (name == "input_format" and value == SEGMENTER_FLAGS[name]):
            continue
        given.append(f"--{name.replace('_', '-')} {value}")
    return given


def parity_frames_for(options: ExportOptions, spec: str | None, count: int) -> list[np.ndarray]:
    """``count`` frames at the export size; dynamic exports add one at min and one at max."""
    frames = sample_frames(spec, (options.height, options.width), count)
    if options.dynamic:
        for i, size in enumerate((options.min_size, options.max_size)):
            frames += sample_frames(spec, size, 1, seed=count + i)
    return frames


def export_gated(ckpt_path: str | Path, out_path: str | Path, options: ExportOptions,
                 parity_data: str | None = None, parity_frames: int = 8,
                 thresholds: Thresholds = FP32, device: str = "cpu",
                 network: str | None = None, image_thresholds: ImageThresholds = IMAGE_FP32,
                 segmenter_only: list[str] | None = None, image_only: list[str] | None = None,
                 translate_below: float | None = None
                 ) -> tuple[ExportResult, ParityReport | ImageParityReport | None]:
    """Export, then publish ``out_path`` only if parity passes (``parity_frames=0`` skips).

    ``network``: None for what the checkpoint deploys, else one stored network
    (`ExportSource.open`); an image network is gated by ``image_thresholds``, a segmenter
    by ``thresholds``. ``segmenter_only``: segmenter flags the caller was given, refused
    for an image network; ``image_only`` the other way round. ``device`` is where the
    PyTorch reference runs (a torch device string; the graph is always traced on the CPU).
    ``translate_below``: the mean-luma gate written into an image network's metadata before
    the file is published, so no published file lacks it (refused for a segmenter).

    Raises `ParityError` (carrying the report) and leaves no file when the gate fails.
    """
    out = Path(out_path)
    options.validate()
    if translate_below is not None:
        check_translate_below(translate_below, out)
        image_only = [*(image_only or []), f"--translate-below {translate_below:g}"]
    source = ExportSource.open(ckpt_path, network)
    if source.is_image and segmenter_only:
        raise ExportError(f"{', '.join(segmenter_only)}: segmenter flags; {source.label} is "
                          "an image network (uint8 BGR frame in, uint8 BGR frame out)")
    if not source.is_image and image_only:
        raise ExportError(f"{', '.join(image_only)}: a flag of translators and relighting "
                          f"nets; {source.label} is a segmenter (give --network NAME)")
    frames = parity_frames_for(options, parity_data, parity_frames) if parity_frames else []
    report: ParityReport | ImageParityReport | None = None
    with atomic_path(out) as tmp:
        module = source.load()
        result = source.export(tmp, options, module)
        if translate_below is not None:
            record_translate_below(tmp, translate_below)
            # the summary describes the published file: the gate in its metadata, its hash
            result = replace(result, metadata=read_metadata(tmp), sha256=sha256_file(tmp))
        if frames:
            reference = source.reference(module.to(device), options)
            if source.is_image:
                report = check_image_parity(tmp, reference, frames, image_thresholds)
            else:
                report = check_onnx_parity(tmp, reference, frames, thresholds)
            if not report.passed:
                raise ParityError(report, out)
    return replace(result, path=out), report


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    options.validate()
    guard_output(args.output, "export", [args.checkpoint], force=args.force)
    check_outputs([args.output])
    frames = 0 if args.skip_parity else args.parity_frames
    try:
        result, report = export_gated(args.checkpoint, args.output, options, args.parity_data,
                                      frames, device=torch_device(args.device),
                                      network=args.network,
                                      segmenter_only=segmenter_flags(args),
                                      translate_below=args.translate_below)
    except ParityError as err:
        print(err.report.format(), file=sys.stderr)
        print(f"{args.output}: not written (the exported graph disagrees with {args.checkpoint})",
              file=sys.stderr)
        return 1
    if result.metadata.translate_below is not None:
        print(f"gate: frames with mean luma below {result.metadata.translate_below:g} are "
              "translated, the rest pass straight to the segmenter "
              "(edgeseg.extra.translate_below)")
    print(result.summary())
    print(report.format() if report else "parity gate SKIPPED: the graph was not compared "
          "with the checkpoint")
    return 0
