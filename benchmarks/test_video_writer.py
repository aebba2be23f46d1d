"""Cost per frame of the recording writers `edgeseg run` can use, on this CPU, same frames.

- ``pyav-h264-frag-PRESET``: H.264 (libx264, zerolatency, one keyframe a second) in
  fragmented MP4 through PyAV, the default: plays after kill -9 and in browsers; at
  ``ultrafast`` (`edgeseg run`'s default: the encoder shares the cores with the engine)
  and ``veryfast`` (`--video-preset veryfast`: smaller files for more CPU);
- ``opencv-mp4v``: OpenCV's VideoWriter (MPEG-4 part 2), the fallback without PyAV.

Each round writes the same 480x360 rendered overlays (the generator's night drive through
the real renderer) with the real `VideoSink`, so the numbers include colour conversion,
muxing and the write/fsync path. One thread (`OMP_NUM_THREADS=1` is not enough for x264:
its thread count is whatever it chooses on this machine, as in a real run).

    pytest benchmarks/test_video_writer.py --benchmark-columns=mean,median,stddev
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.labels import get_label_space
from edgeseg.runtime.overlay import OverlayRenderer
from edgeseg.runtime.sinks import VideoSink
from edgeseg.runtime.sources import open_source
from edgeseg.videoio import pyav_h264

FRAMES = 60
SIZE = "480x360"


@pytest.fixture(scope="module")
def rendered() -> list[np.ndarray]:
    """Rendered overlays as the output thread hands them to the sink."""
    space = get_label_space("cityscapes19")
    renderer = OverlayRenderer(space.names, space.palette)
    source = open_source(f"synthetic:night:{SIZE}:{FRAMES}")
    frames = []
    while (frame := source.read()) is not None:
        frames.append(renderer.render(frame.image, frame.labels, ["12.0 fps  e2e 40 ms"]))
    return frames


@pytest.mark.parametrize(("writer", "preset"), [("pyav", "ultrafast"), ("pyav", "veryfast"),
                                                ("opencv", "ultrafast")],
                         ids=["pyav-h264-frag-ultrafast", "pyav-h264-frag-veryfast",
                              "opencv-mp4v"])
def test_video_writer_cost_per_frame(benchmark, writer: str, preset: str,  # noqa: ANN001
                                     rendered: list[np.ndarray], tmp_path: Path) -> None:
    if writer == "pyav" and pyav_h264()[0] is None:
        pytest.skip(pyav_h264()[2])
    out = tmp_path / "rec.mp4"
    labels = np.zeros(1)

    def record() -> None:
        sink = VideoSink(str(out), out, 10.0, writer=writer, preset=preset)
        sink.check()
        for i, image in enumerate(rendered):
            sink.write(i, image, labels)
        sink.close()

    benchmark.pedantic(record, rounds=3, warmup_rounds=1)
    per_frame_ms = benchmark.stats.stats.mean * 1e3 / len(rendered)
    benchmark.extra_info.update(per_frame_ms=round(per_frame_ms, 3), frames=len(rendered),
                                size=SIZE, bytes=out.stat().st_size)
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and cap.read()[0]
    print(f"\n{writer} ({preset}): {per_frame_ms:.2f} ms/frame at {SIZE}, {out.stat().st_size} bytes "
          f"for {len(rendered)} frames")
