"""``edgeseg compare A B [--data SPEC]``: two of checkpoint / ONNX / engine, segmentation-aware.

Both files are opened by `open_predictor` (as eval and bench open them), run on the
same frames (`open_frames`, each fitted by the runtime's `fit_frame`) and scored by
`PairScorer`: pixel agreement, agreement inside a band around object boundaries (where
quantisation errors show first), and with a labelled ``--data`` mIoU and per-class IoU
deltas at the frames' size, so compare, bench and ``--precision auto`` print the same
numbers for the same two files.

Two image networks (metadata ``network`` translator or relighting, e.g. a translator and
its int8 variant) are compared as images instead (`compare_images`): each runs as the
runtime's `TranslateStage` on the same frames, and the translated frames are scored by
`metrics.psnr` and `metrics.ssim`; with ``--segmenter S`` also by S's mIoU after each, run
as `TranslatedPredictor` (the chain of ``edgeseg eval S --translator T``) and scored by
`PairScorer`, so compare and eval report the same mIoU.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.argtypes import Device, add_device_argument, parse_device, positive_int
from edgeseg.errors import EdgesegError
from edgeseg.metrics import Thresholds, compare_summaries, psnr, ssim
from edgeseg.runtime.stages import IMAGE_NETWORKS

#: PSNR (dB) every frame of an image network's variant must reach against the reference.
#: Measured on small ResNet generators: fp16 67-75 dB, int8 tensorrt flavour 46-52 dB,
#: onnxruntime flavour 36-40 dB; entropy-calibrated int8, which clips highlights, 29 dB
DEFAULT_MIN_PSNR = 30.0


def network_of(path: str | Path) -> str:
    """The metadata ``network`` of an ONNX file or engine (``segmenter``, ``translator``,
    ``relighting``); ``segmenter`` for a checkpoint (what it deploys), "" where it cannot be
    read (opening the file then says why)."""
    from edgeseg.contract.manifest import manifest_path, read_manifest
    from edgeseg.contract.metadata import read_metadata
    from edgeseg.runtime.predictor import is_checkpoint

    p = Path(path)
    if is_checkpoint(p):
        return "segmenter"
    if not p.is_file():
        return ""
    try:
        if manifest_path(p).is_file():
            return read_manifest(p).model_metadata(str(p)).network
        return read_metadata(p).network
    except EdgesegError:
        return ""


def compare_models(a: str | Path, b: str | Path, data: str | None = None, frames: int = 16,
                   min_agreement: float = 0.99, device: Device | str = "cpu",
                   band: int = 3, *, min_psnr: float | None = None,
                   segmenter: str | Path | None = None) -> dict[str, Any]:
    """Compare two models on the same frames; returns a JSON-friendly summary.

    ``device`` (``cpu``, ``cuda[:N]``, ``auto``) places both models as ``--device`` does.
    A checkpoint runs at the other model's input size, as an engine of that size would.
    Two image networks go to `compare_images` (``min_psnr``, ``segmenter``); an image
    network and a segmenter are not comparable.
    """
    from edgeseg.evaluate import PairScorer
    from edgeseg.export.predictors import open_predictor
    from edgeseg.runtime.frames import SYNTHETIC_SIZE, open_frames

    a, b = Path(a), Path(b)
    kinds = network_of(a), network_of(b)
    images = [kind in IMAGE_NETWORKS for kind in kinds]
    if all(images):
        return compare_images(a, b, data, frames, device=device, band=band,
                              min_psnr=DEFAULT_MIN_PSNR if min_psnr is None else min_psnr,
                              segmenter=segmenter)
    if any(images):
        (image, kind), other = ((a, kinds[0]), b) if images[0] else ((b, kinds[1]), a)
        raise EdgesegError(f"{image} is an image network ({kind}), {other} a segmenter: "
                           "compare two image networks or two segmenters (a segmenter "
                           "after two translators: `edgeseg compare T1 T2 --segmenter S`)")
    if min_psnr is not None or segmenter is not None:
        raise EdgesegError(f"{a} and {b} are segmenters: --min-psnr and --segmenter apply to "
                           "two image networks (translator, relighting); drop them")
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


def compare_images(a: str | Path, b: str | Path, data: str | None = None, frames: int = 16,
                   *, min_psnr: float = DEFAULT_MIN_PSNR, segmenter: str | Path | None = None,
                   device: Device | str = "cpu", band: int = 3) -> dict[str, Any]:
    """Two image networks (uint8 BGR frame in and out) on the same frames: per-frame and mean
    PSNR and SSIM of B's translated frames against A's, at the frames' size.

    ``segmenter``: also S's class maps after A and after B (`TranslatedPredictor`, as
    ``edgeseg eval S --translator``), their pixel agreement and, on labelled frames, each
    mIoU. Passes when every frame's PSNR is >= ``min_psnr`` dB: a mean over frames would
    hide the one scene (a dark frame, a highlight) int8 ranges do not fit. Identical frames
    have PSNR inf: JSON null, counted in ``identical_frames`` and left out of the mean.
    """
    from edgeseg.evaluate import PairScorer
    from edgeseg.export.predictors import open_predictor
    from edgeseg.runtime.frames import SYNTHETIC_SIZE, open_frames
    from edgeseg.runtime.predictor import open_translator
    from edgeseg.runtime.sources import SourceFrame
    from edgeseg.runtime.stages import Packet, TranslatedPredictor

    a, b = Path(a), Path(b)
    dev = device if isinstance(device, Device) else parse_device(device)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        stages = []
        for path in (a, b):
            stage = open_translator(path, dev)
            stack.callback(stage.backend.close)
            stages.append(stage)
        sa, sb = stages
        if sa.size and sb.size and sa.size != sb.size:
            raise EdgesegError(f"{a} takes {sa.size[1]}x{sa.size[0]} frames, {b} {sb.size[1]}x"
                               f"{sb.size[0]}: export both at the same size")
        size = sa.size or sb.size
        seg = None
        if segmenter is not None:
            seg = open_predictor(segmenter, dev)
            stack.callback(seg.close)
        sample = open_frames(data, frames, model_space=seg.label_space if seg else None,
                             size=size or SYNTHETIC_SIZE)
        runners = ([TranslatedPredictor(s, seg).process for s in stages] if seg is not None
                   else [s.process for s in stages])
        scorer = PairScorer(seg.label_space, sample.label_space, band) if seg else None
        for frame in sample:
            bgr = np.ascontiguousarray(frame.image[..., ::-1])
            pa, pb = (run_one(Packet(SourceFrame(0, bgr, 0.0), bgr)) for run_one in runners)
            try:
                rows.append({"name": frame.name, "psnr_db": psnr(pa.frame, pb.frame),
                             "ssim": ssim(pa.frame, pb.frame)})
            except ValueError as exc:
                raise EdgesegError(f"{sample.spec} {frame.name}: {exc}") from None
            if scorer is not None:
                scorer.update(pa.labels, pb.labels, frame.label, frame.name)
    if not rows:
        raise EdgesegError(f"{data}: no frames to compare on")
    values = [r["psnr_db"] for r in rows]
    finite = [v for v in values if math.isfinite(v)]
    ssims = [r["ssim"] for r in rows]
    summary: dict[str, Any] = {
        "a": str(a), "b": str(b), "network_a": sa.meta.network, "network_b": sb.meta.network,
        "frames": len(rows), "data": sample.spec,
        "psnr_mean_db": sum(finite) / len(finite) if finite else None,
        "psnr_min_db": min(finite) if finite else None,
        "identical_frames": len(values) - len(finite),
        "ssim_mean": sum(ssims) / len(ssims), "ssim_min": min(ssims),
        "per_frame": [{**r, "psnr_db": r["psnr_db"] if math.isfinite(r["psnr_db"]) else None}
                      for r in rows],
        "min_psnr": min_psnr, "passed": bool(min(values) >= min_psnr),
    }
    if scorer is not None:
        summary.update(segmenter=str(segmenter), pixel_agreement=scorer.agreement,
                       boundary_agreement=scorer.boundary_agreement)
        both = scorer.metrics()
        if both is not None:
            ma, mb = both
            summary.update(miou_a=ma.miou, miou_b=mb.miou, miou_drop=scorer.miou_drop(),
                           per_class_a=ma.per_class, per_class_b=mb.per_class,
                           table=compare_summaries(ma, mb, f"after {a.name}",
                                                   f"after {b.name}"))
    return summary


def _psnr_gate(min_psnr: float) -> str:
    return f"PSNR >= {min_psnr:g} dB on every frame"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="checkpoint (.pt), ONNX file or engine")
    parser.add_argument("b", help="checkpoint (.pt), ONNX file or engine")
    parser.add_argument("--data", metavar="SPEC|VIDEO", help="frames (a labelled spec: mIoU "
                        "deltas too); default synthetic day/night scenes")
    parser.add_argument("--max-frames", type=positive_int, default=16, metavar="N",
                        help="frames to compare, spread over --data (default 16)")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="pixel agreement that passes (default 0.99)")
    parser.add_argument("--min-psnr", type=float, metavar="DB",
                        help="two image networks: the PSNR every frame must reach (default "
                             f"{DEFAULT_MIN_PSNR:g} dB)")
    parser.add_argument("--segmenter", metavar="MODEL",
                        help="two image networks: also score this segmenter after each (mIoU "
                             "on a labelled --data, as `edgeseg eval MODEL --translator`)")
    add_device_argument(parser, "a checkpoint runs in PyTorch there; a plain ONNX on ONNX Runtime's "
                        "CUDA provider for cuda[:N]; a TensorRT plan on GPU N (default auto)")
    parser.add_argument("--json", metavar="OUT", help="write the summary as JSON (- = stdout)")


def run(args: argparse.Namespace) -> int:
    from edgeseg.fileio import check_outputs, write_json

    check_outputs([args.json])  # before the models run
    text = sys.stderr if args.json == "-" else sys.stdout  # stdout carries only the JSON then
    summary = compare_models(args.a, args.b, args.data, args.max_frames, args.min_agreement,
                             args.device, min_psnr=args.min_psnr, segmenter=args.segmenter)
    if "psnr_min_db" in summary:
        return _report_images(summary, args.json, text)
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


def _db(value: float | None) -> str:
    return "identical" if value is None else f"{value:.2f} dB"


def _report_images(summary: dict[str, Any], json_out: str | None, text: Any) -> int:
    from edgeseg.fileio import write_json

    print(f"{summary['a']} vs {summary['b']} ({summary['network_a']}, {summary['network_b']}) "
          f"on {summary['frames']} frames of {summary['data']}", file=text)
    rows = summary["per_frame"]
    width = max(len("frame"), *(len(r["name"]) for r in rows))
    print(f"  {'frame':<{width}}  {'PSNR':>12}  {'SSIM':>8}", file=text)
    for r in rows:
        print(f"  {r['name']:<{width}}  {_db(r['psnr_db']):>12}  {r['ssim']:8.5f}", file=text)
    identical = summary["identical_frames"]
    if summary["psnr_mean_db"] is None:
        print("PSNR  inf: every frame identical", file=text)
    else:
        print(f"PSNR  mean {_db(summary['psnr_mean_db'])}, min {_db(summary['psnr_min_db'])}"
              + (f" ({identical} identical frames, PSNR inf, left out)" if identical else ""),
              file=text)
    print(f"SSIM  mean {summary['ssim_mean']:.5f}, min {summary['ssim_min']:.5f} (Gaussian 11x11, "
          "sigma 1.5, mean over channels)", file=text)
    if "segmenter" in summary:
        band = summary["boundary_agreement"]
        print(f"{summary['segmenter']} after each: pixel agreement "
              f"{100 * summary['pixel_agreement']:.3f} %, boundary agreement "
              + ("n/a" if band is None else f"{100 * band:.3f} %"), file=text)
        if "table" in summary:
            print(summary.pop("table"), file=text)
    gate = _psnr_gate(summary["min_psnr"])
    print(f"PASSED ({gate})" if summary["passed"] else f"FAILED: {gate} does not hold",
          file=text)
    if json_out:
        write_json(json_out, summary)
    return 0 if summary["passed"] else 1
