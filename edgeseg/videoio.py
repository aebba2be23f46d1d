"""The one video encoder: H.264 in fragmented MP4 through PyAV, OpenCV's writer as the fallback.

Both the runtime's recordings and the synthetic generator's drive videos are
written through `VideoEncoder`, so every mp4 edgeseg writes plays in a browser
and, where PyAV is installed, plays up to its last fragment (one per keyframe,
a keyframe a second) after a kill or power cut. Without PyAV or an H.264
encoder, OpenCV writes mp4v (neither fragmented nor browser-playable); the
encoder says which one it used. Every failed write raises OSError at once
(OpenCV's silent drops are caught by checking free space and the result).
Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import os
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from edgeseg.fileio import is_disk_full

FOURCCS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
#: containers PyAV writes H.264 into (fragmented where the format has fragments)
PYAV_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
#: H.264 encoder names to try in PyAV's bundled FFmpeg, best first
H264_ENCODERS = ("libx264", "h264", "libopenh264")
FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
VideoWriterChoice = Literal["auto", "pyav", "opencv"]
#: x264 presets a recording may use, cheapest first (FFmpeg's ``-preset`` names)
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")
#: live recordings (`edgeseg run`): the encoder shares the cores with the engine, and
#: ultrafast costs about a third of veryfast's CPU per frame for about 1.5x the bytes
#: (480x360: 2.1-2.4 vs 5.5-7.0 ms, 11 vs 7.6 KiB per frame on a 2-core Xeon)
LIVE_PRESET = "ultrafast"
#: files written offline (the synthetic generator's drives): smaller files, CPU is not shared
OFFLINE_PRESET = "veryfast"


class VideoWriterUnavailable(ValueError):
    """The asked-for writer cannot write this file here (no PyAV, no H.264, no codec)."""


@lru_cache(maxsize=1)
def pyav_h264() -> tuple[Any, str, str]:
    """(the av module, H.264 encoder name, "") or (None, "", why not)."""
    try:
        import av
    except ImportError as exc:
        return None, "", f"PyAV is not installed ({exc}); pip install av"
    for name in H264_ENCODERS:
        try:
            codec = av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - UnknownCodecError and friends differ by version
            continue
        if codec.type == "video":
            return av, codec.name, ""
    return None, "", f"PyAV {av.__version__} has no H.264 encoder ({', '.join(H264_ENCODERS)})"


def disk_full_error(path: Path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def playable(path: Path) -> bool:
    """True when OpenCV opens ``path`` and decodes its first frame."""
    cap = cv2.VideoCapture(str(path))
    try:
        return cap.isOpened() and cap.read()[0]
    finally:
        cap.release()


class _FdWriter:
    """The file object PyAV muxes into: every write reaches the OS or raises (ENOSPC, EIO).

    FFmpeg's own file protocol reports a failed write late or not at all; through
    this object the first failed write raises OSError in the thread that encodes.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self.fd, view[done:])
        return done

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self.fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def seekable(self) -> bool:
        return True


class VideoEncoder:
    """Encodes BGR frames into ``path`` (already created, open as ``fd``); chosen at init.

    ``open(width, height)`` at the first frame, ``write`` per frame (same size),
    ``close`` flushes and, for OpenCV, checks the file plays. The caller owns
    the file: its name, fsync and rename.
    """

    def __init__(self, path: Path, fps: float, choice: VideoWriterChoice = "auto",
                 keyframe_s: float = 1.0, preset: str = OFFLINE_PRESET) -> None:
        if preset not in X264_PRESETS:
            raise VideoWriterUnavailable(f"unknown x264 preset {preset!r}; use one of "
                                         f"{', '.join(X264_PRESETS)}")
        self.path, self.fps, self.keyframe_s, self.preset = path, fps, keyframe_s, preset
        self.fourcc = FOURCCS.get(path.suffix.lower(), "mp4v")
        self.av, self.encoder, why = pyav_h264()
        fmt = PYAV_FORMATS.get(path.suffix.lower())
        if choice == "pyav" and (self.av is None or fmt is None):
            raise VideoWriterUnavailable(
                f"cannot write H.264 with PyAV: "
                f"{why or f'{path.suffix} is not one of {sorted(PYAV_FORMATS)}'}")
        self.kind = "pyav" if choice != "opencv" and self.av is not None and fmt else "opencv"
        self.format = fmt or ""
        self.fallback_reason = "" if self.kind == "pyav" else (
            "asked for" if choice == "opencv" else why or f"PyAV does not write {path.suffix}")
        self.fd_writer: _FdWriter | None = None
        self.writer: cv2.VideoWriter | None = None
        self.container: Any = None
        self.stream: Any = None
        self.failed = False

    def describe(self) -> dict[str, Any]:
        """What writes the file (for run summaries and logs)."""
        if self.kind == "pyav":
            container = "fragmented MP4" if self.format in ("mp4", "mov") else self.format
            codec = f"h264 ({self.encoder}, {self.preset})" if self.encoder == "libx264" \
                else f"h264 ({self.encoder})"
            return {"writer": "pyav", "codec": codec, "container": container}
        return {"writer": "opencv", "codec": self.fourcc,
                "container": f"{self.path.suffix.lstrip('.')} (not fragmented: a killed run "
                             "leaves no playable file)", "why": self.fallback_reason}

    def open(self, fd: int, width: int, height: int) -> None:
        if self.kind == "opencv":
            writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*self.fourcc),
                                     self.fps, (width, height))
            if not writer.isOpened():
                self.failed = True
                raise VideoWriterUnavailable(
                    f"OpenCV cannot write {self.path.suffix} video with codec {self.fourcc} "
                    "here; try a .avi (MJPG) or .mp4 (mp4v) name, or pip install av for H.264")
            self.writer = writer
            return
        options = dict(FRAGMENTED) if self.format in ("mp4", "mov") else {"flush_packets": "1"}
        self.fd_writer = _FdWriter(fd)
        self.container = self.av.open(self.fd_writer, "w", format=self.format, options=options)
        stream = self.container.add_stream(self.encoder,
                                           rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height = width + width % 2, height + height % 2  # 4:2:0 needs even
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = max(1, round(self.fps * self.keyframe_s))
        if self.encoder == "libx264":
            # no lookahead or B-frames: a frame is in the file within one fragment of being shown
            stream.options = {"preset": self.preset, "tune": "zerolatency", "crf": "23"}
        self.stream = stream

    def write(self, bgr: np.ndarray) -> None:
        """Encode one frame; OSError (ENOSPC, EIO) when it did not reach the file."""
        try:
            if self.writer is not None:
                self.writer.write(bgr)
                if is_disk_full(self.path):  # VideoWriter drops what it cannot write silently
                    raise disk_full_error(self.path)
            else:
                self._encode(np.ascontiguousarray(bgr))
        except OSError:
            self.failed = True
            raise

    def _encode(self, image: np.ndarray | None) -> None:
        if image is not None:
            h, w = image.shape[:2]
            if (w % 2) or (h % 2):
                image = cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
            packets = self.stream.encode(self.av.VideoFrame.from_ndarray(image, format="bgr24"))
        else:
            packets = self.stream.encode()  # flush the encoder
        for packet in packets:
            self.container.mux(packet)

    def close(self) -> None:
        """Flush what is buffered; OSError when the file is not complete and playable."""
        if self.container is not None:
            try:
                if not self.failed:
                    self._encode(None)
                    self.container.close()
            except OSError:
                self.failed = True
                raise
            finally:
                if self.failed:  # the error is already reported: closing is best effort
                    with contextlib.suppress(Exception):
                        self.container.close()
                self.container = None
                if self.fd_writer is not None:
                    self.fd_writer.fd = -1  # a late write from FFmpeg fails, never lands elsewhere
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            if not self.failed and is_disk_full(self.path):
                self.failed = True
                raise disk_full_error(self.path)
            if not self.failed and not playable(self.path):
                self.failed = True
                raise OSError(errno.EIO, "OpenCV wrote a video that does not play", str(self.path))
