"""Where `edgeseg run` puts its results: a window, a video file, image/label folders, nothing.

Sink specs: ``window`` (or ``display://N``, as jetson-inference writes it), ``null``, ``PATH.mp4`` (or ``video:PATH``), ``frames:DIR``
(rendered overlays as JPEG), ``labels:DIR`` (class-id PNGs, what a downstream
planner or an mIoU script reads). Every sink is checked before the stream
starts (a path that cannot be written, or a full disk, fails at once, not after
an hour of driving), and every write is checked (a full disk mid-stream ends
the run with one line naming the path, never a silently broken file).

Videos: H.264 in fragmented MP4 through PyAV when it is installed (a fragment
per keyframe, one keyframe a second), so a recording cut by kill -9 or power
loss plays up to its last fragment, and browsers play it. Without PyAV (or its
H.264 encoder) OpenCV's mp4v writer is the fallback, which is neither
fragmented nor browser-playable; the run summary says which one wrote the file.
The recording is written as the visible ``NAME.partial.mp4`` beside ``NAME.mp4``
and renamed to ``NAME.mp4`` (fsynced) on a clean close, including Ctrl-C and
SIGTERM; an earlier ``NAME.mp4`` is replaced only then. A ``NAME.partial.mp4``
left by a killed run is kept as ``NAME.recovered-TIME.mp4`` at the next start.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.fileio import (
    OutputError,
    check_writable,
    check_writable_dir,
    commit_temp,
    describe_os_error,
    write_image,
)
from edgeseg.runtime.sources import VIDEO_SUFFIXES
from edgeseg.videoio import LIVE_PRESET, VideoEncoder, VideoWriterChoice, VideoWriterUnavailable


class SinkError(OutputError):
    """A sink that cannot be written (unwritable folder, full disk, no display, codec missing)."""


class Sink(ABC):
    """Receives each rendered frame (BGR) and its class-id map, in order."""

    #: needs the rendered overlay (the label sink and the null sink do not)
    wants_render: bool = True

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.stop_requested = False  # a window sink sets it when the user presses q/Esc

    def check(self) -> None:  # noqa: B027 - sinks with nothing to check
        """Fail now, before the stream starts, if this sink cannot work."""

    @abstractmethod
    def write(self, index: int, rendered: np.ndarray | None, labels: np.ndarray) -> None: ...

    def close(self) -> None:  # noqa: B027 - sinks with nothing to finalise
        """Finalise (idempotent): flush the video, rename temp files."""

    def outputs(self) -> list[str]:
        """Paths this sink produced (for the summary)."""
        return []

    def describe(self) -> dict[str, Any]:
        """What this sink writes with (for the run summary); empty when nothing to say."""
        return {}


def preflight(spec: str, target: Path, folder: bool = False) -> None:
    """Prove ``target`` (a file, or a folder of files) can be written and its disk is not full.

    Run before the stream so a read-only mount, a permission problem or a full
    disk is one line naming the path and the fix, not a failure an hour later.
    """
    try:
        (check_writable_dir if folder else check_writable)(target)
    except OutputError as exc:
        raise SinkError(f"{spec}: {exc}") from None


class NullSink(Sink):
    """Discards everything (benchmarking the pipeline without output costs)."""

    wants_render = False

    def write(self, index: int, rendered: np.ndarray | None, labels: np.ndarray) -> None:
        pass


def partial_path(path: Path) -> Path:
    """``drive.mp4`` -> ``drive.partial.mp4``: where a recording lives until it is closed."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def recovered_path(path: Path, mtime: float) -> Path:
    """A free ``NAME.recovered-YYYYmmdd-HHMMSS[-N].EXT`` for a killed run's recording."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(mtime))
    candidate = path.with_name(f"{path.stem}.recovered-{stamp}{path.suffix}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.recovered-{stamp}-{n}{path.suffix}")
    return candidate


class VideoSink(Sink):
    """A recording through `VideoEncoder` (H.264 fragmented MP4, or OpenCV's fallback).

    Opened at the first frame (its size); later frames of another size are
    resized to it. Written as ``NAME.partial.EXT`` (locked against a second
    writer), fsynced every ``sync_s`` and renamed to ``NAME.EXT`` at close.
    """

    def __init__(self, spec: str, path: Path, fps: float = 10.0,
                 writer: VideoWriterChoice = "auto", keyframe_s: float = 1.0,
                 sync_s: float = 5.0, preset: str = LIVE_PRESET) -> None:
        super().__init__(spec)
        self.path, self.fps = path, fps
        self.partial = partial_path(path)
        self.sync_s = sync_s
        try:
            self.encoder = VideoEncoder(self.partial, fps, writer, keyframe_s, preset)
        except VideoWriterUnavailable as exc:
            raise SinkError(f"{spec}: {exc}") from None
        self.fd: int | None = None
        self.size: tuple[int, int] | None = None  # the frames' (W, H)
        self.frames = 0
        self.done = False
        self.failed = False
        self.recovered: Path | None = None
        self.last_sync = time.monotonic()

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), **self.encoder.describe()}

    # --- before the stream -------------------------------------------------------------
    def check(self) -> None:
        if self.path.is_dir():
            raise SinkError(f"{self.spec}: {self.path} is a folder; give a file name like "
                            f"{self.path / 'out.mp4'}")
        preflight(self.spec, self.path)
        self._recover_previous()
        try:
            self.fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              0o666)  # the user's umask applies, as for any new file
        except OSError as exc:
            raise SinkError(f"{self.spec}: {describe_os_error(self.partial, exc)}") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _recover_previous(self) -> None:
        """Keep a killed run's recording under a new name; refuse if a live run still writes it."""
        if not self.partial.exists():
            return
        try:
            fd = os.open(self.partial, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SinkError(f"{self.spec}: {describe_os_error(self.partial, exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SinkError(f"{self.spec}: another process is recording to {self.partial}; "
                            "stop it or write to another file") from None
        finally:
            os.close(fd)
        stat = self.partial.stat()
        if stat.st_size == 0:  # a run killed before its first byte: nothing was recorded
            self.partial.unlink()
            return
        self.recovered = recovered_path(self.path, stat.st_mtime)
        os.replace(self.partial, self.recovered)
        print(f"[edgeseg run] {self.partial} was left by a run that did not finish (killed or "
              f"power loss); kept it as {self.recovered}", file=sys.stderr, flush=True)

    # --- the stream ----------------------------------------------------------------------
    def write(self, index: int, rendered: np.ndarray | None, labels: np.ndarray) -> None:
        assert rendered is not None
        if self.failed:
            return
        h, w = rendered.shape[:2]
        try:
            if self.size is None:
                if self.fd is None:
                    self.check()
                try:
                    self.encoder.open(self.fd, w, h)
                except VideoWriterUnavailable as exc:
                    self.failed = True
                    raise SinkError(f"{self.spec}: {exc}") from None
                self.size = (w, h)
            elif (w, h) != self.size:  # the source changed resolution mid-stream
                rendered = cv2.resize(rendered, self.size, interpolation=cv2.INTER_AREA)
            self.encoder.write(rendered)
            self.frames += 1
            now = time.monotonic()
            if now - self.last_sync >= self.sync_s:  # bound what a power cut loses
                os.fsync(self.fd)
                self.last_sync = now
        except OSError as exc:
            self.failed = True
            raise self._error(exc) from None

    def _error(self, exc: OSError) -> OutputError:
        kept = (f"{self.path} was left as it was" if self.path.exists()
                else f"{self.path} was not written")
        return OutputError(f"{self.spec}: {describe_os_error(self.path, exc)}; {kept}; the "
                           f"frames recorded so far are in {self.partial}")

    def close(self) -> None:
        """Flush the encoder and rename the recording to its final name (playable, fsynced)."""
        if self.done:
            return
        self.done = True
        try:
            self.encoder.close()
            if not self.failed and self.fd is not None:
                if self.frames:
                    commit_temp(self.partial, self.path)
                else:
                    self.partial.unlink(missing_ok=True)
        except OSError as exc:
            self.failed = True
            raise self._error(exc) from None
        finally:
            if self.fd is not None:
                os.close(self.fd)  # releases the lock
                self.fd = None

    def outputs(self) -> list[str]:
        return [str(self.path)] if self.done and self.frames and not self.failed else []


class FolderSink(Sink):
    """One file per frame: rendered overlays (JPEG) or class-id maps (PNG), written atomically."""

    def __init__(self, spec: str, folder: Path, labels: bool) -> None:
        super().__init__(spec)
        self.folder, self.labels = folder, labels
        self.wants_render = not labels
        self.count = 0

    def check(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise SinkError(f"{self.spec}: {self.folder} is a file, not a folder")
        preflight(self.spec, self.folder, folder=True)

    def write(self, index: int, rendered: np.ndarray | None, labels: np.ndarray) -> None:
        if self.labels:
            write_image(self.folder / f"{index:06d}.png", labels, rgb=False)
        else:
            assert rendered is not None
            write_image(self.folder / f"{index:06d}.jpg", rendered, rgb=False)
        self.count += 1

    def outputs(self) -> list[str]:
        return [f"{self.folder}/ ({self.count} files)"] if self.count else []


class WindowSink(Sink):
    """cv2.imshow; q or Esc stops the run."""

    def __init__(self, spec: str, title: str = "edgeseg") -> None:
        super().__init__(spec)
        self.title = title
        self.opened = False

    def check(self) -> None:
        if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise SinkError(f"{self.spec}: no display (DISPLAY is not set); write a video "
                            "instead (--sink out.mp4), or run on the vehicle's screen")
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError(f"{self.spec}: OpenCV cannot open a window ({exc.err}); "
                            "opencv-python-headless has no GUI, install opencv-python") from None
        self.opened = True

    def write(self, index: int, rendered: np.ndarray | None, labels: np.ndarray) -> None:
        assert rendered is not None
        cv2.imshow(self.title, rendered)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stop_requested = True

    def close(self) -> None:
        if self.opened:
            cv2.destroyWindow(self.title)
            self.opened = False


def open_sink(spec: str, fps: float = 10.0, video_writer: VideoWriterChoice = "auto",
              video_preset: str = LIVE_PRESET) -> Sink:
    """The sink for ``spec`` (see the module docstring); ``video_preset`` is the x264 preset
    of H.264 recordings."""
    if spec == "null":
        return NullSink(spec)
    if spec == "window" or spec.startswith("window:"):
        return WindowSink(spec, spec.partition(":")[2] or "edgeseg")
    if is_display_uri(spec):  # jetson-inference's sink form: a window on that display
        return WindowSink(spec, "edgeseg")
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("frames", "labels"):
        if not rest:
            raise SinkError(f"{spec}: expected {kind}:FOLDER")
        return FolderSink(spec, Path(rest), labels=kind == "labels")
    if sep and kind == "video":
        return VideoSink(spec, Path(rest), fps, video_writer, preset=video_preset)
    path = Path(spec)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoSink(spec, path, fps, video_writer, preset=video_preset)
    raise SinkError(f"{spec}: unknown sink; use window (or display://0), null, OUT.mp4, "
                    "frames:DIR or labels:DIR")


def is_display_uri(spec: str) -> bool:
    """``display://0`` (jetson-inference's ``--output`` for a window) means the window sink."""
    return re.fullmatch(r"display://\d+", spec) is not None
