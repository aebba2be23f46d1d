"""The streaming pipeline: capture thread -> bounded queue -> engines -> render/encode thread.

Decode, inference and overlay/encode run concurrently, so the stream's frame
rate approaches the engine's own throughput. Two queue policies:

- ``all`` (files, folders): every frame, in order; capture waits when the
  queue is full;
- ``latest`` (live cameras): a full queue drops its oldest frame, so what is
  shown is at most ``queue_size`` frames old however slow a sink is; dropped
  frames are counted.

``auto`` picks ``latest`` for live sources and ``all`` otherwise. A stop event
(SIGINT/SIGTERM in `edgeseg run`, q/Esc in a window, ``max_frames``) ends the
capture; frames already queued are finished and every sink is closed, so the
video is playable. Errors from the capture or output thread end the stream
the same way and are raised after the sinks are closed.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from edgeseg.errors import EdgesegError
from edgeseg.runtime.overlay import OverlayRenderer
from edgeseg.runtime.sinks import Sink
from edgeseg.runtime.sources import Source, SourceLostError
from edgeseg.runtime.stages import Packet, StageChain
from edgeseg.runtime.timing import RateMeter, StageTimes

Policy = Literal["auto", "all", "latest"]
_END = object()  # end-of-stream marker passed through the queues


@dataclass
class StreamCounts:
    captured: int = 0
    processed: int = 0
    dropped: int = 0  # discarded by the `latest` policy
    corrupt: int = 0  # undecodable frames the source skipped
    reconnects: int = 0


@dataclass
class RunSummary:
    """What a run did and how fast; `to_dict` is the JSON `edgeseg run --summary` writes."""

    info: dict[str, Any]
    policy: str
    counts: StreamCounts
    wall_s: float
    fps: float
    stages: dict[str, Any]
    end_reason: str
    miou: float | None = None
    per_class_iou: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    raw_infer_fps: float | None = None
    #: the translator's gate: below, translated, passed, source ("flag" or "metadata")
    gate: dict[str, Any] | None = None

    @property
    def interrupted(self) -> bool:
        return self.end_reason == "interrupted"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self.info, "policy": self.policy, "end_reason": self.end_reason,
            "frames": vars(self.counts).copy(), "wall_s": round(self.wall_s, 3),
            "fps": round(self.fps, 2),
            "stages_ms": {k: v.to_dict() for k, v in self.stages.items()},
            "outputs": self.outputs,
        }
        if self.gate is not None:
            out["translate_gate"] = dict(self.gate)
        if self.raw_infer_fps is not None:
            out["raw_infer_fps"] = round(self.raw_infer_fps, 2)
            out["fps_over_raw"] = round(self.fps / self.raw_infer_fps, 3) \
                if self.raw_infer_fps else None
        if self.miou is not None:
            out["miou"] = round(self.miou * 100, 2)
            out["per_class_iou"] = {k: (None if np.isnan(v) else round(v * 100, 2))
                                    for k, v in self.per_class_iou.items()}
        return out

    def format(self) -> str:
        c = self.counts
        lines = [f"{c.processed} frames in {self.wall_s:.1f} s: {self.fps:.1f} fps end to end "
                 f"({self.end_reason}; captured {c.captured}, dropped {c.dropped}, corrupt "
                 f"{c.corrupt}, reconnects {c.reconnects})"]
        if self.raw_infer_fps:
            lines.append(f"raw engine throughput {self.raw_infer_fps:.1f} fps; the stream ran at "
                         f"{100 * self.fps / self.raw_infer_fps:.0f}% of it")
        if self.gate is not None:
            g = self.gate
            recorded = ", the gate recorded in the translator" if g.get("source") == \
                "metadata" else ""
            lines.append(f"translated {g['translated']:.0f} frames (mean luma below "
                         f"{g['below']:g}{recorded}), passed {g['passed']:.0f} through")
        lines.append(f"{'stage':<12} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8}  (ms)")
        for name, s in self.stages.items():
            lines.append(f"{name:<12} {s.p50:8.2f} {s.p90:8.2f} {s.p99:8.2f} {s.mean:8.2f}")
        if self.miou is not None:
            lines.append(f"online mIoU vs ground truth: {self.miou * 100:.2f}")
        return "\n".join(lines)


class StreamPipeline:
    """One source, a chain of engine stages, a renderer and sinks."""

    def __init__(self, source: Source, chain: StageChain, sinks: list[Sink],
                 renderer: OverlayRenderer | None = None, *, policy: Policy = "auto",
                 queue_size: int = 4, max_frames: int = 0, scorer: Any = None,
                 info: dict[str, Any] | None = None, progress: bool = False,
                 stall_s: float = 10.0) -> None:
        if not sinks:
            raise EdgesegError("a stream needs at least one sink (use null to discard)")
        self.source, self.chain, self.sinks, self.renderer = source, chain, sinks, renderer
        self.policy = ("latest" if source.live else "all") if policy == "auto" else policy
        if self.policy not in ("all", "latest"):
            raise EdgesegError(f"policy {policy!r}: use auto, all or latest")
        if any(s.wants_render for s in sinks) and renderer is None:
            raise EdgesegError("sinks that show or store overlays need a renderer")
        self.queue_size = max(1, queue_size)
        self.max_frames = max_frames
        self.scorer = scorer
        self.info = info or {}
        self.times = StageTimes()
        self.rate = RateMeter()
        self.counts = StreamCounts()
        self.q_in: queue.Queue = queue.Queue(self.queue_size)
        self.q_out: queue.Queue = queue.Queue(self.queue_size)
        self.stop = threading.Event()  # end the capture; queued frames are still finished
        self.abort = threading.Event()  # something failed: finish nothing more
        self.errors: list[BaseException] = []
        self.end_reason = "end of source"
        self.progress = progress
        self.bar: tqdm | None = None
        self.last_frame: np.ndarray | None = None  # for the raw-throughput baseline
        # a live source whose driver blocks in read() for this long ends the run (0: never)
        self.stall_s = stall_s if source.live else 0.0
        self.last_read = time.monotonic()

    # --- capture thread ------------------------------------------------------------------
    def _capture(self) -> None:
        try:
            while not self.stop.is_set() and not self.abort.is_set():
                if self.max_frames and self.counts.captured >= self.max_frames:
                    self.end_reason = "max frames"
                    break
                t0 = time.perf_counter()
                frame = self.source.read()
                self.last_read = time.monotonic()
                if frame is None:
                    break
                self.counts.captured += 1
                packet = Packet(frame, frame.image,
                                timings={"capture": (time.perf_counter() - t0) * 1e3})
                self._put_in(packet)
        except BaseException as exc:  # noqa: BLE001 - re-raised by run() after the drain
            self.errors.append(exc)
        finally:
            self.counts.corrupt = self.source.corrupt
            self.counts.reconnects = self.source.reconnects
            self._put_in(_END)

    def _put_in(self, item: object) -> None:
        """`latest`: never wait, drop the oldest queued frame; `all`: wait for room."""
        if self.policy == "latest":  # one producer (this thread): no lock needed
            while True:
                try:
                    self.q_in.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self.q_in.get_nowait()
                        self.counts.dropped += 1
                    except queue.Empty:
                        pass
        self._put_waiting(self.q_in, item)

    def _put_waiting(self, q: queue.Queue, item: object) -> None:
        """Put, waiting for room, unless the run is aborted (then the item is dropped)."""
        while not self.abort.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # --- output thread -------------------------------------------------------------------
    def _output(self) -> None:
        try:
            while not self.abort.is_set():
                try:
                    packet = self.q_out.get(timeout=0.1)
                except queue.Empty:
                    continue
                if packet is _END:
                    return
                self._emit(packet)
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)
            self.abort.set()

    def _emit(self, packet: Packet) -> None:
        src = packet.source
        if self.scorer is not None and src.labels is not None:
            self.scorer.update(packet.labels, src.labels, src.name)
        rendered = None
        if any(s.wants_render for s in self.sinks):
            t0 = time.perf_counter()
            rendered = self.renderer.render(src.image, packet.labels, self.hud_lines(packet))
            packet.timings["render"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        for sink in self.sinks:
            sink.write(src.index, rendered, packet.labels)
        now = time.perf_counter()
        packet.timings["encode"] = (now - t0) * 1e3
        packet.timings["end_to_end"] = (now - src.t_capture) * 1e3
        self.times.add_all(packet.timings)
        self.rate.tick(now)
        self.counts.processed += 1
        self.t_last = now
        self.last_frame = src.image
        if self.bar is not None:
            self.bar.update(1)
            if self.counts.processed % 10 == 0:
                self.bar.set_postfix(fps=f"{self.rate.fps:.1f}", dropped=self.counts.dropped,
                                     refresh=False)
        if any(s.stop_requested for s in self.sinks):
            self.end_reason = "stopped by user"
            self.stop.set()

    def hud_lines(self, packet: Packet | None = None) -> list[str]:
        """The overlay's text. With a gated translator (``--translate-below``) it says whether
        ``packet`` went through it, and counts the translator's time only when it did."""
        t = self.times.recent_mean
        gated = packet is not None and "gate" in packet.timings
        translated = not gated or "translate" in packet.timings
        infer = t("infer") + (t("translate") if translated else 0.0)
        lines = [f"{self.rate.fps:5.1f} fps  e2e {t('end_to_end'):5.1f} ms  "
                 f"{self.info.get('precision', '')} {self.info.get('backend', '')}".rstrip(),
                 f"pre {t('preprocess'):.1f}  infer {infer:.1f}  post {t('postprocess'):.1f}  "
                 f"render {t('render'):.1f}  enc {t('encode'):.1f} ms"]
        if t("h2d") or t("d2h"):
            lines[-1] += f"  h2d {t('h2d'):.2f} d2h {t('d2h'):.2f}"
        tail = f"dropped {self.counts.dropped}  corrupt {self.source.corrupt}"
        if gated:
            tail += "  translator " + ("on" if translated else "off")
        if self.scorer is not None and self.counts.processed:
            tail += f"  mIoU {self.scorer.metrics().miou * 100:.1f}"
        return [*lines, tail]

    # --- the run -------------------------------------------------------------------------
    def _put_out(self, packet: object) -> None:
        self._put_waiting(self.q_out, packet)

    def run(self) -> RunSummary:
        """Stream until the source ends or ``stop`` is set; sinks are always closed."""
        try:
            for sink in self.sinks:
                sink.check()
        except BaseException:
            self._close_sinks()  # a video sink checked before the failing one removes its file
            self.source.close()  # nothing was read; release the camera for the next attempt
            raise
        self.t_start = self.t_last = time.perf_counter()
        total = self.source.frame_count
        if self.max_frames:
            total = min(total or self.max_frames, self.max_frames)
        self.bar = tqdm(total=total, desc="stream", unit="frame", dynamic_ncols=True,
                        disable=not self.progress, leave=False)
        capture = threading.Thread(target=self._capture, name="edgeseg-capture", daemon=True)
        output = threading.Thread(target=self._output, name="edgeseg-output", daemon=True)
        first_capture: float | None = None
        try:
            capture.start()
            output.start()
            while not self.abort.is_set():
                if self.chain.in_flight and self.q_in.empty():
                    self._put_out(self.chain.collect())  # nothing new yet: finish what runs
                    continue
                try:
                    item = self.q_in.get(timeout=0.1)
                except queue.Empty:
                    if self._stalled():
                        break
                    continue
                if item is _END:
                    break
                if first_capture is None:
                    first_capture = item.source.t_capture
                self.chain.submit(item)
                if self.chain.in_flight >= self.chain.depth:
                    self._put_out(self.chain.collect())
            while self.chain.in_flight and not self.abort.is_set():
                self._put_out(self.chain.collect())
            self._put_out(_END)
        except BaseException as exc:
            self.errors.append(exc)
            if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C: stop now
                self.end_reason = "interrupted"
            self.abort.set()
        finally:
            self.stop.set()
            output.join()
            capture.join(timeout=5.0)
            self.bar.close()
            close_errors = self._close_sinks()
            self._close_source(capture)
        if self.errors or close_errors:
            raise (self.errors or close_errors)[0]
        start = first_capture if first_capture is not None else self.t_start
        wall = max(self.t_last - start, 1e-9)
        summary = RunSummary(self.info, self.policy, self.counts, wall,
                             self.counts.processed / wall if self.counts.processed else 0.0,
                             self.times.summary(), self.end_reason,
                             outputs=[o for s in self.sinks for o in s.outputs()])
        if self.scorer is not None and self.counts.processed and self.scorer.confusion.num_pixels:
            metrics = self.scorer.metrics()
            summary.miou, summary.per_class_iou = metrics.miou, dict(metrics.per_class)
        return summary

    def _stalled(self) -> bool:
        """True (and the run ends with SourceLostError) when a live source has neither
        delivered a frame nor made reconnect progress for ``stall_s``: a camera whose
        driver hangs in read() would otherwise freeze the stream and its recording forever."""
        if not self.stall_s:
            return False
        quiet = time.monotonic() - max(self.last_read, self.source.progress_at)
        if quiet < self.stall_s:
            return False
        self.end_reason = "source stalled"
        self.errors.append(SourceLostError(
            f"{self.source.spec}: no frame for {quiet:.0f} s (the camera or its driver stopped "
            "responding); the recording so far was kept; check the camera, its cable and "
            "driver, or raise --stall-timeout"))
        return True

    def _close_source(self, capture: threading.Thread) -> None:
        """Release the source once its capture thread is out of the driver.

        A capture still blocked in a hung driver's read() is left behind (daemon):
        releasing the device under it would crash the process, and waiting would
        hang the exit; it is released if the driver ever returns.
        """
        if not capture.is_alive():
            self.source.close()
            return

        def close_when_free() -> None:
            capture.join()
            self.source.close()

        threading.Thread(target=close_when_free, name="edgeseg-close", daemon=True).start()

    def _close_sinks(self) -> list[BaseException]:
        errors = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - close the others first
                errors.append(exc)
        return errors

    def request_stop(self, reason: str = "interrupted") -> None:
        """Called from a signal handler: end the capture, finish queued frames, close sinks."""
        self.end_reason = reason
        self.stop.set()
