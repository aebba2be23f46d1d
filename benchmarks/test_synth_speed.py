"""Frames per second of the synthetic scene generator: sample a scene, render it, light it.

One OpenCV thread and one process, as the brief for the generator asks: the
number is what one core produces. Each round renders a new scene (a new world),
so sampling is measured too. Run: ``pytest benchmarks/test_synth_speed.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import cv2
import pytest

from edgeseg.data.synth import keep_freed_memory, render_scene

SIZE = (512, 256)


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
    benchmark.pedantic(lambda: render_scene(0, next(scenes), (domain,), SIZE, style),
                       rounds=40, warmup_rounds=3)
    fps = 1.0 / benchmark.stats.stats.mean
    benchmark.extra_info.update(fps=round(fps, 1), size=f"{SIZE[0]}x{SIZE[1]}", cv2_threads=1)
    print(f"\nsynth {domain} {style} {SIZE[0]}x{SIZE[1]}: {fps:.1f} frames/s")
