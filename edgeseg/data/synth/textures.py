"""Procedural, tileable textures and noise banks, built once from a fixed seed.

Surfaces look their detail up through per-pixel texture coordinates (see
`render`), so bricks, paving stones and windows stay attached to the world in
perspective and in video. Every tile is periodic, so coordinates simply wrap.
Noise for sensors and rain is drawn once per frame size and sliced per frame at
a random offset: a frame never pays for generating noise.
"""

from __future__ import annotations

import functools
from enum import IntEnum

import cv2
import numpy as np

TILE = 128
#: a tile is stored with a 1-texel wrapped border so bilinear lookups wrap too
_STRIDE = TILE + 2
_SEED = 20240607


class Mat(IntEnum):
    """Surface materials: an atlas tile each."""

    FLAT = 0
    ASPHALT = 1
    PAVING = 2
    PLASTER = 3
    BRICK = 4
    GLASS = 5
    SHOP = 6
    FOLIAGE = 7
    GRASS = 8
    CONCRETE = 9
    MESH = 10
    PLANKS = 11
    SKY = 12
    FABRIC = 13
    PAINT = 14
    BARK = 15
    MARKING = 16


#: texels per metre (facades override this per building: one tile = one window cell)
DENSITY = np.ones(len(Mat))
DENSITY[[Mat.ASPHALT, Mat.GRASS, Mat.FOLIAGE, Mat.FABRIC, Mat.PAINT, Mat.BARK]] = 48.0
DENSITY[[Mat.PAVING, Mat.CONCRETE, Mat.MESH, Mat.PLANKS, Mat.MARKING]] = 64.0
DENSITY[[Mat.PLASTER, Mat.BRICK, Mat.GLASS, Mat.SHOP]] = 40.0
DENSITY[Mat.SKY] = 0.04


def _noise(rng: np.random.Generator, beta: float, aspect: float = 1.0) -> np.ndarray:
    """Periodic 1/f^beta noise, zero mean, unit std; ``aspect`` > 1 stretches it vertically."""
    freq = np.fft.fftfreq(TILE)
    fy, fx = np.meshgrid(freq * aspect, freq, indexing="ij")
    radius = np.hypot(fx, fy)
    radius[0, 0] = np.inf
    spectrum = np.fft.fft2(rng.standard_normal((TILE, TILE))) * radius**-beta
    out = np.fft.ifft2(spectrum).real
    return (out - out.mean()) / out.std()


def _grid(period: int, width: int) -> np.ndarray:
    """1-D mask of lines ``width`` texels wide every ``period`` texels."""
    return (np.arange(TILE) % period) < width


def _window_cell(x0: float, x1: float, y0: float, y1: float, frame: int) -> tuple[np.ndarray, ...]:
    """Masks (glass, frame, sill) of one window centred in a facade cell."""
    idx = np.arange(TILE) / TILE
    gx = (idx >= x0) & (idx < x1)
    gy = (idx >= y0) & (idx < y1)
    outer = gy[:, None] & gx[None, :]
    inner = np.zeros_like(outer)
    f = frame
    inner[int(y0 * TILE) + f: int(y1 * TILE) - f, int(x0 * TILE) + f: int(x1 * TILE) - f] = True
    sill = np.zeros_like(outer)
    sill[int(y1 * TILE): int(y1 * TILE) + 4, int(x0 * TILE) - 3: int(x1 * TILE) + 3] = True
    return inner, outer & ~inner, sill


def _tiles(rng: np.random.Generator) -> dict[Mat, tuple[np.ndarray, np.ndarray]]:
    """(luminance, glass mask) per material."""
    fine, mid, coarse = (_noise(rng, b) for b in (0.4, 1.0, 1.7))
    zeros = np.zeros((TILE, TILE))
    reflection = 0.75 + 0.35 * np.clip(0.5 + 0.25 * _noise(rng, 2.0), 0, 1)
    tiles: dict[Mat, tuple[np.ndarray, np.ndarray]] = {Mat.FLAT: (zeros + 1, zeros)}
    tiles[Mat.ASPHALT] = (1 + 0.09 * fine + 0.07 * coarse, zeros)

    stones = rng.uniform(-0.07, 0.07, (TILE // 32, TILE // 32)).repeat(32, 0).repeat(32, 1)
    seams = _grid(32, 2)[:, None] | _grid(32, 2)[None, :]
    tiles[Mat.PAVING] = (np.where(seams, 0.72, 1 + stones + 0.05 * fine), zeros)

    glass, frame, sill = _window_cell(0.26, 0.74, 0.22, 0.70, 5)
    lum = 1 + 0.05 * mid + 0.03 * fine
    lum = np.where(frame, 1.25, np.where(sill, 0.8, lum))
    tiles[Mat.PLASTER] = (np.where(glass, reflection, lum), glass.astype(float))

    row = np.arange(TILE)[:, None] // 8
    shifted = np.arange(TILE)[None, :] + 16 * (row % 2)
    brick = rng.uniform(-0.12, 0.12, (TILE // 8, 4))[row, (shifted // 32) % 4]
    mortar = _grid(8, 1)[:, None] | (shifted % 32 < 1)
    lum = np.where(mortar, 1.35, 0.92 + brick + 0.05 * fine)
    glass, frame, sill = _window_cell(0.32, 0.68, 0.16, 0.76, 4)
    lum = np.where(frame, 1.3, np.where(sill, 1.2, lum))
    tiles[Mat.BRICK] = (np.where(glass, reflection, lum), glass.astype(float))

    mullion = _grid(TILE // 2, 3)[None, :] | _grid(TILE, 3)[:, None]
    spandrel = (np.arange(TILE) >= int(0.82 * TILE))[:, None] & ~mullion
    glass = ~mullion & ~spandrel
    lum = np.where(mullion, 1.2, np.where(spandrel, 0.9 + 0.04 * fine, reflection))
    tiles[Mat.GLASS] = (lum, glass.astype(float))

    glass, frame, _ = _window_cell(0.06, 0.94, 0.18, 0.86, 4)
    tiles[Mat.SHOP] = (np.where(frame, 0.6, np.where(glass, 0.55 + 0.4 * reflection, 1.0)),
                       glass.astype(float))

    tiles[Mat.FOLIAGE] = (np.clip(1 + 0.45 * mid + 0.2 * fine, 0.3, 1.7), zeros)
    tiles[Mat.GRASS] = (1 + 0.14 * _noise(rng, 0.8, aspect=0.25) + 0.08 * coarse, zeros)
    tiles[Mat.CONCRETE] = (1 + 0.06 * mid + 0.03 * fine, zeros)

    diag = np.add.outer(np.arange(TILE), np.arange(TILE))
    anti = np.subtract.outer(np.arange(TILE), np.arange(TILE))
    wire = (diag % 16 < 2) | (anti % 16 < 2)
    tiles[Mat.MESH] = (np.where(wire, 1.3, 0.55), zeros)

    boards = rng.uniform(-0.15, 0.15, TILE // 16).repeat(16)[None, :]
    grain = 0.08 * _noise(rng, 0.9, aspect=0.1)
    tiles[Mat.PLANKS] = (np.where(_grid(16, 2)[None, :], 0.5, 1 + boards + grain), zeros)

    clouds = np.clip(coarse - 0.4, 0, None)
    tiles[Mat.SKY] = (1 + 0.3 * clouds, zeros)
    tiles[Mat.FABRIC] = (1 + 0.06 * fine + 0.05 * mid, zeros)
    tiles[Mat.PAINT] = (1 + 0.02 * mid, zeros)
    tiles[Mat.BARK] = (1 + 0.2 * _noise(rng, 0.8, aspect=0.1), zeros)
    tiles[Mat.MARKING] = (1 - 0.18 * np.clip(mid, 0, None), zeros)
    return tiles


@functools.cache
def atlas() -> tuple[np.ndarray, np.ndarray]:
    """All tiles side by side, two (TILE+2, len(Mat)*(TILE+2)) float32 images: luminance
    and glass (two one-channel lookups are much faster than one two-channel one)."""
    tiles = _tiles(np.random.default_rng(_SEED))
    out = np.zeros((2, _STRIDE, _STRIDE * len(Mat)), np.float32)
    for mat in Mat:
        for i, layer in enumerate(tiles[mat]):
            out[i, :, mat * _STRIDE: (mat + 1) * _STRIDE] = np.pad(layer, 1, "wrap")
    return out[0], out[1]


def atlas_column(material: np.ndarray) -> np.ndarray:
    """The first atlas column (after the border) of each material's tile, float32."""
    return (np.asarray(material) * _STRIDE + 1).astype(np.float32)


def atlas_maps(u: np.ndarray, v: np.ndarray, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel texel coordinates (any range) and tile columns (`atlas_column`) ->
    cv2.remap maps into the atlas."""
    inv = np.float32(1.0 / TILE)
    maps = []
    for coord, offset in ((u, column), (v, np.float32(1))):
        out = coord * inv
        np.floor(out, out=out)
        out *= np.float32(-TILE)
        out += coord
        out += offset
        maps.append(out)
    return maps[0], maps[1]


@functools.lru_cache(maxsize=4)
def gaussian_bank(height: int, width: int) -> np.ndarray:
    """(2H, 2W, 3) float32 standard normal noise for sensor noise."""
    rng = np.random.default_rng(_SEED + 1)
    return rng.standard_normal((2 * height, 2 * width, 3), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def rain_bank(height: int, width: int) -> np.ndarray:
    """(2H, 2W) float32 layer of slanted, motion-blurred rain streaks in 0..1."""
    rng = np.random.default_rng(_SEED + 2)
    canvas = np.zeros((2 * height, 2 * width), np.float32)
    count = canvas.size // 300
    starts = rng.uniform((0, 0), (2 * width, 2 * height), (count, 2))
    lengths = rng.uniform(0.03, 0.09, count) * height
    slant = 0.18
    ends = starts + lengths[:, None] * np.array([slant, 1.0])
    levels = rng.uniform(0.3, 1.0, count)
    for (x0, y0), (x1, y1), level in zip(starts.astype(int), ends.astype(int), levels):
        cv2.line(canvas, (x0, y0), (x1, y1), float(level), 1, cv2.LINE_AA)
    return cv2.GaussianBlur(canvas, (3, 3), 0)


def bank_slice(bank: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random (height, width) window of a noise bank."""
    y = int(rng.integers(0, bank.shape[0] - height + 1))
    x = int(rng.integers(0, bank.shape[1] - width + 1))
    return bank[y: y + height, x: x + width]
