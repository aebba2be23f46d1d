"""The benchmark report: console tables, bench.json, bench.md and PNG plots.

Every file goes through ``edgeseg.fileio`` / ``edgeseg.viz`` (temp name, then
rename), so an interrupted run never leaves a half-written report beside a
complete one. The JSON holds everything (raw per-run times included) so plots
and tables can be redrawn later; the Markdown carries the command line and the
machine, so a number can be reproduced.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.bench.machine import describe_machine
from edgeseg.bench.parity import ParityResult
from edgeseg.fileio import write_image, write_json, write_text
from edgeseg.labels import get_label_space
from edgeseg.metrics import compare_summaries
from edgeseg.runtime.latency import END_TO_END, LatencyResult
from edgeseg.viz import (  # the shared Agg-canvas helpers, so every chart looks the same
    legend_strip,
    new_figure,
    overlay,
    plot_iou_delta_bars,
    save_figure,
    side_by_side,
    text_bar,
)

#: stage columns of the latency table, in path order
STAGE_COLUMNS = ("preprocess", "translate", "h2d", "infer", "d2h", "postprocess")
#: disagreement with the reference, painted over a variant's overlay in the montage
DISAGREE_RGB = (255, 0, 255)


@dataclass
class LatencyRow:
    target: str
    precision: str
    kind: str
    size: str  # WxH the frames had
    result: LatencyResult


@dataclass
class BenchResult:
    """Everything one `edgeseg bench` run measured."""

    command: str
    created: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    targets: list[dict[str, Any]] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    parity: list[ParityResult] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"target", "what", "reason"}
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command, "created": self.created, "machine": self.machine,
            "settings": self.settings, "targets": self.targets,
            "latency": [{"target": r.target, "precision": r.precision, "kind": r.kind,
                         "frame_size": r.size, **r.result.to_dict()} for r in self.latency],
            "parity": [p.to_dict() for p in self.parity],
            "parity_passed": self.passed if self.parity else None,
            "skipped": self.skipped, "notes": self.notes,
        }


# ------------------------------------------------------------------------ tables


def _f(value: float | None, digits: int = 2, scale: float = 1.0, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{scale * value:+.{digits}f}" if signed else f"{scale * value:.{digits}f}"


def latency_rows(rows: list[LatencyRow]) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the latency table: end-to-end statistics, then stage means."""
    stages = [s for s in STAGE_COLUMNS if any(s in r.result.stats for r in rows)]
    header = ["engine", "precision", "backend", "batch", "frame", "mean ms", "p50", "p90",
              "p99", "max", "fps", *[f"{s} ms" for s in stages]]
    cells = []
    for r in rows:
        t = r.result.total
        stage_cells = [_f(r.result.stats[s].mean_ms) if s in r.result.stats else "-"
                       for s in stages]
        cells.append([r.target, r.precision, r.kind, str(r.result.batch), r.size,
                      _f(t.mean_ms), _f(t.p50_ms), _f(t.p90_ms), _f(t.p99_ms), _f(t.max_ms),
                      _f(t.fps, 1), *stage_cells])
    return header, cells


def parity_rows(p: ParityResult) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of one data set's parity table, the reference first."""
    header = ["engine", "precision", "mIoU %", "drop (points)", "budget", "pixel agree %",
              f"boundary agree % ({p.band} px)", "verdict"]
    ref_miou = p.reference_metrics.miou if p.reference_metrics else None
    cells = [[p.reference, p.reference_precision, _f(ref_miou, scale=100), "reference", "",
              "100.000", "100.000", ""]]
    for v in p.variants:
        cells.append([v.name, v.precision, _f(v.metrics.miou if v.metrics else None, scale=100),
                      _f(v.miou_drop, 3, signed=True),
                      "" if v.max_drop is None else f"<= {v.max_drop:g}",
                      _f(v.pixel_agreement, 3, 100), _f(v.boundary_agreement, 3, 100),
                      v.verdict])
    return header, cells


def text_table(header: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def _wxh(size: list[int] | None) -> str:
    return f"{size[1]}x{size[0]}" if size else "the frame size"


def data_tag(spec: str) -> str:
    """A file-name-safe short name of a data spec: ``camvid:/x/camvid:day_val`` -> camvid-day_val."""
    parts = spec.split(":")
    words = [parts[0], parts[-1]] if len(parts) >= 3 else [Path(spec).stem or spec]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(w for w in words if w)).strip("_") or "data"


def _file_tag(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ------------------------------------------------------------------------- plots


def plot_latency_histograms(path: str | Path, rows: list[LatencyRow]) -> Path:
    """One histogram of end-to-end run times per engine and batch, p50 and p99 marked."""
    n = len(rows)
    cols = 2 if n > 1 else 1
    nrows = math.ceil(n / cols)
    fig = new_figure(6.0 * cols, 2.6 * nrows + 0.4)
    for i, r in enumerate(rows):
        ax = fig.add_subplot(nrows, cols, i + 1)
        t = r.result.total
        ax.hist(r.result.times_ms, bins=min(40, max(5, len(r.result.times_ms) // 3)),
                color="tab:blue", alpha=0.8)
        ax.axvline(t.p50_ms, color="black", linewidth=1, label=f"p50 {t.p50_ms:.1f}")
        ax.axvline(t.p99_ms, color="tab:red", linewidth=1, linestyle="--",
                   label=f"p99 {t.p99_ms:.1f}")
        ax.set_title(f"{r.target} ({r.kind}, batch {r.result.batch}, {r.size})",
                     fontsize="small")
        ax.set_xlabel("end-to-end ms per run")
        ax.legend(fontsize="x-small")
    return save_figure(fig, path)


def plot_fps(path: str | Path, rows: list[LatencyRow]) -> Path:
    """Frames per second of every engine, grouped by precision, one bar per batch size."""
    order = {"fp32": 0, "fp16": 1, "int8": 2}
    engines = sorted({(order.get(r.precision, 9), r.precision, r.target, r.kind) for r in rows})
    batches = sorted({r.result.batch for r in rows})
    fps = {(r.target, r.result.batch): r.result.total.fps for r in rows}
    x = np.arange(len(engines))
    width = 0.8 / len(batches)
    fig = new_figure(max(6.0, 0.9 * len(engines) + 2), 4.5)
    ax = fig.add_subplot()
    for k, b in enumerate(batches):
        vals = [fps.get((e[2], b), np.nan) for e in engines]
        bars = ax.bar(x - 0.4 + width * (k + 0.5), vals, width, label=f"batch {b}")
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=1)
    ax.set_xticks(x, [f"{e[1]}\n{e[2]}\n({e[3]})" for e in engines], fontsize="x-small")
    ax.set_ylabel("frames per second (end to end)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("fps vs precision")
    return save_figure(fig, path)


def save_parity_montage(path: str | Path, p: ParityResult, panel_width: int = 320) -> Path:
    """Rows of frames: image | ground truth | reference | each variant, where a variant's
    pixels that differ from the reference are painted magenta (fp32 vs int8 at a glance)."""
    space = get_label_space(p.label_space)
    names = [p.reference, *(v.name for v in p.variants)]
    titles = ["image", "ground truth", f"{p.reference} (reference)"]
    titles += [f"{v.name} ({100 * v.pixel_agreement:.2f} % agree)" for v in p.variants]
    gap = 4
    blocks = [side_by_side(*(text_bar(t, panel_width, scale=0.4) for t in titles), gap=gap)]
    for s in p.samples:
        h, w = s.image.shape[:2]
        ph = max(1, round(h * panel_width / w))

        def fit(a: np.ndarray, nearest: bool, pw: int = panel_width, hh: int = ph) -> np.ndarray:
            return cv2.resize(a, (pw, hh), interpolation=cv2.INTER_NEAREST if nearest
                              else cv2.INTER_AREA)

        img = fit(s.image, False)
        if s.label is None:
            gt = np.full_like(img, 200)
        else:
            gt = overlay(img, fit(np.asarray(s.label, np.uint8), True), space)
        ref = fit(s.predictions[p.reference], True)
        panels = [img, gt, overlay(img, ref, space)]
        for name in names[1:]:
            pred = fit(s.predictions[name], True)
            panel = overlay(img, pred, space)
            panel[pred != ref] = DISAGREE_RGB
            panels.append(panel)
        row = side_by_side(*panels, gap=gap)
        blocks += [text_bar(s.name, row.shape[1]), row]
    width = blocks[0].shape[1]
    blocks.append(text_bar("magenta: pixels where the variant disagrees with the reference",
                            width))
    blocks.append(legend_strip(space, width))
    write_image(path, np.concatenate(blocks, axis=0), rgb=True)
    return Path(path)


# ------------------------------------------------------------------------ report


def format_console(result: BenchResult) -> str:
    """The tables `edgeseg bench` prints."""
    out = []
    if result.latency:
        out += ["latency (end to end, ms per run; stage columns are means):",
                text_table(*latency_rows(result.latency)), ""]
    for p in result.parity:
        out += [f"parity on {p.data} ({p.frames} frames, reference {p.reference}):",
                text_table(*parity_rows(p)), ""]
    for s in result.skipped:
        out.append(f"skipped {s['target']} ({s['what']}): {s['reason']}")
    out += result.notes
    return "\n".join(out).rstrip()


def _markdown(result: BenchResult, files: dict[str, Any]) -> str:
    s = result.settings
    lines = ["# edgeseg bench", "", "Command:", "", f"    {result.command}", "",
             f"Measured {result.created}."]
    if result.latency:
        lines[-1] += (f" Latency: {s['warmup']} warm-up runs, then {s['iterations']} timed "
                      f"runs per engine and batch, frames cycled from {s['frames_from']}.")
    lines += ["", "## Machine", ""]
    lines += [f"- {line}" for line in describe_machine(result.machine)]
    if result.latency:
        lines += ["", "## Latency", "",
                  "End to end = frame (uint8 RGB at the frame size) to class map at the frame "
                  "size, wall clock; stage columns are means in ms.", "",
                  markdown_table(*latency_rows(result.latency)), ""]
        lines += [f"- {t['name']}: runs at {_wxh(t['size'])}; {t['runs_on']}; {t['stages']}"
                  for t in result.targets]
        lines += ["", f"![latency histograms]({files['latency_hist']})", "",
                  f"![fps vs precision]({files['fps']})"]
    for p, pf in zip(result.parity, files["parity"]):
        budget = ", ".join(f"{k} {v:g}" for k, v in s["max_drop"].items())
        lines += ["", f"## Parity on `{p.data}`", "",
                  f"{p.frames} frames{'' if p.labelled else ' (no labels: agreement only)'}; "
                  f"reference {p.reference} ({p.reference_precision}); budget (mIoU points "
                  f"lost): {budget}. **{'PASS' if p.passed else 'FAIL'}**", "",
                  markdown_table(*parity_rows(p))]
        if p.reference_metrics is not None:
            for v in p.variants:
                if v.metrics is not None:
                    lines += ["", f"Per-class IoU, {v.name} vs {p.reference}:", "", "```",
                              compare_summaries(p.reference_metrics, v.metrics, "reference",
                                                v.precision), "```"]
        for v_name, png in pf["deltas"].items():
            lines += ["", f"![per-class IoU delta {v_name}]({png})"]
        if pf.get("montage"):
            lines += ["", f"![overlays: reference vs variants]({pf['montage']})"]
    if result.skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- {x['target']} ({x['what']}): {x['reason']}" for x in result.skipped]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, result: BenchResult) -> dict[str, Any]:
    """Write bench.json, bench.md and the plots into ``out_dir``; returns the file names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"json": "bench.json", "markdown": "bench.md", "parity": []}
    if result.latency:
        files["latency_hist"] = "latency-hist.png"
        files["fps"] = "fps.png"
        plot_latency_histograms(out / files["latency_hist"], result.latency)
        plot_fps(out / files["fps"], result.latency)
    for p in result.parity:
        tag = data_tag(p.data)
        pf: dict[str, Any] = {"deltas": {}}
        if p.reference_metrics is not None:
            for v in p.variants:
                if v.metrics is None:
                    continue
                png = f"iou-delta-{tag}-{_file_tag(v.name)}.png"
                plot_iou_delta_bars(out / png, p.reference_metrics, v.metrics,
                                    title=f"{v.name} vs {p.reference} on {tag}",
                                    base_name=p.reference_precision, other_name=v.precision)
                pf["deltas"][v.name] = png
        if p.samples and p.variants:
            pf["montage"] = f"overlays-{tag}.png"
            save_parity_montage(out / pf["montage"], p)
        files["parity"].append(pf)
    data = result.to_dict()
    data["files"] = files
    write_json(out / files["json"], _json_safe(data))
    write_text(out / files["markdown"], _markdown(result, files))
    return files


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


__all__ = ["END_TO_END", "BenchResult", "LatencyRow", "format_console", "write_report"]
