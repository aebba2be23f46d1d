"""Frame sources for `edgeseg run`: files, folders, cameras, streams, and synthetic drives.

One spec string picks the source, so a vehicle service file needs no code:

- ``PATH.mp4`` (any video OpenCV/FFmpeg decodes): every frame, in order;
- ``DIR`` of images (``.png``/``.jpg``/...), sorted; with ``DIR/images`` and
  ``DIR/labels`` (class-id PNGs of the same stems) the run scores an online mIoU;
- ``data:NAME:ROOT[:SPLIT]``: a dataset reader (e.g. ``data:camvid:../shared/data/camvid:day_val``)
  with its labels;
- ``0`` / ``/dev/video0``: a V4L2 camera; ``rtsp://...``: an RTSP stream;
- a GStreamer pipeline (contains ``!``) or ``preset:NAME`` (``runtime/cameras/NAME.yaml``);
- jetson-inference's URIs: ``csi://N`` (the ``jetson-csi`` preset with ``sensor-id=N``),
  ``v4l2:///dev/videoN`` (that V4L2 camera), ``file://PATH`` (the file or folder);
- ``synthetic[:DOMAIN[:WxH[:FRAMES[:SEED]]]]``: the generator's moving-camera drive
  (default night), with ground truth.

Live sources (cameras, RTSP, GStreamer) reconnect with backoff when frames stop,
then fail with `SourceLostError`. Frames that do not decode are skipped and
counted in ``corrupt``. Torch-free.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.argtypes import parse_wxh
from edgeseg.errors import EdgesegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts")
#: where `preset:NAME` looks, in order (the repository's runtime/ folder, then the cwd's)
PRESET_DIRS = (Path(__file__).resolve().parents[2] / "runtime" / "cameras",
               Path("runtime") / "cameras")


class SourceError(EdgesegError):
    """A source that cannot be opened (missing file, bad spec, no GStreamer in this OpenCV)."""


class SourceLostError(EdgesegError):
    """A live source that stopped delivering frames and did not come back."""


@dataclass
class SourceFrame:
    index: int  # position in the source (dropped frames leave gaps)
    image: np.ndarray  # H x W x 3 uint8 BGR, as OpenCV delivers it
    t_capture: float  # time.perf_counter() when the frame was read
    labels: np.ndarray | None = None  # H x W ground-truth class ids (label_space), if known
    name: str = ""


@dataclass(frozen=True)
class Reconnect:
    """Backoff for live sources: ``attempts`` reopen tries, waits doubling from ``first_wait``."""

    attempts: int = 5
    first_wait: float = 0.5
    max_wait: float = 8.0

    def waits(self) -> Iterator[float]:
        wait = self.first_wait
        for _ in range(self.attempts):
            yield wait
            wait = min(wait * 2, self.max_wait)


class Source(ABC):
    """Yields `SourceFrame`s; ``read`` returns None at the end of a finite source."""

    live: bool = False  # frames arrive in real time (a slow consumer should drop, not queue)
    label_space: str | None = None  # label space of SourceFrame.labels
    fps: float | None = None
    frame_count: int | None = None

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.corrupt = 0
        self.reconnects = 0
        self.progress_at = 0.0  # time.monotonic() of the last reconnect step (stall watchdog)

    @abstractmethod
    def read(self) -> SourceFrame | None: ...

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release the device or file (idempotent)."""

    def describe(self) -> str:
        return self.spec

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def valid_frame(image: Any) -> bool:
    return (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0)


class CaptureSource(Source):
    """Anything cv2.VideoCapture opens: video files, cameras, RTSP, GStreamer pipelines."""

    #: consecutive failed reads of a file that mean its end rather than damage
    MAX_CORRUPT_RUN = 8

    def __init__(self, spec: str, target: str | int, api: int = cv2.CAP_ANY, *, live: bool,
                 reconnect: Reconnect | None = None, what: str = "video",
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(spec)
        self.target, self.api, self.live, self.what = target, api, live, what
        self.reconnect = reconnect or Reconnect()
        self.sleep = sleep
        self.index = 0
        self.cap = self._open()
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 and not live else None

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.spec}: OpenCV could not open this {self.what}"
                              f"{open_hint(self.target, self.api)}")
        return cap

    def read(self) -> SourceFrame | None:
        failed = 0  # failed reads since the last good frame: corrupt if a good frame follows
        while True:
            ok, image = self.cap.read()
            t = time.perf_counter()
            if ok and valid_frame(image):
                self.corrupt += failed
                frame = SourceFrame(self.index + failed, image, t,
                                    name=f"{self.index + failed:06d}")
                self.index += failed + 1
                return frame
            if ok:  # decoded to something that is not a BGR frame
                self.corrupt += 1
                self.index += 1
                continue
            if self.live:
                self._reconnect()
                continue
            # a file: FFmpeg skips an undecodable frame per failed read; a run of failures
            # is the end (the trailing failures are not counted as corrupt)
            failed += 1
            if failed > self.MAX_CORRUPT_RUN:
                return None

    def _reconnect(self) -> None:
        """Reopen a live source with backoff; `SourceLostError` when it stays away."""
        self.cap.release()
        for attempt, wait in enumerate(self.reconnect.waits(), 1):
            print(f"[edgeseg run] {self.spec}: no frame, reconnecting in {wait:.1f} s "
                  f"(attempt {attempt}/{self.reconnect.attempts})", flush=True)
            self.progress_at = time.monotonic() + wait  # waiting on purpose is not a stall
            self.sleep(wait)
            self.progress_at = time.monotonic()
            cap = cv2.VideoCapture(self.target, self.api)
            if cap.isOpened():
                ok, image = cap.read()
                if ok and valid_frame(image):
                    self.cap = _Primed(cap, image)
                    self.reconnects += 1
                    return
            cap.release()
        raise SourceLostError(
            f"{self.spec}: the {self.what} stopped delivering frames and did not come back after "
            f"{self.reconnect.attempts} reconnect attempts; check the cable/network and power")

    def close(self) -> None:
        self.cap.release()


class _Primed:
    """A reopened capture whose first (already read) frame is handed out first."""

    def __init__(self, cap: cv2.VideoCapture, first: np.ndarray) -> None:
        self.cap, self.first = cap, first

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.first is not None:
            first, self.first = self.first, None
            return True, first
        return self.cap.read()

    def get(self, prop: int) -> float:
        return self.cap.get(prop)

    def release(self) -> None:
        self.cap.release()


def gstreamer_available() -> bool:
    info = cv2.getBuildInformation()
    match = re.search(r"GStreamer:\s*(\S+)", info)
    return bool(match) and match.group(1).upper() not in ("NO", "OFF")


def open_hint(target: str | int, api: int) -> str:
    if api == cv2.CAP_GSTREAMER:
        return ("; check the pipeline with gst-launch-1.0 (replace the appsink with "
                "fakesink) and that it ends in 'appsink'")
    if isinstance(target, int) or str(target).startswith("/dev/"):
        return ("; is the camera connected, is another process using it, and is the user in the "
                "'video' group? (v4l2-ctl --list-devices lists cameras)")
    if str(target).startswith(("rtsp://", "rtsps://")):
        return "; check the URL, credentials and that the stream is up (ffprobe URL)"
    return "; is it a video file FFmpeg can decode?"


class ImageFolderSource(Source):
    """Sorted images of a folder; ``images/`` + ``labels/`` subfolders give ground truth."""

    def __init__(self, spec: str, root: Path, label_space: str | None = None) -> None:
        super().__init__(spec)
        images, labels = root, None
        if (root / "images").is_dir():
            images = root / "images"
            labels = root / "labels" if (root / "labels").is_dir() else None
        self.files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
        self.labels_dir = labels
        self.label_space = label_space if labels is not None else None
        self.num_classes: int | None = None
        if self.label_space:
            from edgeseg.labels import get_label_space

            self.num_classes = get_label_space(self.label_space).num_classes
        self.warned_void = False
        self.frame_count = len(self.files)
        self.position = 0

    def read(self) -> SourceFrame | None:
        while self.position < len(self.files):
            path = self.files[self.position]
            index = self.position
            self.position += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            t = time.perf_counter()
            if not valid_frame(image):
                self.corrupt += 1
                continue
            labels = None
            if self.labels_dir is not None:
                label_path = self.labels_dir / f"{path.stem}.png"
                labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
                if labels is None or labels.shape[:2] != image.shape[:2] or labels.ndim != 2:
                    raise SourceError(f"{label_path}: missing, unreadable or not a single-channel "
                                      f"label map of {image.shape[1]}x{image.shape[0]} for "
                                      f"{path.name}")
                labels = self._void_to_ignore(labels, label_path)
            return SourceFrame(index, image, t, labels, path.stem)
        return None


    def _void_to_ignore(self, labels: np.ndarray, path: Path) -> np.ndarray:
        """Ids outside the label space (CamVid's raw 11 = void) become ignore (255), not a crash."""
        from edgeseg.labels import IGNORE_INDEX

        n = self.num_classes
        if n is None:
            return labels
        outside = (labels >= n) & (labels != IGNORE_INDEX)
        if outside.any():
            if not self.warned_void:
                print(f"[edgeseg run] {path}: label ids {np.unique(labels[outside])[:5].tolist()} "
                      f"are outside {self.label_space} (0..{n - 1}); scored as ignore",
                      file=sys.stderr, flush=True)
                self.warned_void = True
            labels = np.where(outside, IGNORE_INDEX, labels)
        return labels.astype(np.uint8, copy=False)


class DatasetSource(Source):
    """A dataset split through its reader (labels in the dataset's classes when it has them)."""

    def __init__(self, spec: str, dataset_spec: str, model_space: str | None) -> None:
        super().__init__(spec)
        from edgeseg.evaluate import open_eval_dataset

        self.dataset = open_eval_dataset(dataset_spec, model_space or "cityscapes19")
        self.label_space = self.dataset.label_space.name if self.dataset.has_labels else None
        self.frame_count = len(self.dataset)
        self.position = 0

    def read(self) -> SourceFrame | None:
        if self.position >= len(self.dataset):
            return None
        sample = self.dataset[self.position]
        frame = SourceFrame(self.position, cv2.cvtColor(sample["image"], cv2.COLOR_RGB2BGR),
                            time.perf_counter(), sample.get("label"), str(sample["name"]))
        self.position += 1
        return frame


class SyntheticSource(Source):
    """The generator's moving-camera drive (default: night), with pixel-exact labels."""

    label_space = "cityscapes19"

    def __init__(self, spec: str, domain: str = "night", size: tuple[int, int] = (480, 360),
                 num_frames: int | None = 300, seed: int = 0, fps: float = 10.0) -> None:
        super().__init__(spec)
        from edgeseg.data.synth.video import iter_video_frames

        self.fps = fps
        self.frame_count = num_frames
        self.frames = iter_video_frames(domain, size, seed, num_frames, fps=fps)
        self.index = 0

    def read(self) -> SourceFrame | None:
        item = next(self.frames, None)
        if item is None:
            return None
        rgb, labels = item
        frame = SourceFrame(self.index, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            time.perf_counter(), labels, f"{self.index:06d}")
        self.index += 1
        return frame


def parse_synthetic(spec: str) -> SyntheticSource:
    parts = spec.split(":")[1:]
    domain = parts[0] if parts and parts[0] else "night"
    try:
        size = parse_wxh(parts[1], 16) if len(parts) > 1 and parts[1] else (480, 360)
        frames = int(parts[2]) if len(parts) > 2 and parts[2] else 300
        seed = int(parts[3]) if len(parts) > 3 and parts[3] else 0
    except (ValueError, argparse.ArgumentTypeError):
        raise SourceError(f"{spec}: expected synthetic[:DOMAIN[:WxH[:FRAMES[:SEED]]]], e.g. "
                          "synthetic:night:480x360:300") from None
    from edgeseg.data.synth.domains import DOMAINS

    if domain not in DOMAINS:
        raise SourceError(f"{spec}: unknown domain {domain!r}; use one of {list(DOMAINS)}")
    return SyntheticSource(spec, domain, size, frames or None, seed)


def load_preset(name: str) -> tuple[str, Path]:
    """``runtime/cameras/NAME.yaml`` -> (GStreamer pipeline or camera spec, file)."""
    import yaml

    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        found = [d / f"{name}.yaml" for d in PRESET_DIRS if (d / f"{name}.yaml").is_file()]
        if not found:
            known = sorted({p.stem for d in PRESET_DIRS if d.is_dir() for p in d.glob("*.yaml")})
            raise SourceError(f"preset:{name}: no such camera preset; known: {known} "
                              f"(in {PRESET_DIRS[0]})")
        path = found[0]
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SourceError(f"{path}: cannot read the camera preset: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("source"), str):
        raise SourceError(f"{path}: a camera preset is a mapping with a 'source:' string "
                          "(a GStreamer pipeline ending in appsink, or a camera spec)")
    return " ".join(data["source"].split()), path


#: the camera preset ``csi://N`` uses, and its sensor-id setting
CSI_PRESET = "jetson-csi"
_SENSOR_ID = re.compile(r"\bsensor-id=\d+")


def resolve_uri(spec: str) -> str:
    """jetson-inference's source URIs -> the spec they mean here (others unchanged).

    ``csi://N`` -> the ``jetson-csi`` preset's pipeline with ``sensor-id=N``;
    ``v4l2:///dev/videoN`` -> ``/dev/videoN``; ``file://PATH`` -> ``PATH``.
    """
    spec = spec.strip()
    if spec.startswith("csi://"):
        sensor = spec.removeprefix("csi://")
        if not re.fullmatch(r"\d+", sensor):
            raise SourceError(f"{spec}: expected csi://N, N the CSI sensor id (e.g. csi://0)")
        pipeline, path = load_preset(CSI_PRESET)
        if not _SENSOR_ID.search(pipeline):
            raise SourceError(f"{spec}: the {path} pipeline has no sensor-id=N to set")
        return _SENSOR_ID.sub(f"sensor-id={int(sensor)}", pipeline, count=1)
    if spec.startswith("v4l2://"):
        device = spec.removeprefix("v4l2://")
        if not re.fullmatch(r"/dev/video\d+", device):
            raise SourceError(f"{spec}: expected v4l2:///dev/videoN (e.g. v4l2:///dev/video0)")
        return device
    if spec.startswith("file://"):
        path = spec.removeprefix("file://")
        if not path:
            raise SourceError(f"{spec}: expected file://PATH (file:///abs/path or file://rel)")
        return path
    return spec


def open_source(spec: str, *, model_space: str | None = None,
                reconnect: Reconnect | None = None) -> Source:
    """The source for ``spec`` (see the module docstring); errors name the spec and the fix."""
    spec = spec.strip()
    resolved = resolve_uri(spec)
    if resolved != spec:
        source = open_source(resolved, model_space=model_space, reconnect=reconnect)
        source.spec = f"{spec} ({source.spec})" if "!" not in resolved else spec
        return source
    if spec.startswith("preset:") or spec.endswith((".yaml", ".yml")):
        pipeline, path = load_preset(spec.removeprefix("preset:"))
        source = open_source(pipeline, model_space=model_space, reconnect=reconnect)
        source.spec = f"{spec} ({path})"
        return source
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return parse_synthetic(spec)
    if spec.startswith("data:"):
        return DatasetSource(spec, spec[len("data:"):], model_space)
    if "!" in spec:
        if not gstreamer_available():
            raise SourceError(
                f"{spec[:60]}...: a GStreamer pipeline, but this OpenCV build has no GStreamer "
                "(cv2.getBuildInformation() says 'GStreamer: NO'; pip wheels never have it). On a "
                "Jetson use JetPack's system OpenCV (python3-opencv) instead of opencv-python; "
                "a USB camera also works as --source 0")
        return CaptureSource(spec, spec, cv2.CAP_GSTREAMER, live=True, reconnect=reconnect,
                             what="GStreamer pipeline")
    if re.fullmatch(r"\d+", spec):
        return CaptureSource(spec, int(spec), cv2.CAP_V4L2 if os.name == "posix" else cv2.CAP_ANY,
                             live=True, reconnect=reconnect, what="camera")
    if spec.startswith("/dev/video"):
        return CaptureSource(spec, spec, cv2.CAP_V4L2, live=True, reconnect=reconnect,
                             what="camera")
    if re.match(r"(rtsps?|rtmp|http|https|udp|tcp)://", spec):
        return CaptureSource(spec, spec, cv2.CAP_FFMPEG, live=True, reconnect=reconnect,
                             what="network stream")
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(spec, path, model_space)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder (sources: a video file, an image "
                          "folder, a camera index or /dev/videoN, rtsp://..., a GStreamer "
                          "pipeline, preset:NAME, csi://N, v4l2:///dev/videoN, file://PATH, "
                          "data:NAME:ROOT:SPLIT, synthetic[:night])")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{spec}: a single image; pass its folder to stream a sequence")
    return CaptureSource(spec, str(path), cv2.CAP_FFMPEG, live=False, what="video file")
