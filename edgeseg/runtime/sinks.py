"""Where `edgeseg run` puts its results: a window, a video file, image/label folders, nothing.

Sink specs: ``window``, ``null``, ``PATH.mp4`` (or ``video:PATH``), ``frames:DIR``
(rendered overlays as JPEG), ``labels:DIR`` (class-id PNGs, what a downstream
planner or an mIoU script reads). Every sink is checked before the stream
starts (a path that cannot be written fails at once, not after an hour of
driving). A video is written under a temp name and renamed when the sink
closes (also on Ctrl-C), so the final name always holds a playable file.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.fileio import write_image
from edgeseg.runtime.sources import VIDEO_SUFFIXES

FOURCCS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


class SinkError(EdgesegError):
    """A sink that cannot be written (unwritable folder, no display, codec missing)."""


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


def ensure_writable_dir(folder: Path, spec: str) -> None:
    """Create ``folder`` if needed and prove a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".edgeseg-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SinkError(f"{spec}: cannot write to {folder} ({exc.strerror or exc}); pick a "
                        "writable path or fix the folder's permissions") from None


class NullSink(Sink):
    """Discards everything (benchmarking the pipeline without output costs)."""

    wants_render = False

    def write(self, index: int, rendered: np.ndarray | None, labels: np.ndarray) -> None:
        pass


class VideoSink(Sink):
    """mp4/avi through cv2.VideoWriter, opened at the first frame (its size), renamed at close."""

    def __init__(self, spec: str, path: Path, fps: float = 10.0) -> None:
        super().__init__(spec)
        self.path, self.fps = path, fps
        self.fourcc = FOURCCS.get(path.suffix.lower(), "mp4v")
        self.writer: cv2.VideoWriter | None = None
        self.tmp: Path | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.done = False

    def check(self) -> None:
        if self.path.is_dir():
            raise SinkError(f"{self.spec}: {self.path} is a folder; give a file name like "
                            f"{self.path / 'out.mp4'}")
        ensure_writable_dir(self.path.parent, self.spec)

    def _open(self, width: int, height: int) -> None:
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.path.suffix,
                                    dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter.fourcc(*self.fourcc), self.fps,
                                 (width, height))
        if not writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise SinkError(f"{self.spec}: OpenCV cannot write {self.path.suffix} video with "
                            f"codec {self.fourcc} here; try a .avi (MJPG) or .mp4 (mp4v) name")
        self.writer, self.size = writer, (width, height)

    def write(self, index: int, rendered: np.ndarray | None, labels: np.ndarray) -> None:
        assert rendered is not None
        h, w = rendered.shape[:2]
        if self.writer is None:
            self._open(w, h)
        elif (w, h) != self.size:  # the source changed resolution mid-stream
            rendered = cv2.resize(rendered, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(rendered)
        self.frames += 1

    def close(self) -> None:
        if self.done:
            return
        self.done = True
        if self.writer is not None:
            self.writer.release()
        if self.tmp is not None:
            if self.frames:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)

    def outputs(self) -> list[str]:
        return [str(self.path)] if self.done and self.frames else []


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
        ensure_writable_dir(self.folder, self.spec)

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


def open_sink(spec: str, fps: float = 10.0) -> Sink:
    """The sink for ``spec`` (see the module docstring)."""
    if spec == "null":
        return NullSink(spec)
    if spec == "window" or spec.startswith("window:"):
        return WindowSink(spec, spec.partition(":")[2] or "edgeseg")
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("frames", "labels"):
        if not rest:
            raise SinkError(f"{spec}: expected {kind}:FOLDER")
        return FolderSink(spec, Path(rest), labels=kind == "labels")
    if sep and kind == "video":
        return VideoSink(spec, Path(rest), fps)
    path = Path(spec)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoSink(spec, path, fps)
    raise SinkError(f"{spec}: unknown sink; use window, null, OUT.mp4, frames:DIR or labels:DIR")
