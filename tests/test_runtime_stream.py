"""The streaming runtime: sources, sinks, overlay, pipeline policies, faults, `edgeseg run`.

Everything runs for real: ONNX Runtime engines, videos written and read with
OpenCV, subprocesses that get a real SIGINT and cannot import torch.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.contract.manifest import EngineMismatchError
from edgeseg.errors import EdgesegError
from edgeseg.export.build_engine import build_engine
from edgeseg.export.profile import BuildProfile
from edgeseg.labels import colorize, palette_lut
from edgeseg.runtime.backends.onnxruntime import OrtBackend
from edgeseg.runtime.overlay import OverlayRenderer, OverlayStyle
from edgeseg.runtime.pipeline import StreamPipeline
from edgeseg.runtime.run_cli import StreamConfig, run_stream
from edgeseg.runtime.sinks import NullSink, SinkError, open_sink
from edgeseg.runtime.sources import (
    CaptureSource,
    Reconnect,
    Source,
    SourceError,
    SourceFrame,
    SourceLostError,
    open_source,
)
from edgeseg.runtime.stages import SegmentStage, StageChain, fit_frame, unfit_labels
from tests.onnx_models import SIZE, block_scene, export_tiny
from tests.test_runtime_backends import BLOCKER, edit_manifest

REPO = Path(__file__).resolve().parents[1]
NUM_FRAMES = 24
FRAME_WH = (120, 80)  # not the engine's 96x64: every frame is resized in and out


@pytest.fixture(scope="module")
def seg_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("stream") / "seg.onnx", train_steps=30)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real mp4 of block scenes, written with cv2.VideoWriter."""
    path = tmp_path_factory.mktemp("video") / "drive.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10, FRAME_WH)
    rng = np.random.default_rng(0)
    for _ in range(NUM_FRAMES):
        rgb, _ = block_scene(rng, (FRAME_WH[1], FRAME_WH[0]))
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    """Frames OpenCV can actually decode (a truncated or unfinalised mp4 gives 0)."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def stream(engine: Path, source: str, sinks: list[str], **kw: object):
    return run_stream(engine, StreamConfig(source=source, sinks=sinks, progress=False,
                                           threads=1, **kw))


# --- the main path ---------------------------------------------------------------------
def test_video_to_mp4_every_frame_in_order(seg_onnx: Path, video: Path, tmp_path: Path) -> None:
    out, labels = tmp_path / "out.mp4", tmp_path / "labels"
    summary = stream(seg_onnx, str(video), [str(out), f"labels:{labels}"])
    assert summary.policy == "all" and summary.end_reason == "end of source"
    assert summary.counts.captured == summary.counts.processed == NUM_FRAMES
    assert summary.counts.dropped == 0 and summary.counts.corrupt == 0
    assert count_frames(out) == NUM_FRAMES
    cap = cv2.VideoCapture(str(out))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == FRAME_WH
    files = sorted(labels.glob("*.png"))
    assert [f.stem for f in files] == [f"{i:06d}" for i in range(NUM_FRAMES)]
    # the label maps are the engine's answer on each frame, at the frame's size
    predictor_backend = OrtBackend.from_onnx(seg_onnx, intra_op_threads=1)
    stage = SegmentStage(predictor_backend)
    src = open_source(str(video))
    for f in files[:5]:
        frame = src.read()
        got = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        assert got.shape == (FRAME_WH[1], FRAME_WH[0]) and got.max() < 19
        from edgeseg.runtime.stages import Packet

        want = stage.process(Packet(frame, frame.image)).labels
        np.testing.assert_array_equal(got, want)
    for stage_name in ("capture", "preprocess", "infer", "postprocess", "render", "encode",
                       "end_to_end"):
        assert summary.stages[stage_name].count == NUM_FRAMES, stage_name


def test_online_miou_matches_offline_scoring(seg_onnx: Path, tmp_path: Path) -> None:
    """A labelled image folder: the stream's mIoU equals evaluating the same frames offline."""
    from edgeseg.evaluate import FrameScorer
    from edgeseg.runtime.predictor import BackendPredictor

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(3)
    frames = []
    for i in range(6):
        rgb, label = block_scene(rng, SIZE)
        cv2.imwrite(str(tmp_path / "images" / f"f{i}.png"), rgb[..., ::-1])
        cv2.imwrite(str(tmp_path / "labels" / f"f{i}.png"), label)
        frames.append((rgb, label))
    summary = stream(seg_onnx, str(tmp_path), ["null"])
    scorer = FrameScorer("cityscapes19", "cityscapes19")
    predict = BackendPredictor(OrtBackend.from_onnx(seg_onnx, intra_op_threads=1))
    for rgb, label in frames:
        scorer.update(predict(rgb), label)
    assert summary.miou == pytest.approx(scorer.metrics().miou, abs=1e-12)
    assert 0.0 < summary.miou < 1.0


def test_synthetic_source_scores_against_its_ground_truth(seg_onnx: Path) -> None:
    summary = stream(seg_onnx, "synthetic:night:96x64:6", ["null"])
    assert summary.counts.processed == 6 and summary.miou is not None


def test_latest_policy_drops_stale_frames_and_bounds_latency(seg_onnx: Path) -> None:
    """A slow sink: the `latest` policy drops frames instead of queueing them."""

    class SlowSink(NullSink):
        def write(self, index: int, rendered: np.ndarray | None, labels: np.ndarray) -> None:
            time.sleep(0.04)

    class Camera(Source):
        """Frames rendered beforehand, delivered at 100 fps like a camera whatever the CPU
        load (a source that renders them slows down with the machine and drops nothing)."""

        def __init__(self, count: int) -> None:
            super().__init__("camera")
            drive = open_source("synthetic:night:96x64:8")
            self.images = [f.image for f in iter(drive.read, None)]
            self.count, self.index, self.start = count, 0, time.perf_counter()

        def read(self) -> SourceFrame | None:
            if self.index == self.count:
                return None
            time.sleep(max(0.0, self.start + self.index / 100 - time.perf_counter()))
            image = self.images[self.index % len(self.images)]
            frame = SourceFrame(self.index, image, time.perf_counter(), None, str(self.index))
            self.index += 1
            return frame

    backend = OrtBackend.from_onnx(seg_onnx, intra_op_threads=1)
    source = Camera(120)
    pipeline = StreamPipeline(source, StageChain([SegmentStage(backend)]), [SlowSink("slow")],
                              policy="latest", queue_size=1)
    summary = pipeline.run()
    c = summary.counts
    assert c.captured == 120 and c.dropped > 20
    assert c.processed + c.dropped == c.captured
    # a frame waits at most for: the queue slot, the engine, the out queue and the sink
    assert summary.stages["end_to_end"].p99 < 400, summary.stages["end_to_end"]

    source = open_source("synthetic:night:96x64:30")
    pipeline = StreamPipeline(source, StageChain([SegmentStage(backend)]), [SlowSink("slow")],
                              policy="all", queue_size=1)
    summary = pipeline.run()
    assert summary.counts.dropped == 0 and summary.counts.processed == 30


def test_translator_engine_runs_before_the_segmenter(seg_onnx: Path, tmp_path: Path) -> None:
    """Two-stage chain (Mutual-GAN style): a translator that inverts the image, then the
    segmenter; the labels are the segmenter's on the inverted frames, the overlay shows the
    camera frame."""
    import torch

    from edgeseg.export.onnx_export import export_translator
    from edgeseg.runtime.stages import Packet, TranslateStage

    class Invert(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -x

    translator = tmp_path / "invert.onnx"
    export_translator(Invert(), translator, SIZE, simplify=False)
    labels = tmp_path / "labels"
    summary = stream(seg_onnx, "synthetic:night:96x64:4", [f"labels:{labels}"],
                     translator=str(translator))
    assert summary.counts.processed == 4 and "translate" in summary.stages
    seg = SegmentStage(OrtBackend.from_onnx(seg_onnx, intra_op_threads=1))
    source = open_source("synthetic:night:96x64:4")
    for i in range(4):
        frame = source.read()
        inverted = 255 - frame.image
        want = seg.process(Packet(frame, inverted)).labels
        got = cv2.imread(str(labels / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert (got == want).mean() > 0.999
    with pytest.raises(EdgesegError, match="not an image translator"):
        TranslateStage(OrtBackend.from_onnx(seg_onnx))
    with pytest.raises(EdgesegError, match="translator, not a segmentation engine"):
        SegmentStage(OrtBackend.from_onnx(translator))


# --- faults ------------------------------------------------------------------------------
def test_corrupt_video_frame_is_skipped_and_counted(seg_onnx: Path, tmp_path: Path) -> None:
    path = tmp_path / "mjpg.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(12):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    assert len(starts) == 12
    data[starts[5]:starts[6] - 16] = bytes(starts[6] - 16 - starts[5])  # wipe frame 5
    path.write_bytes(bytes(data))
    summary = stream(seg_onnx, str(path), ["null"])
    assert summary.counts.corrupt == 1
    assert summary.counts.processed == 11


def test_corrupt_images_in_a_folder_are_skipped(seg_onnx: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), block_scene(rng)[0])
    (tmp_path / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "9.jpg").write_bytes(b"")
    summary = stream(seg_onnx, str(tmp_path), ["null"])
    assert (summary.counts.processed, summary.counts.corrupt) == (3, 2)


def test_unwritable_sink_fails_before_the_stream_starts(seg_onnx: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    source = open_source("synthetic:night:96x64:5")
    backend = OrtBackend.from_onnx(seg_onnx, intra_op_threads=1)
    pipeline = StreamPipeline(source, StageChain([SegmentStage(backend)]),
                              [NullSink("null"), open_sink(f"labels:{blocker / 'labels'}")])
    with pytest.raises(SinkError, match="a_file"):
        pipeline.run()
    assert pipeline.counts.captured == 0 and source.index == 0  # nothing was read
    with pytest.raises(SinkError, match="cannot write"):
        stream(seg_onnx, "synthetic:night:96x64:5", [str(blocker / "sub" / "out.mp4")])
    with pytest.raises(SinkError, match="is a folder"):
        (tmp_path / "dir.mp4").mkdir()
        stream(seg_onnx, "synthetic:night:96x64:5", [str(tmp_path / "dir.mp4")])
    with pytest.raises(SinkError, match="unknown sink"):
        open_sink("out.txt")


def test_live_source_reconnects_then_fails_clearly(video: Path, tmp_path: Path) -> None:
    """A live source whose stream vanishes: reconnect attempts with backoff, then an error."""
    copy = tmp_path / "cam.mp4"
    copy.write_bytes(video.read_bytes())
    waits: list[float] = []
    source = CaptureSource("cam", str(copy), cv2.CAP_FFMPEG, live=True,
                           reconnect=Reconnect(attempts=3, first_wait=0.5), what="camera",
                           sleep=waits.append)
    assert source.read() is not None
    for _ in range(NUM_FRAMES - 1):
        source.read()
    copy.unlink()  # the camera goes away
    with pytest.raises(SourceLostError, match="3 reconnect attempts"):
        source.read()
    assert waits == [0.5, 1.0, 2.0]


def test_live_source_comes_back_after_a_reconnect(video: Path) -> None:
    source = CaptureSource("cam", str(video), cv2.CAP_FFMPEG, live=True, what="camera",
                           sleep=lambda s: None)
    frames = [source.read() for _ in range(NUM_FRAMES + 3)]  # runs past the end: reopens
    assert all(f is not None for f in frames) and source.reconnects == 1


def test_source_errors_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "missing.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(SourceError, match="bad.mp4"):
        open_source(str(bad))
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))
    with pytest.raises(SourceError, match="unknown domain"):
        open_source("synthetic:mars")
    with pytest.raises(SourceError, match="known:"):
        open_source("preset:no-such-camera")


def test_gstreamer_without_gstreamer_says_so() -> None:
    from edgeseg.runtime.sources import gstreamer_available

    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(SourceError, match="no GStreamer"):
        open_source("preset:jetson-csi")


def test_camera_presets_are_valid() -> None:
    from edgeseg.runtime.sources import load_preset

    presets = sorted((REPO / "runtime" / "cameras").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"jetson-csi", "usb-camera"}
    for path in presets:
        source, _ = load_preset(path.stem)
        assert "appsink" in source or source.isdigit() or source.startswith("/dev/")


# --- geometry and overlay -------------------------------------------------------------
@pytest.mark.parametrize("aspect", ["stretch", "letterbox"])
def test_labels_map_back_to_the_frame(aspect: str) -> None:
    """fit + unfit is the identity on a label map (nearest neighbour at 2x scale)."""
    labels = np.zeros((60, 200), np.uint8)
    labels[:, 100:] = 7
    labels[:20] = 3
    fitted, box = fit_frame(labels, (120, 120), aspect)
    assert fitted.shape == (120, 120)
    if aspect == "letterbox":
        assert box == (42, 0, 36, 120) and fitted[:42].max() == 0
    back = unfit_labels(fitted, box, labels.shape)
    assert back.shape == labels.shape
    assert (back == labels).mean() > 0.97


def test_dynamic_engines_take_each_frame_within_the_profile() -> None:
    from edgeseg.contract.metadata import TensorSpec
    from edgeseg.runtime.stages import profile_size

    spec = TensorSpec("frame", "uint8", [1, -1, -1, 3], "uint8-nhwc-bgr",
                      {"min": [1, 128, 128, 3], "opt": [1, 360, 480, 3],
                       "max": [1, 720, 1280, 3]})
    assert profile_size(360, 480, spec) is None  # fits: runs at its own size
    assert profile_size(1080, 1920, spec) == (720, 1280)  # too big: scaled down, same aspect
    assert profile_size(64, 96, spec) == (128, 192)  # too small: scaled up
    assert profile_size(100, 2000, spec) == (128, 1280)  # clamped at both edges
    nchw = TensorSpec("image", "float32", [1, 3, -1, -1], "float-nchw",
                      {"min": [1, 3, 64, 64], "max": [1, 3, 512, 512]})
    assert profile_size(1024, 512, nchw) == (512, 256)
    assert profile_size(300, 300, TensorSpec("x", "uint8", [1, -1, -1, 3])) is None


def test_overlay_colours_legend_hud() -> None:
    palette = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    labels = np.array([[0, 1], [2, 255]], np.uint8)
    colours = colorize(labels, palette_lut(palette, bgr=True))
    np.testing.assert_array_equal(colours[0, 0], [0, 0, 255])  # red in BGR
    np.testing.assert_array_equal(colours[1, 0], [255, 0, 0])
    np.testing.assert_array_equal(colours[1, 1], [0, 0, 0])  # ignore -> black
    frame = np.full((240, 320, 3), 128, np.uint8)
    big = np.zeros((240, 320), np.uint8)
    plain = OverlayRenderer(["a", "b", "c"], palette, OverlayStyle(0.5, False, False, False))
    out = plain.render(frame, big)
    np.testing.assert_array_equal(out[100, 100], [64, 64, 192])  # 0.5 * grey + 0.5 * red
    full = OverlayRenderer(["a", "b", "c"], palette, OverlayStyle(0.5, True, True, True))
    out2 = full.render(frame, big, ["12.0 fps", "infer 3 ms"])
    assert out2.shape == (240, 640, 3)
    assert (out2[:10, :320] != frame[:10]).any()  # the HUD is drawn
    assert (out2[:20, -40:] != out[:20, -40:]).any()  # the legend is drawn


# --- `edgeseg run` end to end in subprocesses --------------------------------------------
def run_cli_subprocess(args: list[str], **kw: object) -> subprocess.Popen:
    code = BLOCKER + textwrap.dedent(f"""
        import sys
        from edgeseg.cli import main
        sys.exit(main({args!r}))
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_edgeseg_run_without_torch(seg_onnx: Path, video: Path, tmp_path: Path) -> None:
    """The whole stream in a process where importing torch (or onnx) raises."""
    out = tmp_path / "out.mp4"
    proc = run_cli_subprocess(["run", str(seg_onnx), "--source", str(video), "--sink", str(out),
                               "--summary", str(tmp_path / "s.json"), "--no-progress",
                               "--threads", "1"])
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert count_frames(out) == NUM_FRAMES
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["frames"]["processed"] == NUM_FRAMES
    assert set(summary["stages_ms"]["infer"]) >= {"p50_ms", "p90_ms", "p99_ms"}


def test_sigint_mid_stream_leaves_a_playable_video(seg_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    proc = run_cli_subprocess(["run", str(seg_onnx), "--source", "synthetic:night:96x64:100000",
                               "--sink", str(out), "--summary", str(tmp_path / "s.json"),
                               "--no-progress", "--threads", "1"])
    partial = tmp_path / "out.partial.mp4"  # the recording, from the first frame on
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size):
        time.sleep(0.1)
    time.sleep(1.0)  # some frames into the stream
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    frames = count_frames(out)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["end_reason"] == "interrupted"
    assert 0 < frames == summary["frames"]["processed"] < 100000
    assert not (tmp_path / "out.partial.mp4").exists()  # the recording became out.mp4


def test_run_refuses_an_engine_built_for_another_machine(seg_onnx: Path, tmp_path: Path) -> None:
    engine = tmp_path / "seg.ort.onnx"
    build_engine(seg_onnx, engine, BuildProfile(backend="onnxruntime", threads=1), "rebuild-me")
    summary = stream(engine, "synthetic:night:96x64:3", ["null"])
    assert summary.counts.processed == 3 and summary.info["backend"] == "onnxruntime"
    edit_manifest(engine, device__cpu_isa=["avx512f"], device__name="Xeon 9999")
    with pytest.raises(EngineMismatchError, match="rebuild"):
        stream(engine, "synthetic:night:96x64:3", ["null"])


def test_run_cli_reports_bad_input_as_one_line(seg_onnx: Path, tmp_path: Path) -> None:
    from edgeseg.cli import main

    assert main(["run", str(tmp_path / "none.onnx"), "--source", "synthetic",
                 "--sink", "null"]) == 2
    assert main(["run", str(seg_onnx), "--source", str(tmp_path / "none.mp4"),
                 "--sink", "null"]) == 2


def test_cuda_events_order_two_streams_and_graphs_replay() -> None:
    """The double-buffering primitives: an event orders a copy on one stream after a copy on
    another; a captured graph replays its copy."""
    from edgeseg.runtime.backends.cuda_memory import GraphCaptureUnsupported
    from tests.test_runtime_backends import _cuda_api

    api = _cuda_api()
    api.set_device(0)
    n = 1 << 20
    data = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
    host, back, dev = api.alloc_host(n), api.alloc_host(n), api.alloc_device(n)
    a, b = api.create_stream(), api.create_stream()
    start, done = api.create_event(), api.create_event()
    try:
        host.array[:] = data
        api.record_event(start, a)
        api.copy_to_device(dev, host, n, a)
        api.record_event(done, a)
        api.stream_wait_event(b, done)
        api.copy_to_host(back, dev, n, b)
        api.synchronize(b)
        np.testing.assert_array_equal(back.array, data)
        assert api.elapsed_ms(start, done) >= 0.0
        try:
            api.begin_capture(b)
        except GraphCaptureUnsupported:
            return
        api.copy_to_host(back, dev, n, b)
        graph = api.end_capture(b)
        back.array[:] = 0
        api.launch_graph(graph, b)
        api.synchronize(b)
        np.testing.assert_array_equal(back.array, data)
        api.destroy_graph(graph)
    finally:
        for ev in (start, done):
            api.destroy_event(ev)
        for s in (a, b):
            api.destroy_stream(s)
        api.free_device(dev)
        api.free_host(host)
        api.free_host(back)


def test_tensorrt_double_buffering_matches_synchronous(seg_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT not installed (double buffering and CUDA "
                                           "graphs are verified only where it is)")
    from edgeseg.runtime.backends.tensorrt import TrtBackend
    from tests.test_runtime_backends import _cuda_api

    _cuda_api()
    engine = tmp_path / "seg.engine"
    build_engine(seg_onnx, engine, BuildProfile(backend="tensorrt"), "rebuild")
    rng = np.random.default_rng(0)
    frames = [block_scene(rng)[0][None, :, :, ::-1].copy() for _ in range(6)]
    for graphs in (False, True):
        with TrtBackend.load(engine, cuda_graphs=graphs) as backend:
            sync = [backend.infer(f) for f in frames]
            got = []
            for f in frames:
                backend.submit(f)
                if backend.in_flight == 2:
                    got.append(backend.collect())
            while backend.in_flight:
                got.append(backend.collect())
            for a, b in zip(sync, got):
                np.testing.assert_array_equal(a, b.output)
                assert set(b.timings) == {"h2d", "infer", "d2h"}


def test_window_sink_without_a_display_fails_before_the_stream(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SinkError, match="no display"):
        open_sink("window").check()
