"""``edgeseg compare A B [--data SPEC]``: two of checkpoint / ONNX / engine, segmentation-aware.

Both files are opened by `open_predictor` (as eval and bench open them), run on the
same frames (`open_frames`, each fitted by the runtime's `fit_frame`) and scored by
`PairScorer`: pixel agreement, agreement inside a band around object boundaries (where
quantisation errors show first), and with a labelled ``--data`` mIoU and per-class IoU
deltas at the frames' size, so compare, bench and ``--precision auto`` print the same
numbers for the same two files.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from edgeseg.argtypes import Device, add_device_argument, parse_device, positive_int
from edgeseg.errors import EdgesegError
from edgeseg.metrics import Thresholds, compare_summaries


def compare_models(a: str | Path, b: str | Path, data: str | None = None, frames: int = 16,
                   min_agreement: float = 0.99, device: Device | str = "cpu",
                   band: int = 3) -> dict[str, Any]:
    """Compare two models on the same frames; returns a JSON-friendly summary.

    ``device`` (``cpu``, ``cuda[:N]``, ``auto``) places both models as ``--device`` does.
    A checkpoint runs at the other model's input size, as an engine of that size would.
    """
    from edgeseg.evaluate import PairScorer
    from edgeseg.export.predictors import open_predictor
    from edgeseg.runtime.frames import SYNTHETIC_SIZE, open_frames

    a, b = Path(a), Path(b)
    dev = device if isinstance(device, Device) else parse_device(device)
    with contextlib.ExitStack() as stack:
        pa = open_predictor(a, dev)
        stack.callback(pa.close)
        pb = open_predictor(b, dev)
        stack.callback(pb.close)
        if pa.label_space != pb.label_space:
            raise EdgesegError(f"{a} predicts {pa.label_space}, {b} predicts {pb.label_space}: "
                               "not comparable")
        if pa.size and pb.size and pa.size != pb.size:
            raise EdgesegError(f"{a} takes {pa.size[1]}x{pa.size[0]} frames, {b} {pb.size[1]}x"
                               f"{pb.size[0]}: export both at the same size")
        size = pa.size or pb.size
        for p in (pa, pb):
            if p.kind == "torch" and p.size is None:
                p.size = size
        sample = open_frames(data, frames, model_space=pa.label_space,
                             size=size or SYNTHETIC_SIZE)
        scorer = PairScorer(pa.label_space, sample.label_space, band)
        for frame in sample:
            scorer.update(pa(frame.image), pb(frame.image), frame.label, frame.name)
    if scorer.frames == 0:
        raise EdgesegError(f"{data}: no frames to compare on")
    summary: dict[str, Any] = {
        "a": str(a), "b": str(b), "frames": scorer.frames, "data": sample.spec,
        "pixel_agreement": scorer.agreement, "boundary_agreement": scorer.boundary_agreement,
        "passed": Thresholds(min_agreement=min_agreement).passes(scorer.agreement),
        "min_agreement": min_agreement,
    }
    both = scorer.metrics()
    if both is not None:
        ma, mb = both
        summary.update(miou_a=ma.miou, miou_b=mb.miou, per_class_a=ma.per_class,
                       per_class_b=mb.per_class, table=compare_summaries(ma, mb, a.name, b.name))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="checkpoint (.pt), ONNX file or engine")
    parser.add_argument("b", help="checkpoint (.pt), ONNX file or engine")
    parser.add_argument("--data", metavar="SPEC|VIDEO", help="frames (a labelled spec: mIoU "
                        "deltas too); default synthetic day/night scenes")
    parser.add_argument("--max-frames", type=positive_int, default=16, metavar="N",
                        help="frames to compare, spread over --data (default 16)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="pixel agreement that passes (default 0.99)")
    add_device_argument(parser, "a checkpoint runs in PyTorch there; a plain ONNX on ONNX Runtime's "
                        "CUDA provider for cuda[:N]; a TensorRT plan on GPU N (default auto)")
    parser.add_argument("--json", metavar="OUT", help="write the summary as JSON (- = stdout)")


def run(args: argparse.Namespace) -> int:
    from edgeseg.fileio import check_outputs, write_json

    check_outputs([args.json])  # before the models run
    text = sys.stderr if args.json == "-" else sys.stdout  # stdout carries only the JSON then
    summary = compare_models(args.a, args.b, args.data, args.max_frames, args.min_agreement,
                             args.device)
    band = summary["boundary_agreement"]
    print(f"{summary['a']} vs {summary['b']} on {summary['frames']} frames of {summary['data']}",
          file=text)
    print(f"pixel agreement     {100 * summary['pixel_agreement']:.3f} %", file=text)
    print("boundary agreement  " + ("n/a" if band is None else f"{100 * band:.3f} %")
          + " (3 px band around edges)", file=text)
    if "table" in summary:
        print(summary.pop("table"), file=text)
    gate = Thresholds(min_agreement=args.min_agreement).describe()
    print(f"PASSED ({gate})" if summary["passed"] else f"FAILED: {gate} does not hold",
          file=text)
    if args.json:
        write_json(args.json, summary)
    return 0 if summary["passed"] else 1
