"""Frames per second of the synthetic scene generator: sample a scene, render it, light it.

One OpenCV thread and one process, as the brief for the generator asks (at least
50 frames/s at 512x256 on one core): the number is what one core produces. Each
round renders a new scene (a new world), so sampling is measured too. Besides
pytest-benchmark's wall-clock statistics, ``extra_info`` holds the CPU time of
the process per frame (``time.process_time``): what the generator costs, which
other processes busy on the machine do not inflate. Run:
``pytest benchmarks/test_synth_speed.py``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import cv2
import pytest

from edgeseg.data.synth import keep_freed_memory, render_scene

SIZE = (512, 256)
ROUNDS, WARMUP = 40, 3


@pytest.fixture(scope="module", autouse=True)
def one_core() -> Iterator[None]:
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    keep_freed_memory()  # as `edgeseg synth` does
    yield
    cv2.setNumThreads(threads)


@pytest.mark.parametrize("domain", ["day", "night", "fog"])
@pytest.mark.parametrize("style", ["textured", "flat"])
def test_scene_and_render_fps(benchmark: pytest.FixtureRequest, domain: str, style: str) -> None:
    scenes = itertools.count()
    cpu: list[float] = []

    def frame() -> None:
        start = time.process_time()
        render_scene(0, next(scenes), (domain,), SIZE, style)
        cpu.append(time.process_time() - start)

    benchmark.pedantic(frame, rounds=ROUNDS, warmup_rounds=WARMUP)
    cpu_ms = 1000 * sum(cpu[WARMUP:]) / len(cpu[WARMUP:])  # warm-up rounds call frame too
    fps = 1.0 / benchmark.stats.stats.mean
    benchmark.extra_info.update(fps=round(fps, 1), cpu_ms_per_frame=round(cpu_ms, 2),
                                cpu_fps=round(1000 / cpu_ms, 1), size=f"{SIZE[0]}x{SIZE[1]}",
                                cv2_threads=1)
    print(f"\nsynth {domain} {style} {SIZE[0]}x{SIZE[1]}: {fps:.1f} frames/s wall clock, "
          f"{cpu_ms:.1f} ms CPU per frame = {1000 / cpu_ms:.1f} frames/s on one core")
