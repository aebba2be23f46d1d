"""Visual reports: label overlays, overlay grids and per-class IoU bar charts.

Overlays use only numpy/cv2 so they also run on a vehicle. matplotlib is imported
inside the plotting functions (and drives an Agg canvas directly, without pyplot's
global state), so ``import edgeseg.viz`` works where matplotlib is not installed.
Every file is written atomically through ``edgeseg.fileio``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edgeseg.fileio import atomic_path, write_image
from edgeseg.labels import LabelSpace, colorize, palette_lut

if TYPE_CHECKING:
    from edgeseg.metrics import SegMetrics

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BG = (255, 255, 255)
_FG = (0, 0, 0)


def _to_rgb_u8(image: np.ndarray) -> np.ndarray:
    """Accept (H, W) grey or (H, W, 3) RGB; return a uint8 (H, W, 3) array."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {img.shape}")


def blend_labels(image: np.ndarray, labels: np.ndarray, lut: np.ndarray, num_classes: int,
                 alpha: float = 0.5) -> np.ndarray:
    """Class colours over ``image`` (channel order of ``lut``); ignore/unknown ids keep the image.

    The one blend behind eval/bench overlay grids and the vehicle's video, so a
    report shows what the driver saw. Leaving ignored pixels untouched makes
    unlabelled regions visible as such instead of painting them black.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    blend = cv2.addWeighted(image, 1.0 - alpha, colorize(labels, lut), alpha, 0.0)
    outside = labels >= num_classes
    if outside.any():
        blend[outside] = image[outside]
    return blend


def overlay(
    image_rgb: np.ndarray, labels: np.ndarray, space: LabelSpace, alpha: float = 0.5
) -> np.ndarray:
    """`blend_labels` for an RGB image (or grey) and a label space."""
    img = _to_rgb_u8(image_rgb)
    labels = np.asarray(labels)
    if labels.shape != img.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} != image size {img.shape[:2]}")
    ids = np.where((labels >= 0) & (labels < 256), labels, 255).astype(np.uint8)
    return blend_labels(img, ids, palette_lut(space.palette), space.num_classes, alpha)


def side_by_side(*images: np.ndarray, gap: int = 0, fill: int = 255) -> np.ndarray:
    """Concatenate images horizontally; shorter ones are padded at the bottom."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    rgb = [_to_rgb_u8(im) for im in images]
    h = max(im.shape[0] for im in rgb)
    parts: list[np.ndarray] = []
    for i, im in enumerate(rgb):
        if i and gap:
            parts.append(np.full((h, gap, 3), fill, np.uint8))
        pad = h - im.shape[0]
        if pad:
            im = np.concatenate([im, np.full((pad, im.shape[1], 3), fill, np.uint8)])
        parts.append(im)
    return np.concatenate(parts, axis=1)


def text_bar(text: str, width: int, height: int = 24, scale: float = 0.5) -> np.ndarray:
    """A title strip ``width`` pixels wide to stack above a panel (one look for every grid)."""
    bar = np.full((height, width, 3), _BG, np.uint8)
    (_, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
    cv2.putText(bar, text, (4, (height + th) // 2), _FONT, scale, _FG, 1, cv2.LINE_AA)
    return bar


#: legend text height per pixel of row height (report strips and the video legend)
LEGEND_TEXT_SCALE = 1 / 40


def draw_legend_entry(canvas: np.ndarray, x: int, y: int, row: int, name: str,
                      colour: Sequence[int], text: tuple[int, int, int]) -> None:
    """One swatch and class name in a ``row``-pixel line at (x, y), in place: the one entry
    drawing behind report legends and the vehicle video's legend, so both read alike.
    ``colour`` is in the canvas's channel order."""
    sw = row - 4
    cv2.rectangle(canvas, (x, y + 2), (x + sw, y + 2 + sw), tuple(int(c) for c in colour), -1)
    cv2.rectangle(canvas, (x, y + 2), (x + sw, y + 2 + sw), text, 1)
    cv2.putText(canvas, name, (x + sw + 4, y + int(row * 0.75)), _FONT, row * LEGEND_TEXT_SCALE, text, 1,
                cv2.LINE_AA)


def legend_strip(
    space: LabelSpace, width: int, cell_width: int = 150, row_height: int = 20
) -> np.ndarray:
    """RGB strip of colour swatches and class names, wrapped into rows to fit ``width``."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    cols = max(1, width // cell_width)
    rows = math.ceil(space.num_classes / cols)
    strip = np.full((rows * row_height, width, 3), _BG, np.uint8)
    for i, (name, colour) in enumerate(zip(space.names, space.palette)):
        draw_legend_entry(strip, (i % cols) * cell_width + 3, (i // cols) * row_height, row_height,
                          name, colour, _FG)
    return strip


def _resize(img: np.ndarray, width: int, nearest: bool) -> np.ndarray:
    h, w = img.shape[:2]
    if w == width:
        return img
    height = max(1, round(h * width / w))
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(img, (width, height), interpolation=interp)


def save_overlay_grid(
    path: str | Path,
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
    space: LabelSpace,
    alpha: float = 0.5,
    panel_width: int | None = 512,
) -> Path:
    """Write a PNG grid: one titled row per sample, image | prediction | ground truth.

    Each row is ``(title, image_rgb, pred, gt_or_None)``; `save_comparison_grid` with one
    prediction column."""
    return save_comparison_grid(path, [(t, im, [p], gt) for t, im, p, gt in rows],
                                ["prediction"], space, alpha, panel_width)


def save_comparison_grid(
    path: str | Path,
    rows: Sequence[tuple[str, np.ndarray, Sequence[np.ndarray], np.ndarray | None]],
    columns: Sequence[str],
    space: LabelSpace,
    alpha: float = 0.5,
    panel_width: int | None = 512,
) -> Path:
    """Write a PNG grid: one titled row per frame, image | each model's prediction (headed
    ``columns``) | ground truth, e.g. every method on the same dusk frames.

    Each row is ``(title, image_rgb, preds, gt_or_None)`` with one prediction per column.
    Panels are scaled to ``panel_width`` (labels with nearest-neighbour, so no fake classes
    appear; None keeps the first image's width) so full-resolution frames give a reviewable
    file. A legend strip is appended at the bottom.
    """
    if not rows:
        raise ValueError("save_comparison_grid needs at least one row")
    pw = panel_width or int(np.asarray(rows[0][1]).shape[1])
    gap = 4
    blocks: list[np.ndarray] = [
        side_by_side(*(text_bar(name, pw) for name in ("image", *columns, "ground truth")),
                     gap=gap)
    ]
    for title, image, preds, gt in rows:
        img = _to_rgb_u8(image)
        if len(preds) != len(columns):
            raise ValueError(f"row {title!r}: {len(preds)} predictions for {len(columns)} "
                             "columns")
        if any(np.shape(p) != img.shape[:2] for p in preds) or (
                gt is not None and np.shape(gt) != img.shape[:2]):
            raise ValueError(f"row {title!r}: label maps must match the image size")
        img_s = _resize(img, pw, nearest=False)
        panels = [overlay(img_s, _resize(np.asarray(p, np.uint8), pw, nearest=True), space,
                          alpha) for p in preds]
        if gt is None:
            gt_panel = np.full_like(img_s, 200)
            cv2.putText(gt_panel, "no ground truth", (8, 24), _FONT, 0.6, _FG, 1, cv2.LINE_AA)
        else:
            gt_panel = overlay(img_s, _resize(np.asarray(gt, np.uint8), pw, True), space, alpha)
        row_img = side_by_side(img_s, *panels, gt_panel, gap=gap)
        blocks += [text_bar(str(title), row_img.shape[1]), row_img]
    width = blocks[0].shape[1]
    blocks.append(legend_strip(space, width))
    grid = np.concatenate(blocks, axis=0)
    write_image(path, grid, rgb=True)
    return Path(path)


# --- charts -----------------------------------------------------------------------


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a figure atomically, in the format its suffix names (PNG by default)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return Path(path)


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}"


def plot_iou_bars(path: str | Path, results: dict[str, SegMetrics], title: str = "") -> Path:
    """Grouped per-class IoU bars for several results (e.g. day vs night).

    The legend carries each result's mIoU so the chart stands alone in a report.
    Classes absent from a result (nan IoU) are left without a bar rather than
    drawn as 0, which would read as a total failure.
    """
    if not results:
        raise ValueError("plot_iou_bars needs at least one result")
    names: list[str] = []
    for r in results.values():
        names += [n for n in r.per_class if n not in names]
    x = np.arange(len(names))
    k = len(results)
    bar_w = 0.8 / k
    fig = new_figure(max(6.0, 0.45 * len(names) * max(1, k / 2) + 2), 4.5)
    ax = fig.add_subplot()
    for i, (label, r) in enumerate(results.items()):
        vals = np.array([100 * r.per_class.get(n, math.nan) for n in names])
        ax.bar(
            x - 0.4 + bar_w * (i + 0.5),
            vals,
            bar_w,
            label=f"{label} (mIoU {_pct(r.miou)})",
        )
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_iou_delta_bars(
    path: str | Path,
    base: SegMetrics,
    other: SegMetrics,
    title: str = "",
    base_name: str = "fp32",
    other_name: str = "int8",
) -> Path:
    """Per-class IoU change ``other - base`` in points (e.g. int8 vs fp32).

    Shows which classes a quantised engine loses, which the mIoU delta alone hides;
    classes without an IoU on either side are skipped.
    """
    names = [
        n
        for n in base.per_class
        if n in other.per_class
        and not (math.isnan(base.per_class[n]) or math.isnan(other.per_class[n]))
    ]
    deltas = np.array([100 * (other.per_class[n] - base.per_class[n]) for n in names])
    fig = new_figure(max(6.0, 0.4 * len(names) + 2), 4.0)
    ax = fig.add_subplot()
    colours = ["tab:green" if d >= 0 else "tab:red" for d in deltas]
    bars = ax.bar(np.arange(len(names)), deltas, 0.7, color=colours)
    ax.bar_label(bars, fmt="%+.2f", fontsize="x-small", padding=1)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel(f"IoU {other_name} - {base_name} (points)")
    ax.grid(axis="y", alpha=0.3)
    if math.isnan(base.miou) or math.isnan(other.miou):
        dm = "n/a"
    else:
        dm = f"{100 * (other.miou - base.miou):+.2f}"
    summary = f"mIoU {base_name} {_pct(base.miou)} -> {other_name} {_pct(other.miou)} ({dm})"
    ax.set_title(f"{title}\n{summary}" if title else summary)
    return save_figure(fig, path)
