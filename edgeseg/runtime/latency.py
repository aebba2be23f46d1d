"""Timing loops and latency statistics: every latency number in edgeseg is computed here.

`edgeseg bench`, ``build-engine --precision auto`` (`interleaved_latency`) and the
benchmark suites share one definition of warm-up, percentiles and throughput,
so numbers from different commands can be put side by side. numpy only, and in
the runtime (below export and bench) because the engine-choosing code in
``export.variants`` needs it too.

Per-stage times are whatever the target can tell apart, under the runtime's
stage names (``preprocess``, ``h2d``, ``infer``, ``d2h``, ``postprocess``): the
runtime's engine stage reports them for ONNX Runtime and TensorRT (TensorRT
through CUDA events), and a `StageClock` around a PyTorch module marks its
forward pass. End to end is always the wall clock around the whole run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from edgeseg.runtime.timing import STAGE_ORDER, stage_stats, time_calls

#: the whole run, frame in to class map out (the runtime's name for it)
END_TO_END = "end_to_end"


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per run (one batch) over ``count`` timed runs, after warm-up."""

    count: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    batch: int = 1

    @property
    def fps(self) -> float:
        """Frames per second at the mean latency (``batch`` frames per run)."""
        return self.batch * 1000.0 / self.mean_ms if self.mean_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fps": self.fps}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStats:
        return cls(**{k: v for k, v in data.items() if k != "fps"})


def summarize(times_ms: Sequence[float], batch: int = 1) -> LatencyStats:
    """Mean, spread and percentiles of per-run times; the percentiles are the runtime's
    (`stage_stats`, numpy's linear interpolation), so `edgeseg run` and `bench` agree."""
    if len(times_ms) == 0:
        raise ValueError("summarize needs at least one time")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    a = np.asarray(times_ms, np.float64)
    s = stage_stats(a)
    return LatencyStats(count=s.count, mean_ms=s.mean, std_ms=float(a.std()),
                        min_ms=float(a.min()), p50_ms=s.p50, p90_ms=s.p90, p99_ms=s.p99,
                        max_ms=s.max, batch=batch)


def interleaved_latency(predicts: Sequence[Callable[[np.ndarray], Any]], image: np.ndarray,
                        iterations: int = 20, rounds: int = 4, warmup: int = 3
                        ) -> list[tuple[float, float]]:
    """(p50, mean) ms of each ``predict(image)``, timed in ``rounds`` rounds whose order
    rotates, ``iterations`` calls each in all: a machine whose speed drifts (a shared VM,
    thermal throttling) then biases none of them, as timing one after the other would."""
    if not predicts:
        return []
    rounds = max(1, min(rounds, iterations))
    per_round = -(-iterations // rounds)
    times: list[list[float]] = [[] for _ in predicts]
    for r in range(rounds):
        for i in [*range(r % len(predicts), len(predicts)), *range(r % len(predicts))]:
            times[i] += time_calls(lambda i=i: predicts[i](image), warmup if r == 0 else 0,
                                   per_round)
    return [(s.p50_ms, s.mean_ms) for s in (summarize(t) for t in times)]


# --------------------------------------------------------------------- stages


class StageClock:
    """A callable (an engine call) that remembers when its last call started and ended, so
    a caller that times the whole run can split it into before / during / after."""

    def __init__(self, fn: Callable[..., Any], sync: Callable[[], None] | None = None) -> None:
        self.fn = fn
        self.sync = sync  # e.g. torch.cuda.synchronize: an asynchronous device ends on a sync
        self.start = self.end = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.start = time.perf_counter()
        try:
            out = self.fn(*args, **kwargs)
            if self.sync is not None:
                self.sync()
            return out
        finally:
            self.end = time.perf_counter()


#: run i -> the stage times (ms) the target could tell apart ({} when it cannot)
RunFn = Callable[[int], dict[str, float]]


class Runnable(Protocol):
    """What `measure` times: ``runner(frames, batch)`` -> a function running iteration i."""

    def runner(self, frames: Sequence[np.ndarray], batch: int) -> RunFn: ...


@dataclass
class LatencyResult:
    """One target at one batch size: per-stage statistics and the raw end-to-end times."""

    batch: int
    stats: dict[str, LatencyStats]  # END_TO_END always, then the stages the target reports
    times_ms: list[float] = field(default_factory=list)  # end to end, one per run

    @property
    def total(self) -> LatencyStats:
        return self.stats[END_TO_END]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "stats": {k: v.to_dict() for k, v in self.stats.items()},
                "times_ms": [round(t, 4) for t in self.times_ms]}


def time_stages(run: RunFn, warmup: int, iterations: int, batch: int = 1) -> LatencyResult:
    """Time ``run(i)`` end to end (wall clock around the call) and collect the stage times
    it reports; a stage missing from some runs is left out rather than averaged wrongly."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    for i in range(max(0, warmup)):
        run(i)
    total: list[float] = []
    parts: dict[str, list[float]] = {}
    for i in range(iterations):
        start = time.perf_counter()
        timings = run(warmup + i)
        total.append((time.perf_counter() - start) * 1e3)
        for stage, ms in timings.items():
            parts.setdefault(stage, []).append(ms)
    stats = {END_TO_END: summarize(total, batch)}
    order = [s for s in STAGE_ORDER if s in parts] + sorted(set(parts) - set(STAGE_ORDER))
    stats.update({s: summarize(parts[s], batch) for s in order if len(parts[s]) == iterations})
    return LatencyResult(batch, stats, total)


def measure(target: Runnable, frames: Sequence[np.ndarray], batch: int = 1, warmup: int = 5,
            iterations: int = 50) -> LatencyResult:
    """Latency of ``target`` on ``frames`` (cycled), ``batch`` frames per run."""
    if not frames:
        raise ValueError("measure needs at least one frame")
    return time_stages(target.runner(frames, batch), warmup, iterations, batch)
