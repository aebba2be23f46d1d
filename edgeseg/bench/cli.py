"""``edgeseg bench ENGINE... [--data SPEC] [--report DIR]``: trtexec for the segmentation path.

Each ENGINE (ONNX file, ONNX Runtime engine or TensorRT plan with its manifest,
or a ``.pt`` checkpoint run in PyTorch eager fp32 as the reference) is timed
end to end, frame in to class map out, after a warm-up, at every ``--batch``
size; the stages the backend can tell apart (TensorRT: H2D / GPU compute / D2H)
are reported beside. With ``--data``, every variant is scored against the fp32
reference (``--reference``, else the first fp32 engine given): mIoU, per-class
IoU deltas, pixel and boundary-band agreement, pass/fail per precision. The
exit status is 1 when a variant loses more than its budget, so the command can
gate a release.

``--translator ENGINE`` puts an image-to-image engine (translator or relighting
net) in front of every model, chained as ``edgeseg run --translator`` chains it:
latency rows for the translator alone, each model alone and each chain end to
end; parity (translated mIoU) is scored on the chains.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.argtypes import (
    add_device_argument,
    non_negative_int,
    parse_hw_16,
    parse_luma,
    positive_int,
)
from edgeseg.bench.parity import DEFAULT_MAX_DROP, check_bench_parity, parse_max_drop
from edgeseg.bench.report import BenchResult, LatencyRow, format_console, write_report
from edgeseg.bench.targets import (
    ChainTarget,
    Target,
    TargetSkipped,
    TranslatorTarget,
    open_target,
)
from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import BackendUnavailableError, InputShapeError
from edgeseg.runtime.frames import SYNTHETIC_SIZE, open_frames
from edgeseg.runtime.latency import measure
from edgeseg.runtime.predictor import open_translator
from edgeseg.runtime.stages import fit_frame


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch {text!r}: expected sizes >= 1, e.g. 1,4")
    return sorted(set(values))


EPILOG = """examples:
  edgeseg bench model.fp32.onnx model.int8.onnx --data camvid:DIR:day_val --report out/
  edgeseg bench runs/x/best.pt model.fp32.onnx model.engine --batch 1,4 --size 1024x512
  edgeseg bench seg.onnx seg.int8.onnx --translator night2day.onnx --data camvid:DIR:dusk_val

Exit status: 0, or 1 when a variant loses more mIoU than --max-drop allows; 2 on bad input.
Engines this machine cannot run (a TensorRT plan without TensorRT or a GPU) are listed as
skipped with the reason, never given a number."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("engines", nargs="+", metavar="ENGINE",
                        help="ONNX file, engine (with its .json manifest) or checkpoint (.pt)")
    parser.add_argument("--data", action="append", default=[], metavar="SPEC",
                        help="NAME:ROOT[:SPLIT] or a video, repeatable: latency frames come "
                             "from the first; each labelled set gets a parity table "
                             "(default: synthetic frames, latency only)")
    parser.add_argument("--report", metavar="DIR",
                        help="write DIR/bench.json, DIR/bench.md and DIR/*.png")
    parser.add_argument("--translator", metavar="ENGINE",
                        help="image-to-image engine (translator or relighting net, from "
                             "`edgeseg export CKPT --network NAME`) in front of every ENGINE, "
                             "as `edgeseg run --translator`: latency of the translator, of "
                             "each ENGINE and of each chain; parity on the chains (batch 1)")
    parser.add_argument("--translate-below", metavar="LUMA", type=parse_luma,
                        help="gate the chains as `edgeseg run --translate-below` (default: the "
                             "translator's recorded gate, if any; 256 translates every frame); "
                             "the translator's own row always times the engine on every frame")
    parser.add_argument("--reference", metavar="MODEL",
                        help="fp32 reference for parity (fp32 ONNX or .pt); default the first "
                             "fp32 ENGINE")
    parser.add_argument("--iterations", metavar="N", type=positive_int, default=50,
                        help="timed runs per engine and batch (default 50)")
    parser.add_argument("--warmup", metavar="N", type=non_negative_int, default=5,
                        help="untimed runs first (default 5)")
    parser.add_argument("--batch", type=_batches, default=[1], metavar="N[,N...]",
                        help="batch sizes, e.g. 1,4 (default 1; >1 needs a dynamic-batch model)")
    parser.add_argument("--size", type=parse_hw_16, metavar="WxH",
                        help="frame size (default: the first fixed-size engine's input size); "
                             "checkpoints run at it, fixed-size engines resize to their own")
    parser.add_argument("--threads", metavar="N", type=non_negative_int, default=0,
                        help="ONNX Runtime intra-op and PyTorch threads (0 = library default)")
    parser.add_argument("--latency-frames", metavar="N", type=positive_int, default=8,
                        help="distinct frames cycled through the latency runs (default 8)")
    parser.add_argument("--max-frames", metavar="N", type=non_negative_int, default=0,
                        help="parity: frames spread over each data set (default 0 = all)")
    parser.add_argument("--max-drop", action="append", default=[], metavar="PRECISION=POINTS",
                        help="mIoU points a variant may lose against fp32 (defaults: "
                             + ", ".join(f"{k}={v:g}" for k, v in DEFAULT_MAX_DROP.items())
                             + "), repeatable")
    parser.add_argument("--band", metavar="PX", type=positive_int, default=3,
                        help="boundary band width in pixels (default 3)")
    add_device_argument(parser, "checkpoints run in PyTorch there; TensorRT plans on GPU N; plain "
                        "ONNX files on ONNX Runtime's CUDA provider for cuda[:N], else the "
                        "CPU; ONNX Runtime engines on the CPU they were built for "
                        "(default auto)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="TensorRT: replay each input shape's enqueue as a CUDA graph "
                             "(trtexec --useCudaGraph)")
    parser.add_argument("--no-parity", action="store_true", help="latency only")
    parser.add_argument("--no-latency", action="store_true", help="parity only")


def canonical_command(args: argparse.Namespace) -> str:
    """The command line that repeats this run (every setting spelled out)."""
    cmd = ["edgeseg", "bench", *args.engines]
    for spec in args.data:
        cmd += ["--data", spec]
    if args.report:
        cmd += ["--report", str(args.report)]
    if getattr(args, "translator", None):
        cmd += ["--translator", args.translator]
    if getattr(args, "translate_below", None) is not None:
        cmd += ["--translate-below", f"{args.translate_below:g}"]
    if args.reference:
        cmd += ["--reference", args.reference]
    cmd += ["--iterations", str(args.iterations), "--warmup", str(args.warmup),
            "--batch", ",".join(map(str, args.batch))]
    if args.size:
        cmd += ["--size", f"{args.size[1]}x{args.size[0]}"]
    cmd += ["--threads", str(args.threads), "--latency-frames", str(args.latency_frames)]
    if args.max_frames:
        cmd += ["--max-frames", str(args.max_frames)]
    for item in args.max_drop:
        cmd += ["--max-drop", item]
    if args.band != 3:
        cmd += ["--band", str(args.band)]
    if str(args.device) != "auto":
        cmd += ["--device", str(args.device)]
    cmd += [flag for flag, on in (("--cuda-graphs", args.cuda_graphs),
                                  ("--no-parity", args.no_parity),
                                  ("--no-latency", args.no_latency)) if on]
    return shlex.join(cmd)


def latency_frames(spec: str | None, count: int, size: tuple[int, int] | None
                   ) -> tuple[list[np.ndarray], str]:
    """RGB frames for timing (fitted to ``size`` outside the timed runs) and where from."""
    sample = open_frames(spec, count, size=size or SYNTHETIC_SIZE)
    images, _ = sample.load()
    if size is not None:
        images = [fit_frame(img, size)[0] for img in images]
    return images, sample.spec


def _open_all(paths: list[str], args: argparse.Namespace, skipped: list[dict[str, str]]
              ) -> dict[str, Target]:
    """Open every distinct path; skips are recorded, errors close what was opened."""
    targets: dict[str, Target] = {}
    try:
        for path in paths:
            key = str(Path(path).resolve())
            if key in targets:
                continue
            try:
                target = open_target(path, threads=args.threads, size=args.size,
                                     device=args.device, cuda_graphs=args.cuda_graphs)
            except TargetSkipped as exc:
                skipped.append({"target": Path(path).name, "what": "engine",
                                "reason": str(exc)})
                print(f"skipping {path}: {exc}", flush=True)
                continue
            if any(t.name == target.name for t in targets.values()):
                target.name = str(path)  # two files of the same name: tables need them apart
            targets[key] = target
    except BaseException:
        for t in targets.values():
            t.close()
        raise
    return targets


def _pick_reference(targets: dict[str, Target], args: argparse.Namespace) -> Target | None:
    if args.reference:
        key = str(Path(args.reference).resolve())
        if key not in targets:
            raise EdgesegError(f"--reference {args.reference}: could not be opened here "
                               "(see the skip above)")
        ref = targets[key]
        if ref.precision != "fp32":
            raise EdgesegError(f"--reference {args.reference} is {ref.precision}; the reference "
                               "must be fp32 (the exported fp32 ONNX or the checkpoint)")
        return ref
    return next((t for t in targets.values() if t.precision == "fp32"), None)


def run_bench(args: argparse.Namespace) -> BenchResult:
    """Measure everything the arguments ask for; the caller prints and writes it."""
    from edgeseg.bench.machine import detect_machine

    if args.no_parity and args.no_latency:
        raise EdgesegError("--no-parity and --no-latency together leave nothing to measure")
    max_drop = parse_max_drop(args.max_drop)
    skipped: list[dict[str, str]] = []
    paths = ([args.reference] if args.reference else []) + list(args.engines)
    result = BenchResult(
        command=canonical_command(args),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=detect_machine(),
        settings={"iterations": args.iterations, "warmup": args.warmup, "batch": args.batch,
                  "threads": args.threads, "latency_frames": args.latency_frames,
                  "max_frames": args.max_frames, "max_drop": max_drop, "band_px": args.band,
                  "data": args.data, "translator": getattr(args, "translator", None)},
        skipped=skipped)
    translator = _open_translator(args)
    try:
        targets = _open_all(paths, args, skipped)
    except BaseException:
        if translator is not None:
            translator.close()
        raise
    if not targets:
        if translator is not None:
            translator.close()
        raise EdgesegError("nothing to benchmark: every engine was skipped ("
                           + "; ".join(s["reason"] for s in skipped) + ")")
    try:
        # frames at --size, else at the first fixed-size engine's size (no resize in its path)
        size = args.size or next((t.size for t in targets.values() if t.size), None)
        for t in targets.values():
            if t.kind == "torch" and t.size is None:
                t.size = size  # the checkpoint runs at the size the engines run at
        chains = ({k: ChainTarget(translator, t) for k, t in targets.items()}
                  if translator is not None else {})
        result.targets = [t.describe() for t in targets.values()]
        if translator is not None:
            result.targets += [translator.describe(), *(c.describe() for c in chains.values())]
        if not args.no_latency:
            timed: list[Target] = list(targets.values())
            if translator is not None:
                timed = [translator, *timed, *chains.values()]
            _latency(result, timed, args, size)
        if not args.no_parity:
            _parity(result, chains or targets, args, max_drop)
    finally:
        for t in targets.values():
            t.close()
        if translator is not None:
            translator.close()
    return result


def _open_translator(args: argparse.Namespace) -> TranslatorTarget | None:
    """``--translator`` as a target of its own (None without it); a translator this machine
    cannot run fails the run: every chained number would be missing."""
    path = getattr(args, "translator", None)
    if not path:
        if getattr(args, "translate_below", None) is not None:
            raise EdgesegError("--translate-below gates a translator: give --translator ENGINE")
        return None
    try:
        stage = open_translator(path, args.device, args.threads,
                                below=getattr(args, "translate_below", None))
    except BackendUnavailableError as exc:
        raise EdgesegError(f"--translator {path}: cannot run here: {exc}") from None
    if 1 not in args.batch:
        stage.backend.close()
        raise EdgesegError("--translator chains run one frame at a time (as `edgeseg run`): "
                           "include batch 1 in --batch")
    return TranslatorTarget(Path(path), stage, args.threads)


def _latency(result: BenchResult, targets: list[Target], args: argparse.Namespace,
             size: tuple[int, int] | None) -> None:
    frames, source = latency_frames(args.data[0] if args.data else None, args.latency_frames,
                                    size)
    result.settings["frames_from"] = source
    h, w = frames[0].shape[:2]
    for t in targets:
        for batch in args.batch:
            try:
                res = measure(t, frames, batch, args.warmup, args.iterations)
            except (TargetSkipped, InputShapeError) as exc:
                result.skipped.append({"target": t.name, "what": f"batch {batch}",
                                       "reason": str(exc)})
                print(f"skipping {t.name} batch {batch}: {exc}", flush=True)
                continue
            result.latency.append(LatencyRow(t.name, t.precision, t.kind, f"{w}x{h}", res))
            s = res.total
            print(f"{t.name} ({t.kind} {t.precision}) batch {batch}: mean {s.mean_ms:.2f} ms, "
                  f"p50 {s.p50_ms:.2f}, p99 {s.p99_ms:.2f}, {s.fps:.1f} fps", flush=True)


def _parity(result: BenchResult, targets: dict[str, Target], args: argparse.Namespace,
            max_drop: dict[str, float]) -> None:
    if not args.data:
        result.notes.append("no --data: parity not measured (give a labelled NAME:ROOT:SPLIT)")
        return
    reference = _pick_reference(targets, args)
    if reference is None:
        result.notes.append("no fp32 engine among the engines: parity not measured (give "
                            "--reference fp32.onnx or a checkpoint)")
        return
    variants = [t for t in targets.values() if t is not reference]
    others = [t for t in variants if t.label_space != reference.label_space]
    for t in others:
        result.skipped.append({"target": t.name, "what": "parity", "reason":
                               f"predicts {t.label_space}, reference {reference.label_space}"})
    variants = [t for t in variants if t.label_space == reference.label_space]
    if not variants:
        result.notes.append(f"only the reference {reference.name}: no variant to compare")
        return
    for spec in args.data:
        p = check_bench_parity(reference, variants, spec, args.max_frames, max_drop, args.band,
                         progress=sys.stderr.isatty())
        result.parity.append(p)
        verdicts = ", ".join(f"{v.name} {v.verdict}" for v in p.variants)
        print(f"parity on {spec} ({p.frames} frames): {verdicts}", flush=True)


def run(args: argparse.Namespace) -> int:
    from edgeseg.fileio import check_writable_dir

    if args.report:
        check_writable_dir(args.report)  # a report that cannot be written fails before the runs
    result = run_bench(args)
    print()
    print(format_console(result))
    if args.report:
        files: dict[str, Any] = write_report(args.report, result)
        print(f"\nreport: {Path(args.report) / files['markdown']} "
              f"(and {files['json']}, plots) in {args.report}")
    if result.parity and not result.passed:
        print("PARITY FAILED: a variant lost more mIoU than its budget (--max-drop)")
        return 1
    return 0
