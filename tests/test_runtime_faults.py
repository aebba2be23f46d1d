"""Faults a vehicle meets, reproduced for real: full and read-only disks, kill -9 and SIGTERM
during a recording, truncated recordings and sources, lost cameras, frames that change size,
raw dataset ids, engines without their manifest, tiny frames under a big HUD.

Real tmpfs mounts (conftest), real video files written and decoded by PyAV and OpenCV, real
signals to real `edgeseg run` processes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.fileio import OutputError
from edgeseg.runtime.backends.onnxruntime import OrtBackend
from edgeseg.runtime.overlay import OverlayRenderer, OverlayStyle, hud_layout
from edgeseg.runtime.pipeline import StreamPipeline
from edgeseg.runtime.sinks import NullSink, SinkError, VideoSink, open_sink, partial_path
from edgeseg.runtime.sources import CaptureSource, ImageFolderSource, Reconnect, SourceLostError
from edgeseg.runtime.stages import SegmentStage, StageChain
from edgeseg.videoio import pyav_h264
from tests.conftest import cli_env, unprivileged
from tests.onnx_models import block_scene, export_tiny
from tests.test_runtime_stream import count_frames

av = pytest.importorskip("av", reason="PyAV writes the fragmented H.264 recordings")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seg_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("faults") / "seg.onnx")


@pytest.fixture(scope="module")
def noise_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Incompressible frames: each one costs the recording ~100 KB, so a small disk fills fast."""
    path = tmp_path_factory.mktemp("noise") / "noise.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (320, 240))
    rng = np.random.default_rng(0)
    for _ in range(40):
        writer.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    writer.release()
    return path


def decoded_frames(path: Path) -> int:
    """Frames PyAV decodes from ``path``, skipping a damaged packet as a player does (0 when
    the file does not open)."""
    n = 0
    try:
        with av.open(str(path)) as container:
            for packet in container.demux(video=0):
                try:
                    n += len(packet.decode())
                except av.error.InvalidDataError:  # the packet a cut went through
                    continue
    except av.error.FFmpegError:
        pass
    return n


def write_video(path: Path, frames: int, size: tuple[int, int] = (96, 64), **kw: object) -> None:
    sink = VideoSink(str(path), path, 10.0, **kw)
    sink.check()
    rng = np.random.default_rng(1)
    for i in range(frames):
        sink.write(i, block_scene(rng, (size[1], size[0]))[0], np.zeros(1))
    sink.close()


def cli(args: list[str], **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "run", *args], cwd=REPO,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- full disk -------------------------------------------------------------------------
def test_disk_full_mid_recording_fails_and_keeps_the_previous_video(
        seg_onnx: Path, noise_video: Path, small_disk) -> None:  # noqa: ANN001
    out = small_disk.path / "out.mp4"
    write_video(out, 10)  # a good recording from an earlier drive
    before = digest(out)
    small_disk.fill(leave=320 << 10)  # passes the pre-flight check, full a few frames in
    proc = cli([str(seg_onnx), "--source", str(noise_video), "--sink", str(out),
                "--no-progress", "--threads", "1"])
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "the disk is full" in lines[0] and str(out) in lines[0], stderr
    assert "wrote" not in stdout
    assert digest(out) == before and decoded_frames(out) == 10
    assert decoded_frames(partial_path(out)) > 0  # what was filmed before the disk filled


def test_opencv_writer_disk_full_is_detected(small_disk) -> None:  # noqa: ANN001
    """OpenCV's VideoWriter drops what it cannot write without a word: the sink checks."""
    small_disk.fill(leave=300 << 10)
    out = small_disk.path / "cv.mp4"
    rng = np.random.default_rng(0)
    sink = VideoSink(str(out), out, 10.0, writer="opencv")
    sink.check()
    with pytest.raises(OutputError, match="the disk is full"):
        for i in range(200):
            sink.write(i, rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), np.zeros(1))
    sink.close()
    assert not out.exists()


def test_folder_sink_disk_full_mid_stream_is_one_line(
        seg_onnx: Path, noise_video: Path, small_disk, capsys) -> None:  # noqa: ANN001
    small_disk.fill(leave=300 << 10)
    frames = small_disk.path / "frames"
    assert main(["run", str(seg_onnx), "--source", str(noise_video), "--sink",
                 f"frames:{frames}", "--no-progress", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the disk is full" in err[0] and str(frames) in err[0]
    assert 0 < len(list(frames.glob("*.jpg"))) < 40


@pytest.mark.parametrize("sink", ["video", "labels", "frames", "summary"])
@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_unwritable_outputs_fail_before_the_stream(seg_onnx: Path, sink: str, fault: str,
                                                   request: pytest.FixtureRequest,
                                                   capsys: pytest.CaptureFixture) -> None:
    if fault == "read-only":
        where = request.getfixturevalue("readonly_dir")
        reason = "read-only"
    else:
        disk = request.getfixturevalue("small_disk")
        disk.fill(leave=0)
        where, reason = disk.path, "the disk is full"
    target = where / {"video": "out.mp4", "labels": "labels", "frames": "frames",
                      "summary": "s.json"}[sink]
    args = ["run", str(seg_onnx), "--source", "synthetic:night:96x64:5", "--no-progress",
            "--sink", {"video": str(target), "labels": f"labels:{target}",
                       "frames": f"frames:{target}", "summary": "null"}[sink]]
    if sink == "summary":
        args += ["--summary", str(target)]
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0] and str(target) in lines[0], err
    assert "frames in" not in out  # nothing was streamed
    assert not partial_path(where / "out.mp4").exists()


def test_permission_denied_outputs_fail_before_the_stream(seg_onnx: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    for extra in (["--sink", f"labels:{locked / 'labels'}"],
                  ["--sink", "null", "--summary", str(locked / "s.json")],
                  ["--sink", str(locked / "out.mp4")]):
        cmd = unprivileged([sys.executable, "-m", "edgeseg.cli", "run", str(seg_onnx),
                            "--source", "synthetic:night:96x64:5", "--no-progress", *extra])
        done = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True,
                              timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert "permission denied" in lines[0] and str(locked) in lines[0]


# --- kill -9, SIGTERM, truncation --------------------------------------------------------
def wait_for(predicate, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_9_mid_recording_leaves_a_playable_file(seg_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "drive.mp4"
    partial = partial_path(out)
    proc = cli([str(seg_onnx), "--source", "synthetic:night:96x64:100000", "--sink", str(out),
                "--no-progress", "--threads", "1", "--fps", "10"])
    try:
        wait_for(lambda: partial.exists() and decoded_frames(partial) >= 20)
    finally:
        proc.kill()  # SIGKILL: no handler runs, nothing is finalised
        proc.communicate(timeout=30)
    assert not out.exists()
    filmed = decoded_frames(partial)
    assert filmed >= 20 and count_frames(partial) == filmed
    kept = digest(partial)
    # the next run keeps the killed run's recording under a new name, and says so
    proc = cli([str(seg_onnx), "--source", "synthetic:night:96x64:5", "--sink", str(out),
                "--no-progress", "--threads", "1"])
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    recovered = list(tmp_path.glob("drive.recovered-*.mp4"))
    assert len(recovered) == 1 and digest(recovered[0]) == kept
    assert str(recovered[0]) in stderr
    assert decoded_frames(out) == 5 and not partial.exists()


def test_truncated_fragmented_recording_decodes_its_earlier_frames(tmp_path: Path) -> None:
    out = tmp_path / "cut.mp4"
    write_video(out, 50)
    data = out.read_bytes()
    assert decoded_frames(out) == 50
    cut = tmp_path / "cut-short.mp4"
    cut.write_bytes(data[:int(len(data) * 0.6)])  # power lost while writing a fragment
    assert 10 <= decoded_frames(cut) < 50
    assert count_frames(cut) >= 10


def test_sigterm_to_the_process_group_while_encoding(seg_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    proc = cli([str(seg_onnx), "--source", "synthetic:night:320x240:100000", "--sink", str(out),
                "--summary", str(tmp_path / "s.json"), "--no-progress", "--threads", "1"],
               start_new_session=True)
    wait_for(lambda: partial_path(out).exists() and partial_path(out).stat().st_size > 20000)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["end_reason"] == "interrupted"
    assert decoded_frames(out) == summary["frames"]["processed"] > 0
    assert not partial_path(out).exists()


def test_recording_is_h264_with_the_users_umask_and_says_so(seg_onnx: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    old = os.umask(0o027)
    try:
        assert main(["run", str(seg_onnx), "--source", "synthetic:night:96x64:4", "--sink",
                     str(out), "--summary", str(tmp_path / "s.json"), "--no-progress"]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o640
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    video = json.loads((tmp_path / "s.json").read_text())["video"][0]
    assert video["writer"] == "pyav" and video["container"] == "fragmented MP4"
    fallback = tmp_path / "cv.mp4"
    assert main(["run", str(seg_onnx), "--source", "synthetic:night:96x64:4", "--sink",
                 str(fallback), "--video-writer", "opencv", "--summary",
                 str(tmp_path / "s2.json"), "--no-progress"]) == 0
    assert count_frames(fallback) == 4
    video = json.loads((tmp_path / "s2.json").read_text())["video"][0]
    assert video["writer"] == "opencv" and "not fragmented" in video["container"]


def x264_settings(path: Path) -> str:
    """The option string x264 writes into its SEI (what the encoder really ran with)."""
    data = path.read_bytes()
    start = data.index(b"x264 - core")
    return data[start:data.index(b"\x00", start)].decode("ascii", "replace")


def test_recording_preset_reaches_the_encoder(seg_onnx: Path, tmp_path: Path) -> None:
    if pyav_h264()[1] != "libx264":
        pytest.skip(f"PyAV's H.264 encoder here is {pyav_h264()[1] or 'missing'}, not libx264")
    runs = {}
    for preset in (None, "veryfast"):
        out = tmp_path / f"{preset}.mp4"
        extra = ["--video-preset", preset] if preset else []
        assert main(["run", str(seg_onnx), "--source", "synthetic:night:96x64:4", "--sink",
                     str(out), "--summary", str(tmp_path / f"{preset}.json"), "--no-progress",
                     *extra]) == 0
        assert decoded_frames(out) == 4
        runs[preset] = (x264_settings(out),
                        json.loads((tmp_path / f"{preset}.json").read_text())["video"][0])
    # the live default is ultrafast (CAVLC, no sub-pixel refinement); veryfast uses CABAC
    assert "cabac=0" in runs[None][0] and "subme=0" in runs[None][0]
    assert runs[None][1]["codec"] == "h264 (libx264, ultrafast)"
    assert "cabac=1" in runs["veryfast"][0] and "subme=2" in runs["veryfast"][0]
    assert runs["veryfast"][1]["codec"] == "h264 (libx264, veryfast)"
    with pytest.raises(SinkError, match="unknown x264 preset 'placebo'"):
        VideoSink(str(tmp_path / "x.mp4"), tmp_path / "x.mp4", preset="placebo")


def test_a_second_writer_of_the_same_recording_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    first = VideoSink(str(out), out)
    first.check()
    second = VideoSink(str(out), out)
    with pytest.raises(OutputError, match="another process is recording"):
        second.check()
    first.close()
    assert not partial_path(out).exists()  # nothing was recorded: nothing to keep


# --- sources that fail mid-stream ----------------------------------------------------------
def segment_pipeline(seg_onnx: Path, source, sinks) -> StreamPipeline:  # noqa: ANN001
    backend = OrtBackend.from_onnx(seg_onnx, intra_op_threads=1)
    return StreamPipeline(source, StageChain([SegmentStage(backend)]), sinks,
                          OverlayRenderer(backend.metadata.labels, backend.metadata.palette))


class AtFrame(NullSink):
    """Runs ``action`` once, when the first frame from index ``at`` on is written (something
    happens mid-stream). Not at exactly ``at``: a live source drops frames when the machine
    is loaded, and an action that never fires would leave the stream running forever."""

    def __init__(self, at: int, action) -> None:  # noqa: ANN001
        super().__init__("at-frame")
        self.at, self.action, self.done = at, action, False

    def write(self, index: int, rendered: np.ndarray | None, labels: np.ndarray) -> None:
        if index >= self.at and not self.done:
            self.done = True
            self.action()


def test_source_file_truncated_mid_stream(seg_onnx: Path, noise_video: Path,
                                          tmp_path: Path) -> None:
    source_file = tmp_path / "drive.avi"
    source_file.write_bytes(noise_video.read_bytes())
    out = tmp_path / "out.mp4"

    def truncate() -> None:
        with open(source_file, "r+b") as f:
            f.truncate(source_file.stat().st_size // 3)

    source = CaptureSource("drive", str(source_file), cv2.CAP_FFMPEG, live=False)
    summary = segment_pipeline(seg_onnx, source, [open_sink(str(out)), AtFrame(3, truncate)]
                               ).run()
    assert summary.end_reason == "end of source"
    assert 3 < summary.counts.processed < 40
    assert decoded_frames(out) == summary.counts.processed


def test_camera_lost_mid_stream_keeps_the_recording(seg_onnx: Path, noise_video: Path,
                                                    tmp_path: Path) -> None:
    feed = tmp_path / "camera.avi"
    feed.write_bytes(noise_video.read_bytes())
    out = tmp_path / "out.mp4"
    source = CaptureSource("camera", str(feed), cv2.CAP_FFMPEG, live=True, what="camera",
                           reconnect=Reconnect(attempts=2, first_wait=0.01))
    pipeline = segment_pipeline(seg_onnx, source, [open_sink(str(out)), AtFrame(5, feed.unlink)])
    with pytest.raises(SourceLostError, match="2 reconnect attempts"):
        pipeline.run()
    assert decoded_frames(out) == pipeline.counts.processed > 5


def test_frames_that_change_size_mid_stream(seg_onnx: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = [(80, 120)] * 3 + [(64, 96), (63, 95), (100, 150)]
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(tmp_path / f"{i}.png"), block_scene(rng, (h, w))[0])
    out, labels = tmp_path / "out" / "v.mp4", tmp_path / "labels"
    pipeline = segment_pipeline(seg_onnx, ImageFolderSource("dir", tmp_path),
                                [open_sink(str(out)), open_sink(f"labels:{labels}")])
    assert pipeline.run().counts.processed == len(sizes)
    with av.open(str(out)) as container:
        shapes = {(f.height, f.width) for f in container.decode(video=0)}
    assert shapes == {(80, 120)}
    got = [cv2.imread(str(labels / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED).shape
           for i in range(len(sizes))]
    assert got == sizes


def test_runtime_timing_never_reads_the_wall_clock() -> None:
    """NTP or GPS setting the clock mid-drive must not skew latencies or the fps."""
    offenders = []
    for path in (REPO / "edgeseg" / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "time"
                    and isinstance(node.value, ast.Name) and node.value.id == "time"):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_raw_void_ids_in_ground_truth_become_ignore(seg_onnx: Path, tmp_path: Path) -> None:
    """CamVid-style label PNGs hold ids past the model's classes (11 = void): scored as ignore."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        rgb, label = block_scene(rng)
        label[:8] = 30  # not a cityscapes19 class
        label[-4:] = 255
        cv2.imwrite(str(tmp_path / "images" / f"f{i}.png"), rgb[..., ::-1])
        cv2.imwrite(str(tmp_path / "labels" / f"f{i}.png"), label)
    source = ImageFolderSource("dir", tmp_path, "cityscapes19")
    frame = source.read()
    assert frame.labels.dtype == np.uint8
    assert (frame.labels[:8] == 255).all() and frame.labels[8:-4].max() < 19
    camvid = ImageFolderSource("dir", tmp_path, "camvid11")
    assert camvid.read().labels.max() == 255
    assert main(["run", str(seg_onnx), "--source", str(tmp_path), "--sink", "null",
                 "--no-progress", "--threads", "1"]) == 0


# --- engines without their manifest ------------------------------------------------------
def test_ort_engine_without_its_manifest_is_refused(seg_onnx: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    from edgeseg.contract.manifest import manifest_path
    from edgeseg.export.build_engine import build_engine
    from edgeseg.export.profile import BuildProfile
    from edgeseg.runtime.predictor import EngineWithoutManifestWarning

    engine = tmp_path / "seg.ort.onnx"
    build_engine(seg_onnx, engine, BuildProfile(backend="onnxruntime", threads=1), "rebuild")
    manifest_path(engine).unlink()
    capsys.readouterr()
    args = ["run", str(engine), "--source", "synthetic:night:96x64:3", "--sink", "null",
            "--no-progress", "--threads", "1"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(manifest_path(engine)) in lines[0]
    assert f"edgeseg build-engine MODEL.onnx -o {engine}" in lines[0]
    with pytest.warns(EngineWithoutManifestWarning, match="WITHOUT its manifest"):
        assert main([*args, "--no-manifest-check"]) == 0


# --- overlay -----------------------------------------------------------------------------
HUD = ["  9.8 fps  e2e  35.2 ms  fp32 onnxruntime",
       "pre 1.2  infer 20.3  post 0.8  render 1.1  enc 3.2 ms", "dropped 0  corrupt 0  mIoU 41.3"]


def overlay_cover(w: int, h: int) -> float:
    from edgeseg.labels import get_label_space

    space = get_label_space("cityscapes19")
    frame, labels = np.full((h, w, 3), 128, np.uint8), np.zeros((h, w), np.uint8)
    plain = OverlayRenderer(space.names, space.palette, OverlayStyle(0.5, False, False, False))
    full = OverlayRenderer(space.names, space.palette, OverlayStyle(0.5, False, True, True))
    return float((plain.render(frame, labels) != full.render(frame, labels, HUD)).any(2).mean())


def test_hud_and_legend_scale_with_the_frame() -> None:
    assert overlay_cover(256, 128) <= 0.25
    assert overlay_cover(1280, 720) <= 0.25
    scale, _, step, lines = hud_layout(HUD, 1280, 720)
    assert lines == HUD and step >= 20  # every line, ~13 px tall text: readable
    scale, _, _, lines = hud_layout(HUD, 256, 128)
    assert lines and scale >= 0.3


def test_camera_whose_driver_hangs_ends_the_run_and_keeps_the_recording(
        seg_onnx: Path, noise_video: Path, tmp_path: Path) -> None:
    """A real FFmpeg capture on a FIFO that stops sending bytes blocks inside read() forever,
    as a hung V4L2/GStreamer driver does; the stall watchdog ends the run."""
    import threading

    fifo = tmp_path / "camera"
    os.mkfifo(fifo)
    data = noise_video.read_bytes()
    release = threading.Event()

    def camera() -> None:
        with open(fifo, "wb") as f:
            f.write(data[: len(data) // 2])  # about 20 frames, then silence with the line open
            f.flush()
            release.wait(60)

    threading.Thread(target=camera, daemon=True).start()
    out = tmp_path / "out.mp4"
    source = CaptureSource("camera", str(fifo), cv2.CAP_FFMPEG, live=True, what="camera")
    backend = OrtBackend.from_onnx(seg_onnx, intra_op_threads=1)
    pipeline = StreamPipeline(source, StageChain([SegmentStage(backend)]), [open_sink(str(out))],
                              OverlayRenderer(backend.metadata.labels, backend.metadata.palette),
                              stall_s=1.0)
    start = time.monotonic()
    try:
        with pytest.raises(SourceLostError, match=r"camera: no frame for \d+ s .*--stall-timeout"):
            pipeline.run()
    finally:
        release.set()
    assert time.monotonic() - start < 30
    assert pipeline.end_reason == "source stalled"
    assert decoded_frames(out) == pipeline.counts.processed > 5
    assert not partial_path(out).exists()


def test_reconnect_waits_are_not_a_stall(seg_onnx: Path, noise_video: Path,
                                          tmp_path: Path) -> None:
    """Backoff sleeps longer than the stall timeout end with the reconnect error, not a stall."""
    feed = tmp_path / "camera.avi"
    feed.write_bytes(noise_video.read_bytes())
    source = CaptureSource("camera", str(feed), cv2.CAP_FFMPEG, live=True, what="camera",
                           reconnect=Reconnect(attempts=1, first_wait=1.5))
    backend = OrtBackend.from_onnx(seg_onnx, intra_op_threads=1)
    pipeline = StreamPipeline(source, StageChain([SegmentStage(backend)]),
                              [AtFrame(3, feed.unlink)], stall_s=1.0)
    with pytest.raises(SourceLostError, match="1 reconnect attempts"):
        pipeline.run()
    assert pipeline.end_reason != "source stalled"
