"""``edgeseg run ENGINE --source SRC --sink SINK``: the on-vehicle stream.

Everything the stream needs comes from the engine (its manifest/metadata:
input format and size, labels, palette), so a camera, an engine and a sink are
the whole configuration. Ctrl-C (SIGINT) or SIGTERM stops the capture, finishes
the queued frames, closes the video (playable) and exits 130; a second Ctrl-C
aborts at once. Torch-free.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.argtypes import add_device_argument, parse_alpha, parse_luma
from edgeseg.errors import EdgesegError
from edgeseg.fileio import write_json
from edgeseg.runtime.backends.base import Backend
from edgeseg.runtime.overlay import OverlayRenderer, OverlayStyle
from edgeseg.runtime.pipeline import Policy, RunSummary, StreamPipeline
from edgeseg.runtime.sinks import VideoWriterChoice, open_sink, preflight
from edgeseg.runtime.sources import Reconnect, open_source
from edgeseg.runtime.stages import (
    AspectPolicy,
    EngineStage,
    SegmentStage,
    StageChain,
    TranslateStage,
    fit_frame,
    frame_to_input,
)
from edgeseg.runtime.timing import time_calls
from edgeseg.videoio import LIVE_PRESET, X264_PRESETS

EXIT_INTERRUPTED = 130


@dataclass
class StreamConfig:
    """Everything `run_stream` needs besides the engine; the CLI flags map onto it."""

    source: str
    sinks: list[str] = field(default_factory=lambda: ["null"])
    translator: str | None = None
    translate_below: float | None = None  # gate: translate frames darker than this mean luma
    backend: str = "auto"
    policy: Policy = "auto"
    queue_size: int = 4
    aspect: AspectPolicy = "stretch"
    style: OverlayStyle = OverlayStyle()
    fps: float | None = None  # output video frame rate; default: the source's
    max_frames: int = 0
    threads: int | None = None
    infer_requests: int | None = None  # OpenVINO: requests in flight (None: the manifest's)
    providers: list[str] | None = None
    cuda_graphs: bool = False
    # ONNX Runtime threads busy-waiting between ops: fastest for inference alone, but they take
    # the cores decode/overlay/encode need (measured: 23.9 fps spinning, 25.9 without, 2 cores).
    # TensorRT: the collecting thread spins on the GPU's completion event instead of sleeping
    spin: bool = False
    # TensorRT: load a version-compatible plan's embedded runtime (None: EDGESEG_TRUST_ENGINE_CODE)
    trust_engine_code: bool | None = None
    baseline: int = 0  # raw engine iterations after the stream (fps_over_raw in the summary)
    reconnect: Reconnect = Reconnect()
    progress: bool = True
    stall_s: float = 10.0  # a live source silent this long ends the run (0: never)
    video_writer: VideoWriterChoice = "auto"
    video_preset: str = LIVE_PRESET  # x264 preset of H.264 recordings (see videoio)
    manifest_check: bool = True  # False: run an engine whose manifest is missing (warns)
    device: str = "auto"  # cpu, cuda[:N] or auto: the GPU index goes to TensorRT / ORT's CUDA EP


def backend_options(path: str | Path, cfg: StreamConfig) -> dict[str, Any]:
    """The loader options that apply to the engine's backend (``cfg.device`` included)."""
    from edgeseg.contract.manifest import manifest_path, read_manifest
    from edgeseg.runtime.predictor import device_options

    placed = device_options(path, cfg.device)
    kind = read_manifest(path).backend if manifest_path(path).exists() else "onnxruntime"
    if kind == "tensorrt":
        return {**placed, "cuda_graphs": cfg.cuda_graphs,
                "sync": "spin" if cfg.spin else "blocking",
                "trust_engine_code": cfg.trust_engine_code}
    if kind == "openvino":
        options: dict[str, Any] = dict(placed)
        if cfg.threads is not None:
            options["threads"] = cfg.threads
        if cfg.infer_requests:
            options["infer_requests"] = cfg.infer_requests
        return options
    options = {**placed, "spin": cfg.spin}
    if cfg.threads is not None:
        options["intra_op_threads"] = cfg.threads
    if cfg.providers:
        options["providers"] = cfg.providers
    return options


def open_engine(path: str | Path, cfg: StreamConfig) -> Backend:
    from edgeseg.runtime.predictor import load_backend

    if not Path(path).exists():
        raise EdgesegError(f"{path}: no such engine or ONNX file (build one with "
                           "edgeseg build-engine MODEL.onnx)")
    return load_backend(path, cfg.backend, manifest_check=cfg.manifest_check,
                        **backend_options(path, cfg))


@contextlib.contextmanager
def stop_on_signals(pipeline: StreamPipeline) -> Iterator[None]:
    """SIGINT/SIGTERM end the stream cleanly; a second SIGINT raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():  # signals need the main thread
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        print(f"\n[edgeseg run] {name}: finishing queued frames and closing the outputs "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)
        pipeline.request_stop("interrupted")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def raw_throughput(stage: EngineStage, frame: Any, iterations: int) -> float:
    """Back-to-back `infer` calls on one prepared frame: the engine's own frames/s."""
    fitted, _ = fit_frame(frame, stage.target_size(frame), stage.aspect)
    x = frame_to_input(fitted, stage.meta)
    times_ms = time_calls(lambda: stage.backend.infer(x), warmup=1, iterations=iterations)
    return 1e3 * len(times_ms) / sum(times_ms)


def run_stream(engine: str | Path, cfg: StreamConfig) -> RunSummary:
    """Open everything, stream, close everything; returns the summary."""
    from edgeseg.evaluate import FrameScorer

    backends: list[Backend] = []
    try:
        seg = open_engine(engine, cfg)
        backends.append(seg)
        stages: list[EngineStage] = []
        if cfg.translator:
            backends.append(open_engine(cfg.translator, cfg))
            stages.append(TranslateStage(backends[-1], cfg.aspect, cfg.translate_below))
        elif cfg.translate_below is not None:
            raise EdgesegError("--translate-below gates a translator: give --translator ENGINE")
        stages.append(SegmentStage(seg, cfg.aspect))
        meta = seg.metadata
        source = open_source(cfg.source, model_space=meta.label_space or None,
                             reconnect=cfg.reconnect)
        try:
            fps = cfg.fps or source.fps or 10.0
            sinks = [open_sink(spec, fps, cfg.video_writer, cfg.video_preset)
                     for spec in cfg.sinks]
            renderer = OverlayRenderer(meta.labels, meta.palette, cfg.style) \
                if meta.labels else None
            scorer = None
            if source.label_space and meta.label_space:
                try:
                    scorer = FrameScorer(meta.label_space, source.label_space)
                except ValueError as exc:  # e.g. a CamVid model on Cityscapes-labelled frames
                    print(f"[edgeseg run] no online mIoU: {exc}", file=sys.stderr)
            info = {"engine": str(engine), "translator": cfg.translator,
                    "backend": seg.name, "precision": meta.precision,
                    "source": source.describe(), "sinks": cfg.sinks}
            videos = [d for d in (s.describe() for s in sinks) if d]
            if videos:
                info["video"] = videos
            if not cfg.manifest_check:
                info["manifest_check"] = "skipped (--no-manifest-check)"
            pipeline = StreamPipeline(source, StageChain(stages), sinks, renderer,
                                      policy=cfg.policy, queue_size=cfg.queue_size,
                                      max_frames=cfg.max_frames, scorer=scorer, info=info,
                                      progress=cfg.progress, stall_s=cfg.stall_s)
        except BaseException:
            source.close()
            raise
        with stop_on_signals(pipeline):
            summary = pipeline.run()
        if cfg.baseline and pipeline.last_frame is not None:
            summary.raw_infer_fps = raw_throughput(stages[-1], pipeline.last_frame, cfg.baseline)
        gate = stages[0]
        if isinstance(gate, TranslateStage) and gate.below is not None:
            summary.gate = {"below": gate.below, "translated": gate.translated,
                            "passed": gate.passed, "source": gate.gate_source}
        return summary
    finally:
        for backend in backends:
            backend.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("engine", help="engine from `edgeseg build-engine` (TensorRT plan, "
                                       "ONNX Runtime model or OpenVINO compiled model, with its "
                                       ".json manifest), or an ONNX")
    parser.add_argument("--source", required=True,
                        help="video file, image folder, camera index or /dev/videoN, rtsp://URL, "
                             "GStreamer pipeline, preset:NAME (runtime/cameras/NAME.yaml), "
                             "csi://N (Jetson CSI sensor N), v4l2:///dev/videoN, file://PATH, "
                             "data:NAME:ROOT:SPLIT, synthetic[:DOMAIN[:WxH[:FRAMES[:SEED]]]]")
    parser.add_argument("--sink", action="append", default=None,
                        help="window (or display://0, as segnet.py), null, OUT.mp4, frames:DIR, "
                             "labels:DIR (repeatable; default: window if there is a display)")
    parser.add_argument("--translator", metavar="ENGINE",
                        help="image-to-image engine run before the segmenter: a translator "
                             "(night->day) or relighting net, exported with `edgeseg export "
                             "CKPT --network NAME`")
    parser.add_argument("--translate-below", metavar="LUMA", type=parse_luma,
                        help="run the --translator only on frames whose mean luma (0-255) is "
                             "below LUMA, pass brighter frames straight to the segmenter (a "
                             "dusk->day translator costs day frames accuracy); pick LUMA "
                             "between your day and dusk footage, e.g. with "
                             "benchmarks/luma_gate.py. Default: the gate the translator's "
                             "metadata records, if any; 256 translates every frame")
    parser.add_argument("--backend", default="auto",
                        choices=["auto", "tensorrt", "onnxruntime", "openvino"],
                        help="auto: the engine's (its manifest says); a plain ONNX runs in "
                             "ONNX Runtime")
    add_device_argument(parser, "GPU N for a TensorRT engine (its CUDA context) or a plain ONNX "
                        "(ONNX Runtime's CUDA provider, device_id N); cpu for ONNX Runtime "
                        "on the CPU; default auto (TensorRT: GPU 0, ONNX: CPU)")
    parser.add_argument("--policy", default="auto", choices=["auto", "all", "latest"],
                        help="all: every frame in order (files); latest: drop stale frames "
                             "(live cameras); auto: by source")
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--aspect", default="stretch", choices=["stretch", "letterbox"],
                        help="how frames of another shape are fitted to the engine input")
    parser.add_argument("--alpha", type=parse_alpha, default=0.5,
                        help="overlay opacity: a fraction 0-1 (0.5), or segnet.py's 0-255 scale "
                             "for values above 1 (150 = 150/255); default 0.5")
    parser.add_argument("--side-by-side", action="store_true", help="camera | overlay")
    parser.add_argument("--no-hud", action="store_true")
    parser.add_argument("--no-legend", action="store_true")
    parser.add_argument("--fps", type=float, help="output video frame rate (default: source's)")
    parser.add_argument("--max-frames", type=int, default=0)
    parser.add_argument("--summary", metavar="JSON", help="write the run summary here")
    parser.add_argument("--threads", type=int,
                        help="ONNX Runtime intra-op threads / OpenVINO inference threads "
                             "(default: the engine's)")
    parser.add_argument("--infer-requests", type=int, metavar="N",
                        help="OpenVINO: asynchronous infer requests in flight (default: the "
                             "engine's, from build-engine --infer-requests)")
    parser.add_argument("--providers", help="ONNX Runtime providers, e.g. cuda,cpu")
    parser.add_argument("--spin", action="store_true",
                        help="ONNX Runtime: idle threads busy-wait between ops (faster inference "
                             "alone; on small CPUs it starves decode/overlay/encode). TensorRT: "
                             "busy-wait for each frame's result instead of sleeping on a "
                             "blocking-sync event (a few microseconds sooner, one core busy)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="TensorRT: replay each input shape as a CUDA graph")
    parser.add_argument("--trust-engine-code", action="store_true", default=None,
                        help="TensorRT: load a plan built --version-compatible, which runs the "
                             "TensorRT runtime embedded in it; only for plans you built or "
                             "trust (the same as EDGESEG_TRUST_ENGINE_CODE=1)")
    parser.add_argument("--baseline", type=int, default=0, metavar="N",
                        help="after the stream, time N raw engine calls and report the stream's "
                             "fps as a fraction of the engine's throughput")
    parser.add_argument("--reconnect-attempts", type=int, default=5)
    parser.add_argument("--stall-timeout", type=float, default=10.0, metavar="S",
                        help="end the run when a live camera delivers nothing for S seconds "
                             "(a hung driver), keeping the recording; 0 waits forever")
    parser.add_argument("--video-writer", default="auto", choices=["auto", "pyav", "opencv"],
                        help="auto: H.264 in fragmented MP4 through PyAV (plays after a crash, "
                             "in browsers) when installed, else OpenCV's mp4v")
    parser.add_argument("--video-preset", default=LIVE_PRESET, choices=X264_PRESETS,
                        help="x264 preset of H.264 recordings (FFmpeg's -preset): the default "
                             "ultrafast leaves the cores to the engine (about a third of "
                             "veryfast's CPU per frame, about 1.5x the bytes); veryfast or "
                             "slower for smaller files where CPU is to spare")
    parser.add_argument("--no-manifest-check", action="store_true",
                        help="run an ONNX Runtime engine (.ort.onnx) whose manifest is missing, "
                             "skipping the check that it was built for this CPU (warns)")
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> StreamConfig:
    sinks = args.sink
    if not sinks:
        if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.name != "posix":
            sinks = ["window"]
        else:
            raise EdgesegError("no display here: give --sink OUT.mp4 (or frames:DIR, labels:DIR, "
                               "null)")
    return StreamConfig(
        source=args.source, sinks=sinks, translator=args.translator,
        translate_below=args.translate_below, backend=args.backend,
        policy=args.policy, queue_size=args.queue_size, aspect=args.aspect,
        style=OverlayStyle(args.alpha, args.side_by_side, not args.no_hud, not args.no_legend),
        fps=args.fps, max_frames=args.max_frames, threads=args.threads,
        infer_requests=args.infer_requests,
        providers=args.providers.split(",") if args.providers else None,
        cuda_graphs=args.cuda_graphs, spin=args.spin, baseline=args.baseline,
        trust_engine_code=args.trust_engine_code,
        reconnect=Reconnect(attempts=args.reconnect_attempts), progress=not args.no_progress,
        stall_s=args.stall_timeout,
        video_writer=args.video_writer, video_preset=args.video_preset,
        manifest_check=not args.no_manifest_check,
        device=str(args.device))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.summary:  # a summary that cannot be written fails now, not after the drive
        preflight("--summary", Path(args.summary))
    summary = run_stream(args.engine, cfg)
    print(summary.format())
    writers = {v["path"]: v for v in summary.info.get("video", [])}
    for out in summary.outputs:
        v = writers.get(out)
        print(f"wrote {out}" + (f" ({v['codec']} via {v['writer']}, {v['container']})" if v
                                else ""))
    if args.summary:
        write_json(args.summary, summary.to_dict())
        print(f"summary: {args.summary}")
    return EXIT_INTERRUPTED if summary.interrupted else 0
