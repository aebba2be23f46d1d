"""Per-stage latency histograms for a stream, shared by the pipeline's threads.

Every stage (capture, preprocess, h2d, infer, d2h, postprocess, render,
encode, and end-to-end) keeps its samples in milliseconds, bounded to the most
recent ``keep`` so a day-long camera run does not grow without limit. The HUD
reads recent means while the stream runs; the summary reports p50/p90/p99.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the order stages are printed in (others follow alphabetically)
STAGE_ORDER = ("capture", "gate", "preprocess", "translate", "h2d", "infer", "d2h", "postprocess",
               "render", "encode", "end_to_end")


@dataclass(frozen=True)
class StageStats:
    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean_ms": round(self.mean, 3), "p50_ms": round(self.p50, 3),
                "p90_ms": round(self.p90, 3), "p99_ms": round(self.p99, 3),
                "max_ms": round(self.max, 3)}


def stage_stats(samples_ms: np.ndarray | list[float]) -> StageStats:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return StageStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return StageStats(int(a.size), float(a.mean()), float(p50), float(p90), float(p99),
                      float(a.max()))


def time_calls(fn: Callable[[], Any], warmup: int = 3, iterations: int = 20) -> list[float]:
    """Milliseconds of ``iterations`` calls of ``fn`` after ``warmup`` untimed ones (the first
    runs allocate buffers, pick kernels and fill caches, which is not steady-state speed)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


class StageTimes:
    """Thread-safe per-stage samples (ms)."""

    def __init__(self, keep: int = 100_000) -> None:
        self.keep = keep
        self._samples: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, ms: float) -> None:
        with self._lock:
            if stage not in self._samples:
                self._samples[stage] = deque(maxlen=self.keep)
            self._samples[stage].append(ms)

    def add_all(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.add(stage, ms)

    def stages(self) -> list[str]:
        with self._lock:
            names = list(self._samples)
        known = [s for s in STAGE_ORDER if s in names]
        return known + sorted(s for s in names if s not in STAGE_ORDER)

    def samples(self, stage: str) -> np.ndarray:
        with self._lock:
            return np.array(self._samples.get(stage, ()), dtype=np.float64)

    def recent_mean(self, stage: str, last: int = 30) -> float:
        """Mean of the last ``last`` samples (what the HUD shows); 0 when none."""
        with self._lock:
            d = self._samples.get(stage)
            if not d:
                return 0.0
            n = min(last, len(d))
            return sum(d[i] for i in range(len(d) - n, len(d))) / n

    def summary(self) -> dict[str, StageStats]:
        return {stage: stage_stats(self.samples(stage)) for stage in self.stages()}


class RateMeter:
    """Frames per second over a sliding window of completion times (for the HUD)."""

    def __init__(self, window: int = 30) -> None:
        self.times: deque[float] = deque(maxlen=window)

    def tick(self, t: float) -> None:
        self.times.append(t)

    @property
    def fps(self) -> float:
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])
