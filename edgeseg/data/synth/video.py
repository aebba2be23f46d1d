"""Driving videos: the ego camera moves along a persistent world with moving traffic.

`iter_video_frames` streams (RGB, labels) frames, torch-free, so the runtime can
use it as a live synthetic camera with ground truth; `write_video` stores a
sequence as an mp4 plus per-frame label pngs and a json description.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from edgeseg.data.synth.domains import apply_domain, sample_look
from edgeseg.data.synth.generate import DEFAULT_SIZE, domain_rng, surface_of
from edgeseg.data.synth.world import World
from edgeseg.fileio import atomic_path, write_image, write_json
from edgeseg.videoio import VideoEncoder

DEFAULT_FPS = 10.0


def iter_video_frames(domain: str, size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0,
                      num_frames: int | None = None, style: str = "textured",
                      fps: float = DEFAULT_FPS, index: int = 0
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames (H, W, 3 uint8 RGB; H, W uint8 trainIds) of video ``index`` of ``seed``.

    Endless when ``num_frames`` is None. The lighting conditions are drawn once;
    sensor noise and rain change per frame.
    """
    world = World(seed, "video", index)
    rng = domain_rng(seed, "video", index, domain)
    look = sample_look(domain, rng)
    frames = itertools.count() if num_frames is None else range(num_frames)
    for i in frames:
        t = i / fps
        surface = surface_of(world, world.camera(*size, t), style, t)
        yield apply_domain(surface, look, rng), surface.labels


def write_video(root: str | Path, name: str, domain: str, num_frames: int,
                size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0, style: str = "textured",
                fps: float = DEFAULT_FPS, index: int = 0,
                progress: Callable[[int], object] | None = None) -> Path:
    """Write ``videos/<name>.mp4`` (H.264 through `VideoEncoder`), ``videos/<name>_labels/NNNNNN.png`` and
    ``videos/<name>.json`` under ``root``; returns the mp4 path. ``progress`` is
    called with 1 per frame."""
    videos = Path(root) / "videos"
    path = videos / f"{name}.mp4"
    labels_dir = videos / f"{name}_labels"
    with atomic_path(path) as tmp:
        encoder = VideoEncoder(tmp, fps)  # the temp keeps the suffix that picks the container
        fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
        try:
            encoder.open(fd, *size)
            for i, (rgb, labels) in enumerate(iter_video_frames(domain, size, seed, num_frames,
                                                                style, fps, index)):
                encoder.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                write_image(labels_dir / f"{i:06d}.png", labels, rgb=False)
                if progress:
                    progress(1)
            encoder.close()
        finally:
            os.close(fd)
    write_json(videos / f"{name}.json", {
        "fps": fps, "domain": domain, "size": list(size), "frames": num_frames, "seed": seed,
        "index": index, "style": style, "labels": f"{name}_labels",
    })
    return path
