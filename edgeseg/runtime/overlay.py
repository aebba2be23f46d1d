"""Drawing the result on the frame: palette lookup, alpha blend, HUD and legend.

Everything is an OpenCV call on uint8 images (a lookup table for the colours,
``addWeighted`` for the blend, a pre-rendered legend pasted per frame), so
rendering costs a millisecond or two at 480x360 and no per-pixel Python work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.labels import palette_lut
from edgeseg.viz import LEGEND_TEXT_SCALE, blend_labels, draw_legend_entry

FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class OverlayStyle:
    alpha: float = 0.5  # weight of the class colours
    side_by_side: bool = False  # camera frame | overlay
    hud: bool = True
    legend: bool = True


#: legend rows below this many pixels are unreadable: no legend rather than a smudge
MIN_LEGEND_ROW = 10
#: the HUD text never goes below this scale (about 7 px tall) ...
MIN_HUD_SCALE = 0.3
#: ... and covers at most this fraction of the frame: lines are dropped from the end instead
MAX_HUD_COVER = 0.15


def render_legend(names: Sequence[str], palette: Sequence[Sequence[int]], height: int,
                  width: int | None = None) -> np.ndarray | None:
    """A column of colour swatches and class names fitting ``height`` and a quarter of
    ``width`` (None when it would be too small to read)."""
    n = max(len(names), 1)
    max_width = width // 4 if width else None
    for row in range(min(22, int(height * 0.9) // n), MIN_LEGEND_ROW - 1, -1):
        scale = row * LEGEND_TEXT_SCALE
        legend_width = max(cv2.getTextSize(name, FONT, scale, 1)[0][0] for name in names) + row + 8
        if max_width is None or legend_width <= max_width:
            break
    else:
        return None
    legend = np.zeros((row * len(names), legend_width, 3), np.uint8)
    for i, (name, rgb) in enumerate(zip(names, palette)):
        draw_legend_entry(legend, 2, i * row, row, name, rgb[::-1], (255, 255, 255))
    return legend


class OverlayRenderer:
    """labels + frame -> the picture a driver or engineer looks at."""

    def __init__(self, names: Sequence[str], palette: Sequence[Sequence[int]],
                 style: OverlayStyle = OverlayStyle()) -> None:
        self.names, self.palette, self.style = list(names), list(palette), style
        self.lut = palette_lut(palette, bgr=True)
        self._legends: dict[tuple[int, int], np.ndarray | None] = {}
        self._masks: dict[tuple[int, int], np.ndarray] = {}

    def legend(self, height: int, width: int | None = None) -> np.ndarray | None:
        key = (height, width or 0)
        if key not in self._legends:
            legend = render_legend(self.names, self.palette, height, width)
            self._legends[key] = legend
            if legend is not None:
                self._masks[key] = legend_mask(legend)
        return self._legends[key]

    def render(self, frame: np.ndarray, labels: np.ndarray,
               hud_lines: Sequence[str] = ()) -> np.ndarray:
        blended = blend_labels(frame, labels, self.lut, len(self.palette), self.style.alpha)
        if self.style.legend:
            h, w = blended.shape[:2]
            paste_legend(blended, self.legend(h, w), self._masks.get((h, w)))
        out = np.hstack([frame, blended]) if self.style.side_by_side else blended
        if self.style.hud and hud_lines:
            draw_hud(out, hud_lines)
        return out

#: what the legend's background does to the frame under it: a third of its brightness
DARKEN_LUT = (np.arange(256) // 3).astype(np.uint8)


def paste_legend(image: np.ndarray, legend: np.ndarray | None,
                 mask: np.ndarray | None = None) -> None:
    """Paste the legend into the top-right corner, darkening behind it (in place).
    ``mask``: the legend's drawn pixels (`legend_mask`), computed when not given; a renderer
    passes the one it cached (finding them costs more than the paste at 480x360)."""
    if legend is None or legend.shape[1] > image.shape[1] // 3:
        return
    h, w = legend.shape[:2]
    region = image[:h, -w:]
    if mask is None:
        mask = legend_mask(legend)
    # numpy writes through the strided view; OpenCV's dst= on a view is not safe
    np.take(DARKEN_LUT, region, out=region)  # region // 3, one table lookup per byte
    np.copyto(region, legend, where=mask)


def legend_mask(legend: np.ndarray) -> np.ndarray:
    """The legend's drawn (non-black) pixels, H x W x 1 (broadcasts over the channels)."""
    return legend.any(axis=2, keepdims=True)


def hud_layout(lines: Sequence[str], width: int, height: int
               ) -> tuple[float, int, int, list[str]]:
    """(scale, thickness, line step, lines kept) so the HUD grows with the frame, fits its
    width, and covers at most `MAX_HUD_COVER` of it (small frames keep the first lines)."""
    scale = min(max(MIN_HUD_SCALE, height / 900), 2.0)
    thickness = 1 if scale < 0.8 else 2
    widest = max(cv2.getTextSize(line, FONT, scale, thickness)[0][0] for line in lines)
    if widest + 12 > width:
        scale = max(MIN_HUD_SCALE, scale * (width - 12) / widest)
    (_, th), _ = cv2.getTextSize("Ag", FONT, scale, thickness)
    step = int(th * 1.8)
    kept = list(lines)
    while len(kept) > 1:
        band_w = min(width, max(cv2.getTextSize(line, FONT, scale, thickness)[0][0]
                                for line in kept) + 12)
        if band_w * (step * len(kept) + 6) <= MAX_HUD_COVER * width * height:
            break
        kept.pop()
    return scale, thickness, step, kept


def draw_hud(image: np.ndarray, lines: Sequence[str]) -> None:
    """Text lines top-left on a dark band (in place); sized to the frame (`hud_layout`)."""
    if not lines:
        return
    scale, thickness, step, lines = hud_layout(lines, image.shape[1], image.shape[0])
    width = max(cv2.getTextSize(line, FONT, scale, thickness)[0][0] for line in lines) + 12
    band = image[:step * len(lines) + 6, :min(width, image.shape[1])]
    band[:] = band // 3
    for i, line in enumerate(lines):
        cv2.putText(image, line, (6, step * (i + 1)), FONT, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
