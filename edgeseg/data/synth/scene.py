"""Sampling streets: the road layout and the things along it, as parameter columns.

Things come in *streams* that move together (the static street, each traffic
lane, each sidewalk direction). A stream is sampled in blocks along its own
moving frame; a block is a dict ``kind -> rows`` that `world.World` turns into
parameter columns (a `Batch`) for the vectorised emitters in `objects`.
`world.World` seeds one `Dice` per block, so any stretch of a world can be
regenerated identically on demand. Every row has the placement columns z (along
the stream), offset (metres right of the road centre line), y, extent (half
length, for range tests), heading (added to the road direction), drift/stop
(sideways walking) and layer.

A block samples only what placement needs (a vehicle's type and length, a
tree's size, ...) and gives rich things (vehicles, people and riders, trees,
buildings) a *seed*; their remaining parameters (colours, shapes, poses) are
drawn for the things in view only, a whole kind at once, by `PARAMS` from
`Draws`: per-thing random numbers hashed from the seed, so they stay the same
whenever the thing is drawn again.
"""

from __future__ import annotations

import bisect
import colorsys
import functools
import itertools
import math
import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeseg.data.synth import objects as ob
from edgeseg.data.synth.mesh import L_FAR, L_LINE, L_MARKING, L_NEAR, L_OUTER, L_PROPERTY
from edgeseg.data.synth.textures import Mat

Colour = tuple[float, float, float]
Rows = dict[str, list[dict[str, Any]]]
Columns = dict[str, np.ndarray]


def _seed(key: Sequence[int]) -> int:
    """One integer holding every part of ``key`` (64 bits each)."""
    out = 0
    for part in key:
        out = (out << 64) | (int(part) & 0xFFFFFFFFFFFFFFFF)
    return out


@functools.lru_cache(maxsize=256)
def _cumulative(weights: tuple[float, ...]) -> tuple[list[float], float]:
    cum = list(itertools.accumulate(weights))
    return cum, cum[-1]


class Dice:
    """Scalar random draws for sampling streets, seeded by an integer ``key``.

    Python's Mersenne Twister: cheap to seed (each block of a world gets its own)
    and one C call per draw, with a sequence fixed across Python versions and
    platforms.
    """

    def __init__(self, *key: int) -> None:
        self.random = random.Random(_seed(key)).random

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * self.random()

    def chance(self, p: float) -> bool:
        return self.random() < p

    def index(self, n: int) -> int:
        return min(int(self.random() * n), n - 1)

    def seed(self) -> int:
        """A 53-bit seed (exact as a float column) for a thing's `Draws`."""
        return int(self.random() * (1 << 53))

    def choose(self, options: Sequence[Any], weights: tuple[float, ...] | None = None) -> Any:
        if weights is None:
            return options[min(int(self.random() * len(options)), len(options) - 1)]
        cum, total = _cumulative(weights)
        return options[min(bisect.bisect(cum, self.random() * total), len(options) - 1)]

    def poisson(self, lam: float) -> int:
        """Knuth's method (``lam`` is small here)."""
        limit, k, p = math.exp(-lam), 0, self.random()
        while p > limit:
            k += 1
            p *= self.random()
        return k


_TINTS = np.array([(math.cos(a), math.cos(a - 2.094), math.cos(a + 2.094))
                   for a in np.linspace(0, 2 * math.pi, 64, endpoint=False)])
_TINT_LIST = [tuple(t) for t in _TINTS.tolist()]
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_HSV_K = np.array([5.0, 3.0, 1.0])  # hue offsets (sixths) of r, g, b


class Draws:
    """Random draws for N things at once, each an (N,) array: draw j of thing i is a
    hash (splitmix64) of the thing's seed and j, so a thing's parameters depend on
    its seed alone, and a whole kind costs a few dozen array operations."""

    def __init__(self, seeds: np.ndarray, count: int = 32) -> None:
        self._seeds = seeds.astype(np.uint64)
        self._u = self._hash(0, count)
        self._next = 0

    def _hash(self, start: int, count: int) -> np.ndarray:
        """(count, N) uniform numbers in [0, 1): draws start .. start + count - 1."""
        j = np.arange(start + 1, start + count + 1, dtype=np.uint64)[:, None]
        x = self._seeds + j * _MIX[0]
        x ^= x >> np.uint64(30)
        x *= _MIX[1]
        x ^= x >> np.uint64(27)
        x *= _MIX[2]
        x ^= x >> np.uint64(31)
        return (x >> np.uint64(11)) * (1.0 / (1 << 53))

    def block(self, k: int) -> np.ndarray:
        """(k, N) uniform draws."""
        end = self._next + k
        if end > len(self._u):  # more than reserved: extend
            self._u = np.concatenate([self._u, self._hash(len(self._u), max(k, 16))])
        out = self._u[self._next:end]
        self._next = end
        return out

    def u(self, lo: Any = 0.0, hi: Any = 1.0) -> np.ndarray:
        return lo + (hi - lo) * self.block(1)[0]

    def chance(self, p: Any) -> np.ndarray:
        return self.block(1)[0] < p

    def index(self, n: Any) -> np.ndarray:
        """Uniform integers in 0 .. n - 1 (``n`` may vary per thing)."""
        return (self.block(1)[0] * n).astype(np.intp)  # < n: draws are below 1 - 2^-53

    def choose(self, options: Sequence[Any], weights: tuple[float, ...] | None = None
               ) -> np.ndarray:
        options = np.asarray(options)
        if weights is None:
            return options[self.index(len(options))]
        cum, total = _cumulative(weights)
        at = np.searchsorted(cum, self.u(0.0, total), "right")
        return options[np.minimum(at, len(options) - 1)]

    def jitter(self, colour: Any, amount: Any = 0.05) -> np.ndarray:
        """(N, 3) colours varied in brightness and, by up to ``amount``, in hue."""
        scale, tint = self.block(2)
        tint = _TINTS[(tint * len(_TINTS)).astype(np.intp)]
        tint *= amount if np.ndim(amount) == 0 else amount[:, None]
        tint += (0.85 + 0.3 * scale)[:, None] * colour
        return np.minimum(np.maximum(tint, 0.0, out=tint), 1.0, out=tint)

    def pick(self, palette: Sequence[Colour], amount: Any = 0.04) -> np.ndarray:
        return self.jitter(self.choose(palette), amount)

    def hsv(self, sat: Sequence[tuple[float, float]], val: Sequence[tuple[float, float]]
            ) -> np.ndarray:
        """(K, N, 3) RGB colours of uniform hue, saturation in ``sat[k]`` and value in
        ``val[k]`` for K ranges (``sat``, ``val`` (K, 2); one range: (N, 3))."""
        one = np.ndim(sat) == 1
        sat, val = np.atleast_2d(sat)[:, :, None], np.atleast_2d(val)[:, :, None]
        h, s, v = self.block(3 * len(sat)).reshape(3, len(sat), -1)
        s = sat[:, 0] + (sat[:, 1] - sat[:, 0]) * s
        v = val[:, 0] + (val[:, 1] - val[:, 0]) * v
        k = (_HSV_K + 6.0 * h[..., None]) % 6.0  # (K, N, 3)
        k = np.minimum(k, 4.0 - k)
        np.clip(k, 0.0, 1.0, out=k)
        k *= (v * s)[..., None]
        rgb = v[..., None] - k
        return rgb[0] if one else rgb


@functools.lru_cache(maxsize=64)
def _dtype(fields: tuple[tuple[str, int], ...]) -> np.dtype:
    return np.dtype([(name, float, (size,) if size else ()) for name, size in fields])


class Batch:
    """Parameter columns of one kind of thing."""

    def __init__(self, columns: Columns) -> None:
        self.columns = columns

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> Batch:
        """Columns of rows with the same keys, each a number or a tuple of numbers (one
        structured array: numpy parses all rows in one call)."""
        first = rows[0]
        dtype = _dtype(tuple((k, len(v) if isinstance(v, tuple) else 0) for k, v in first.items()))
        values = operator.itemgetter(*first)
        table = np.array([values(row) for row in rows], dtype)
        return cls({k: table[k] for k in first})

    def __len__(self) -> int:
        return len(self.columns["z"])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.columns[key]


def _add(rows: Rows, kind: str, z: float, offset: float, layer: int, p: dict[str, Any],
         y: float = 0.0, extent: float = 3.0, heading: float = 0.0, drift: float = 0.0,
         stop: float = 0.0) -> None:
    rows.setdefault(kind, []).append(
        {"z": z, "offset": offset, "y": y, "extent": extent, "heading": heading, "drift": drift,
         "stop": stop, "layer": layer, **p})


# --- colours -----------------------------------------------------------------------

def _jitter(d: Dice, colour: Colour, amount: float = 0.05) -> Colour:
    """A colour varied in brightness and, by up to ``amount``, in hue."""
    rnd = d.random
    scale = 0.85 + 0.3 * rnd()
    tr, tg, tb = _TINT_LIST[min(int(rnd() * 64), 63)]
    r, g, b = colour
    return (min(max(r * scale + amount * tr, 0.0), 1.0),
            min(max(g * scale + amount * tg, 0.0), 1.0),
            min(max(b * scale + amount * tb, 0.0), 1.0))


def _pick(d: Dice, palette: Sequence[Colour], amount: float = 0.04) -> Colour:
    return _jitter(d, d.choose(palette), amount)


def _hsv(d: Dice, sat: tuple[float, float], val: tuple[float, float]) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(d.u(), d.u(*sat), d.u(*val))
    return (r, g, b)


_CAR_PAINT = [(0.88, 0.88, 0.88), (0.07, 0.07, 0.08), (0.6, 0.62, 0.65), (0.33, 0.34, 0.36),
              (0.1, 0.14, 0.32), (0.55, 0.07, 0.06), (0.2, 0.34, 0.6), (0.7, 0.64, 0.52),
              (0.85, 0.68, 0.12), (0.15, 0.3, 0.2)]
_CAR_WEIGHTS = (22, 18, 18, 14, 7, 7, 6, 3, 2, 3)
_BUS_PAINT = [(0.85, 0.7, 0.1), (0.75, 0.1, 0.08), (0.9, 0.9, 0.88), (0.15, 0.4, 0.25),
              (0.2, 0.35, 0.65)]
_PLASTER = [(0.85, 0.8, 0.7), (0.9, 0.88, 0.82), (0.7, 0.7, 0.7), (0.85, 0.74, 0.55),
            (0.8, 0.6, 0.5), (0.6, 0.65, 0.7), (0.93, 0.93, 0.9), (0.55, 0.5, 0.45),
            (0.7, 0.75, 0.6)]
_BRICK = [(0.55, 0.25, 0.18), (0.45, 0.2, 0.15), (0.72, 0.56, 0.4), (0.5, 0.36, 0.3)]
_CURTAIN = [(0.35, 0.37, 0.4), (0.6, 0.6, 0.62), (0.2, 0.22, 0.25), (0.5, 0.45, 0.4)]
_FACADES = {Mat.PLASTER: _PLASTER, Mat.BRICK: _BRICK, Mat.GLASS: _CURTAIN}
_GLASS = [(0.2, 0.27, 0.35), (0.16, 0.24, 0.28), (0.26, 0.3, 0.27), (0.3, 0.33, 0.38),
          (0.12, 0.13, 0.16)]
_SKIN = [(0.95, 0.8, 0.68), (0.85, 0.65, 0.5), (0.62, 0.45, 0.32), (0.4, 0.28, 0.2)]
_HAIR = [(0.08, 0.06, 0.05), (0.3, 0.2, 0.1), (0.6, 0.45, 0.25), (0.5, 0.5, 0.5)]
_LEAF = [(0.22, 0.38, 0.12), (0.18, 0.32, 0.14), (0.3, 0.42, 0.15), (0.35, 0.36, 0.12),
         (0.55, 0.42, 0.12)]
_GRASS = [(0.35, 0.5, 0.2), (0.42, 0.5, 0.25), (0.5, 0.5, 0.3), (0.3, 0.42, 0.2)]
_PAVING = [(0.62, 0.6, 0.58), (0.7, 0.66, 0.6), (0.55, 0.5, 0.5), (0.66, 0.5, 0.45),
           (0.5, 0.52, 0.55)]
_WHITE = (0.9, 0.9, 0.88)
_SIGN_SHAPES = ("circle", "triangle", "rect", "octagon", "diamond")  # objects._SIGNS order
_SIGN_COLOURS = {  # shape: (rim, face)
    "circle": ((0.8, 0.1, 0.1), (0.92, 0.92, 0.92)),
    "triangle": ((0.8, 0.1, 0.1), (0.95, 0.95, 0.9)),
    "rect": ((0.95, 0.95, 0.95), (0.1, 0.3, 0.7)),
    "octagon": ((0.8, 0.1, 0.1), (0.8, 0.1, 0.1)),
    "diamond": ((0.95, 0.95, 0.95), (0.95, 0.8, 0.1)),
}
_LAMP_GLOW = {"sodium": (2.2, 1.3, 0.5), "led": (2.0, 2.0, 2.2)}


# --- the road layout -----------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """The road (centre line ``amp * sin(2 pi z / period + phase)``) and camera mounting."""

    amp: float
    period: float
    phase: float
    lane_w: float
    lanes: tuple[int, int]      # (left, right) lane counts; the camera drives on the right
    park: tuple[float, float]   # parking lane widths (0 = none)
    walk: tuple[float, float]   # sidewalk widths
    cam_lane: int
    cam_height: float
    focal: float                # focal length / image width
    horizon: float              # horizon row / image height
    yaw: float                  # camera yaw offset from the road direction
    speed: float                # ego speed (m/s)
    colours: dict[str, Colour] = field(hash=False)
    kerb: float = 0.12
    curb: float = 0.25

    def center(self, z: Any) -> Any:
        return self.amp * np.sin(2 * np.pi * np.asarray(z) / self.period + self.phase)

    def tangent(self, z: Any) -> Any:
        w = 2 * np.pi / self.period
        return np.arctan(self.amp * w * np.cos(w * np.asarray(z) + self.phase))

    def road_edge(self, side: int) -> float:
        i = (side + 1) // 2
        return side * (self.lanes[i] * self.lane_w + self.park[i])

    def walk_edge(self, side: int) -> float:
        """The outer edge of the sidewalk (the property line)."""
        return self.road_edge(side) + side * (self.curb + self.walk[(side + 1) // 2])

    def bands(self, o0: Any, o1: Any, z0: Any, z1: Any, steps: int) -> np.ndarray:
        """(B, 2 steps, 2) world xz outlines of bands between road offsets o0 and o1 over
        z0..z1 (arrays or scalars), ``steps`` points along each side."""
        o0, o1, z0, z1 = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, float))
                                               for v in (o0, o1, z0, z1)))
        z = z0[:, None] + (z1 - z0)[:, None] * np.linspace(0.0, 1.0, steps)
        x = self.center(z)
        out = np.empty((len(z), 2 * steps, 2))
        out[:, :steps, 0] = x + o0[:, None]
        out[:, steps:, 0] = (x + o1[:, None])[:, ::-1]
        out[:, :steps, 1] = z
        out[:, steps:, 1] = z[:, ::-1]
        return out


def sample_layout(d: Dice) -> Layout:
    lanes = (d.choose([0, 1, 1, 2]), d.choose([1, 1, 2, 2, 3]))
    return Layout(
        amp=d.u(0, 5) * d.chance(0.7),
        period=d.u(180, 450),
        phase=d.u(0, 2 * math.pi),
        lane_w=d.u(2.9, 3.6),
        lanes=lanes,
        park=(d.u(2.0, 2.4) * d.chance(0.4), d.u(2.0, 2.4) * d.chance(0.4)),
        walk=(d.u(1.8, 5.0), d.u(1.8, 5.0)),
        cam_lane=d.index(lanes[1]),
        cam_height=d.u(1.25, 1.7),
        focal=d.u(0.8, 1.05),
        horizon=d.u(0.38, 0.48),
        yaw=d.u(-0.04, 0.04),
        speed=d.u(7, 13),
        colours={
            "road": _jitter(d, (0.33, 0.33, 0.34), 0.02),
            "walk": _pick(d, _PAVING),
            "curb": _jitter(d, (0.72, 0.72, 0.7), 0.03),
            "grass": _pick(d, _GRASS),
            "marking": _jitter(d, _WHITE, 0.02),
            "centre": (0.9, 0.75, 0.15) if d.chance(0.3) else _jitter(d, _WHITE, 0.02),
            "lamp": (0.35, 0.37, 0.38) if d.chance(0.6) else (0.15, 0.25, 0.2),
        },
    )


# --- things with a seed: placement rows, parameters drawn in bulk ---------------------

def _person(d: Dice, view: int, walk: float, facing: float = 0.0) -> dict[str, Any]:
    """view: 0 front, 1 back, 2 side; walk in m/s; facing +-1 (0: random)."""
    return {"view": view, "walk": walk, "facing": facing, "ride": 0, "front": False,
            "seed": d.seed()}


def _rider(d: Dice, moto: bool, front: bool) -> dict[str, Any]:
    """A person riding a bicycle or (``moto``) a motorcycle, seen from the front or back."""
    return {"view": 0 if front else 1, "walk": 0.0, "facing": 0.0, "ride": 2 if moto else 1,
            "front": front, "seed": d.seed()}


def _tree(d: Dice, size: float) -> dict[str, Any]:
    return {"size": size, "seed": d.seed()}


_CAR, _VAN, _BUS, _TRUCK = range(4)
_LENGTHS = ((3.7, 4.8), (4.8, 5.6), (10.0, 12.0), (7.0, 9.0))
_LABEL, _WIDTH, _CLEAR, _BELT, _TOP, _INSET, _A0, _A1, _WIN_BACK, _PAINT_JITTER = range(10)
#: per vehicle type (car, van, bus, truck; 0 where drawn per vehicle): label, width,
#: clearance, belt line, top, inset of the upper box, its z range (shares of the
#: length), windows at the back, colour jitter
_KINDS = np.array([
    (ob.CAR, 0.0, 0.2, 0.0, 0.0, 0.1, 0.0, 1.0, 1.0, 0.03),
    (ob.CAR, 1.95, 0.25, 1.0, 0.0, 0.02, 0.0, 1.0, 1.0, 0.03),
    (ob.BUS, 2.5, 0.35, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.04),
    (ob.TRUCK, 2.4, 0.4, 1.3, 2.9, 0.0, 0.76, 1.0, 0.0, 0.0),
])
_CABINS = np.array([(0.08, 0.74), (0.2, 0.7), (0.1, 0.68)])  # SUV, sedan, hatchback


def _vehicle(d: Dice, lit: bool) -> dict[str, Any]:
    """A car (sedan, hatchback, SUV), van, bus or truck: its type and length (what
    placement needs); `_vehicle_params` draws the rest."""
    kind = d.choose(range(4), (84, 6, 5, 5))
    suv = kind == _CAR and d.chance(0.25)
    length = d.u(4.3, 4.9) if suv else d.u(*_LENGTHS[kind])
    return {"kind": kind, "suv": suv, "length": length, "lit": lit, "seed": d.seed()}


def _building(d: Dice, side: int, length: float, tall: float, backdrop: bool) -> dict[str, Any]:
    return {"side": side, "length": length, "tall": tall, "backdrop": backdrop,
            "seed": d.seed()}


_CLOTHES_SAT = ((0.05, 0.8), (0.0, 0.5), (0.0, 0.6))  # top, legs, bag
_CLOTHES_VAL = ((0.1, 0.85), (0.08, 0.55), (0.1, 0.6))


def _people_params(p: Columns, r: Draws) -> Columns:
    """People walking or standing and (``ride`` > 0) riding, see `objects.emit_people`."""
    small = r.chance(0.06)
    height = r.u(np.where(small, 1.1, 1.55), np.where(small, 1.35, 1.95))
    riding = p["ride"] > 0
    facing = np.where(r.chance(0.5), 1.0, -1.0)
    return {
        "height": np.where(riding, r.u(1.6, 1.9), height),
        "facing": np.where(p["facing"] != 0, p["facing"], facing),  # given: crossing
        "phase": r.u(0, 2 * math.pi), "skin": r.pick(_SKIN, 0.02), "hair": r.pick(_HAIR, 0.03),
        **dict(zip(("top", "legs", "bag"), r.hsv(_CLOTHES_SAT, _CLOTHES_VAL))),
        "has_bag": r.chance(0.3), "frame": r.hsv((0.2, 0.9), (0.15, 0.8)), "lit": riding * 1.0,
    }


_BLOBS = 6
#: per crown blob: dx, dy (times the radius), rx, ry (times the radius), shade
_BLOB_RANGES = np.array([(-0.6, 0.6), (0.4, 1.6), (0.55, 0.9), (0.5, 0.85), (0.75, 1.15)])


def _tree_params(p: Columns, r: Draws) -> Columns:
    """A trunk and a crown of 3 to 5 blobs (ellipses, or triangles for conifers)."""
    size = p["size"]
    conifer = r.chance(0.15)
    radius = size * r.u(1.5, 3.2)
    count = 3 + r.index(_BLOBS - 3)
    lo, hi = _BLOB_RANGES[:, :1, None], _BLOB_RANGES[:, 1:, None]
    blobs = lo + (hi - lo) * r.block(5 * _BLOBS).reshape(5, _BLOBS, -1)  # (5, blob, N)
    blobs[:4] *= radius
    blobs[3] *= np.where(conifer, 2.0, 1.0)
    blobs *= np.arange(_BLOBS)[:, None] < count
    return {
        "trunk": size * r.u(1.8, 3.2), "width": size * r.u(0.18, 0.35),
        "bark": r.jitter((0.3, 0.24, 0.18), 0.04),
        # no autumn colours for conifers
        "leaf": r.jitter(np.asarray(_LEAF)[r.index(np.where(conifer, 3, len(_LEAF)))], 0.04),
        "blobs": blobs.transpose(2, 1, 0), "conifer": conifer, "tex": r.u(0.6, 1.4),
    }


def _vehicle_params(p: Columns, r: Draws) -> Columns:
    """See `objects.emit_vehicles`; a van is a car in Cityscapes, a truck a cab in front
    of a cargo box."""
    kind = p["kind"].astype(np.intp)
    each = np.arange(len(kind))
    car, truck = kind == _CAR, kind == _TRUCK
    suv = p["suv"] > 0
    h = r.u(np.where(suv, 1.65, 1.38), np.where(suv, 1.85, 1.55))  # of cars
    cabin = np.where(suv, 0, 1 + r.index(2))  # SUV, sedan or hatchback
    paints = np.stack([r.choose(_CAR_PAINT, _CAR_WEIGHTS), r.choose(_CAR_PAINT[:4]),
                       r.choose(_BUS_PAINT), r.hsv((0.0, 0.7), (0.3, 0.95))])
    paint = paints[kind, each]
    colour = np.where(truck[:, None], paint, r.jitter(paint, _KINDS[kind, _PAINT_JITTER]))
    table = _KINDS[kind]
    table[:, _A0:_A1 + 1] = np.where(car[:, None], _CABINS[cabin], table[:, _A0:_A1 + 1])
    return {
        "label": table[:, _LABEL], "width": np.where(car, r.u(1.65, 1.95), table[:, _WIDTH]),
        "clear": table[:, _CLEAR],
        "belt": np.where(car, h * r.u(0.5, 0.58), table[:, _BELT]),
        "top": np.stack([h, r.u(1.95, 2.5), r.u(2.9, 3.2), table[:, _TOP]])[kind, each],
        "inset": table[:, _INSET], "a0": table[:, _A0], "a1": table[:, _A1],
        "win_back": table[:, _WIN_BACK], "car": car * 1.0,
        "cargo": np.where(truck, r.u(3.2, 3.7), 0.0), "colour": colour,
        "glass": r.jitter((0.12, 0.15, 0.2), 0.03), "brake": r.chance(0.2),
    }


_FACADE_MATS = np.array([Mat.PLASTER, Mat.BRICK, Mat.GLASS])
_FACADE_PALETTES = np.zeros((len(Mat), max(map(len, _FACADES.values())), 3))
_FACADE_SIZES = np.ones(len(Mat), int)
for _mat, _palette in _FACADES.items():
    _FACADE_PALETTES[_mat, :len(_palette)] = _palette
    _FACADE_SIZES[_mat] = len(_palette)


def _building_params(p: Columns, r: Draws) -> Columns:
    """Blocks along the street (``tall`` scales their floors) and, ``backdrop``, tall grey
    ones far behind it: the skyline."""
    far = p["backdrop"] > 0
    share = r.u()  # of plaster, brick and glass: 55, 30, 15 % (backdrop: 50, 20, 30 %)
    material = _FACADE_MATS[(share >= np.where(far, 0.5, 0.55)).astype(int)
                            + (share >= np.where(far, 0.7, 0.85))]
    facade = _FACADE_PALETTES[material, r.index(_FACADE_SIZES[material])]
    colour = r.jitter(np.where(far[:, None], (0.65, 0.65, 0.66), facade), np.where(far, 0.1, 0.04))
    floor_h = r.u(np.where(far, 3.0, 2.9), np.where(far, 3.6, 3.8))
    share = r.u()
    floors = np.where(far, 4 + np.minimum((share * 12).astype(int), 11),
                      np.maximum(2, ((2 + 7 * share) * p["tall"]).astype(int)))
    return {
        "depth": np.where(far, 20.0, r.u(10, 20)),
        "height": floors * floor_h + np.where(far, 0.0, r.u(0.3, 1.5)), "material": material,
        "colour": colour, "glass": r.pick(_GLASS, np.where(far, 0.04, 0.03)),
        "lit": r.u(0.1, np.where(far, 0.5, 0.6)),
        "cell": np.stack([r.u(np.where(far, 2.5, 2.4), np.where(far, 4.0, 4.2)), floor_h], 1),
        "trim": np.where(far[:, None], 0.6, r.jitter(colour, 0.08)),
        "shop": np.where(far[:, None], 0.0, r.hsv((0, 0.7), (0.2, 0.9))),
        "has_shop": ~far & r.chance(0.4),
    }


#: kind -> (its parameters from placement columns and draws, the number of draws)
PARAMS: dict[str, tuple[Callable[[Columns, Draws], Columns], int]] = {
    "people": (_people_params, 24),
    "trees": (_tree_params, 41),
    "vehicles": (_vehicle_params, 18),
    "buildings": (_building_params, 19),
}


def with_parameters(kind: str, batch: Batch) -> Batch:
    """``batch`` with the parameters `PARAMS` draws for its things (if any)."""
    if kind in PARAMS:
        sample, count = PARAMS[kind]
        batch.columns.update(sample(batch.columns, Draws(batch["seed"], count)))
    return batch


def _ground(rows: Rows, o0: float, o1: float, za: float, zb: float, label: int, colour: Colour,
            material: Mat, gy: float, layer: int) -> None:
    """A flat strip between road offsets o0 and o1 over za..zb (see `world.World.mesh`)."""
    _add(rows, "grounds", (za + zb) / 2, 0.0, layer,
         {"band": (o0, o1, za, zb), "gy": gy, "label": label, "colour": colour,
          "material": material}, extent=(zb - za) / 2)


# --- samplers ------------------------------------------------------------------------

_ZONES = ("buildings", "park", "fence", "wall", "hedge")


class Street:
    """The static street: `structures` (zones beside the sidewalks, lamps, the skyline),
    drawn far, and `furniture` (signs, sidewalk trees, people standing, parked
    vehicles, crossings), drawn near: two samplers, so far blocks skip small stuff."""

    def __init__(self, lay: Layout, d: Dice) -> None:
        self.lay = lay
        # buildings, park, fence, wall, hedge
        self.zone_w = (6 * d.u(0.3, 1.7), 2 * d.u(0.3, 1.7), d.u(0.3, 1.7), d.u(0.3, 1.7),
                       d.u(0.3, 1.7))
        self.lamp_spacing = d.u(18, 35)
        self.lamp_phase = d.u(0, self.lamp_spacing)
        self.lamp_sides = d.choose([(-1, 1), (1,), (-1,)], (6, 3, 1))
        self.lamp_glow = _LAMP_GLOW["sodium" if d.chance(0.6) else "led"]
        self.tree_spacing = d.u(9, 18) if d.chance(0.5) else 0.0
        self.tall = d.u(0.5, 1.5)
        self.crowd = d.u(0.3, 2.0)

    def structures(self, d: Dice, z0: float, z1: float) -> Rows:
        rows: Rows = {}
        for side in (-1, 1):
            z = z0
            while z < z1 - 1:
                zone = d.choose(_ZONES, self.zone_w)
                length = min(d.u(12, 40), z1 - z)
                self._zone(d, rows, zone, side, z, z + length)
                z += length
            if side in self.lamp_sides:
                self._lamps(d, rows, side, z0, z1)
            self._backdrop(d, rows, side, z0, z1)
        return rows

    def furniture(self, d: Dice, z0: float, z1: float) -> Rows:
        rows: Rows = {}
        for side in (-1, 1):
            self._furniture(d, rows, side, z0, z1)
            self._parked(d, rows, side, z0, z1)
        if d.chance(0.3):
            self._crossing(d, rows, d.u(z0 + 5, z1 - 5))
        return rows

    def _lamp_positions(self, z0: float, z1: float) -> list[float]:
        first = math.ceil((z0 - self.lamp_phase) / self.lamp_spacing)
        return [z for z in (self.lamp_phase + n * self.lamp_spacing for n in range(first, first + 5))
                if z0 <= z < z1]

    def _lamps(self, d: Dice, rows: Rows, side: int, z0: float, z1: float) -> None:
        lay = self.lay
        for z in self._lamp_positions(z0, z1):
            _add(rows, "lamps", z, lay.road_edge(side) + side * (lay.curb + 0.45), L_NEAR,
                 {"height": d.u(6.5, 9), "reach": -side * d.u(1.2, 2.6), "glow": self.lamp_glow,
                  "colour": lay.colours["lamp"]}, y=lay.kerb)

    def _zone(self, d: Dice, rows: Rows, zone: str, side: int, za: float, zb: float) -> None:
        """Ground, a boundary (fence, wall, hedge), buildings and trees beyond the sidewalk."""
        lay = self.lay
        edge = lay.walk_edge(side)
        mid, half = (za + zb) / 2, (zb - za) / 2
        paved = zone == "buildings"
        _ground(rows, edge, edge + side * 45, za, zb, ob.SIDEWALK if paved else ob.TERRAIN,
                lay.colours["walk"] if paved else _jitter(d, lay.colours["grass"], 0.03),
                Mat.PAVING if paved else Mat.GRASS, lay.kerb, L_PROPERTY)
        if paved:
            self._buildings(d, rows, side, edge + side * d.u(0, 4) * d.chance(0.4), za, zb, L_OUTER)
            return
        box: dict[str, Any] = {"length": zb - za, "posts": (0.3, 0.3, 0.3), "has_posts": False,
                               "wrap": 0.0}
        if zone == "fence":
            mesh = d.chance(0.6)
            box.update(label=ob.FENCE, thickness=0.05, height=d.u(1.0, 2.2),
                       colour=_hsv(d, (0, 0.4), (0.35, 0.75)) if mesh
                       else _pick(d, [(0.5, 0.38, 0.25), (0.6, 0.58, 0.55)]),
                       material=Mat.MESH if mesh else Mat.PLANKS, has_posts=mesh,
                       posts=_jitter(d, (0.3, 0.3, 0.3)))
        elif zone == "wall":
            box.update(label=ob.WALL, thickness=0.3, height=d.u(0.6, 2.5),
                       colour=_pick(d, _PLASTER + _BRICK, 0.05), material=Mat.CONCRETE)
        elif zone == "hedge":
            box.update(label=ob.VEGETATION, thickness=0.9, height=d.u(0.8, 1.9),
                       colour=_pick(d, _LEAF), material=Mat.FOLIAGE, wrap=0.5)
        if zone != "park":
            _add(rows, "boxes", mid, edge + side * (0.2 + box["thickness"] / 2), L_LINE, box,
                 y=lay.kerb, extent=half)
            if d.chance(0.45):
                self._buildings(d, rows, side, edge + side * d.u(6, 14), za, zb, L_OUTER)
        for _ in range(d.poisson((zb - za) / (14 if zone == "park" else 25))):
            _add(rows, "trees", d.u(za, zb), edge + side * d.u(2.5, 30), L_OUTER,
                 _tree(d, d.u(1.0, 1.8)), y=lay.kerb)

    def _buildings(self, d: Dice, rows: Rows, side: int, line: float, za: float, zb: float,
                   layer: int) -> None:
        z = za
        while zb - z > 4:
            length = min(d.u(10, 32), zb - z)
            if z > za and d.chance(0.2):
                z += d.u(1.5, 5)  # an alley
                continue
            _add(rows, "buildings", z + length / 2, line, layer,
                 _building(d, side, length, self.tall, False), extent=length / 2)
            z += length

    def _furniture(self, d: Dice, rows: Rows, side: int, z0: float, z1: float) -> None:
        """Sidewalk trees (clear of the lamps), signs, people standing, parked bicycles."""
        lay = self.lay
        kerb_line = lay.road_edge(side) + side * (lay.curb + 0.45)
        lamps = self._lamp_positions(z0, z1) if side in self.lamp_sides else []
        if self.tree_spacing:
            z = z0 + d.u(0, self.tree_spacing)
            while z < z1:
                if all(abs(z - lz) > 3 for lz in lamps):
                    _add(rows, "trees", z, kerb_line + side * 0.4, L_NEAR, _tree(d, d.u(0.9, 1.4)),
                         y=lay.kerb)
                z += self.tree_spacing
        for _ in range(d.poisson(0.8)):
            shape = d.choose(_SIGN_SHAPES, (40, 20, 25, 5, 10))
            rim, face = _SIGN_COLOURS[shape]
            if shape == "circle" and d.chance(0.4):
                rim, face = (0.1, 0.3, 0.7), (0.15, 0.35, 0.75)
            elif shape == "rect" and d.chance(0.4):
                face = (0.1, 0.5, 0.3)
            _add(rows, "signs", d.u(z0, z1), kerb_line - side * 0.15, L_NEAR, {
                "shape": _SIGN_SHAPES.index(shape), "size": d.u(0.55, 0.9),
                "height": d.u(2.0, 2.8), "rim": _jitter(d, rim, 0.03),
                "face": _jitter(d, face, 0.03), "facing": d.chance(0.85 if side > 0 else 0.35),
                "post": _jitter(d, (0.5, 0.5, 0.52), 0.05), "extra": d.chance(0.3)}, y=lay.kerb)
        walk = lay.walk[(side + 1) // 2]
        inner = lay.road_edge(side) + side * lay.curb
        for _ in range(d.poisson(0.6 * self.crowd)):
            _add(rows, "people", d.u(z0, z1), inner + side * d.u(0.4, walk - 0.3), L_NEAR,
                 _person(d, d.index(3), 0.0), y=lay.kerb)
        if d.chance(0.15):
            _add(rows, "bikes", d.u(z0, z1), inner + side * (walk - 0.5), L_NEAR,
                 {"frame": _hsv(d, (0.2, 0.9), (0.15, 0.8)), "facing": d.choose([-1.0, 1.0])},
                 y=lay.kerb)

    def _parked(self, d: Dice, rows: Rows, side: int, z0: float, z1: float) -> None:
        lay = self.lay
        park = lay.park[(side + 1) // 2]
        z = z0 + d.u(0, 3)
        while park and z < z1:
            length = d.u(3.8, 4.9)
            if d.chance(0.55):
                p = _vehicle(d, False)
                length = p["length"]
                if p["kind"] in (_CAR, _VAN):  # the car class
                    flip = d.chance(0.85 if side < 0 else 0.1)
                    _add(rows, "vehicles", z + length / 2, lay.road_edge(side) - side * park / 2,
                         L_NEAR, p, extent=length / 2, heading=math.pi if flip else 0.0)
            z += length + d.u(0.8, 2.5)

    def _backdrop(self, d: Dice, rows: Rows, side: int, z0: float, z1: float) -> None:
        """Tall buildings and big trees far behind the street: the skyline."""
        edge = self.lay.walk_edge(side)
        for _ in range(d.index(3)):
            length = d.u(15, 40)
            _add(rows, "buildings", d.u(z0, z1), edge + side * d.u(30, 90), L_FAR,
                 _building(d, side, length, 1.0, True), extent=length / 2)
        if d.chance(0.3):
            _add(rows, "trees", d.u(z0, z1), edge + side * d.u(25, 60), L_FAR,
                 _tree(d, d.u(2.0, 3.5)), y=self.lay.kerb)

    def _crossing(self, d: Dice, rows: Rows, z: float) -> None:
        """A zebra crossing with signals on both sides and people walking over it."""
        lay = self.lay
        left, right = lay.road_edge(-1), lay.road_edge(1)
        for x in np.arange(left + 0.5, right - 0.5, 1.0).tolist():
            _ground(rows, x, x + 0.5, z - 1.5, z + 1.5, ob.ROAD, lay.colours["marking"],
                    Mat.MARKING, 0.0, L_MARKING)
        state = d.index(3)
        for side in (-1, 1):
            arm = -side * d.u(3, 6) if side > 0 and d.chance(0.5) else 0.0
            _add(rows, "signals", z - 2.5, lay.road_edge(side) + side * (lay.curb + 0.4), L_NEAR,
                 {"height": d.u(2.4, 3.2) + (2.5 if arm else 0.0), "arm": arm, "state": state,
                  "facing": side > 0, "colour": _jitter(d, (0.3, 0.3, 0.32))}, y=lay.kerb)
        for _ in range(d.index(4)):
            start = d.u(left, right)
            direction = d.choose([-1.0, 1.0])
            p = _person(d, 2, 1.2, direction)
            _add(rows, "people", z + d.u(-1, 1), start, L_NEAR, p, drift=1.2 * direction,
                 stop=(right + 1 - start) if direction > 0 else (start - left + 1))


Sampler = Callable[[Dice, float, float], Rows]


def traffic(lay: Layout, side: int, lane: int, ego: bool, density: float) -> Sampler:
    """Vehicles (and some motorcyclists) of one lane, keeping clear of the ego camera."""
    offset = side * (lane + 0.5) * lay.lane_w

    def sample(d: Dice, z0: float, z1: float) -> Rows:
        rows: Rows = {}
        z = z0 + d.u(3, 40) / density
        while z < z1 - 3:
            if d.chance(0.04):
                _add(rows, "people", z, offset, L_NEAR, _rider(d, True, side < 0))
                length = 2.0
            else:
                p = _vehicle(d, True)
                length = p["length"]
                if not (ego and -length - 8 < z < 12 + length):
                    _add(rows, "vehicles", z, offset, L_NEAR, p, extent=length / 2,
                         heading=0.0 if side > 0 else math.pi)
            z += length + d.u(8, 70) / density
        return rows

    return sample


def walkers(lay: Layout, side: int, share: float, walk: float, density: float) -> Sampler:
    """People walking along one sidewalk in one direction (``walk`` m/s, signed)."""
    offset = lay.road_edge(side) + side * (lay.curb + share * lay.walk[(side + 1) // 2])

    def sample(d: Dice, z0: float, z1: float) -> Rows:
        rows: Rows = {}
        for _ in range(d.poisson(density * (z1 - z0) / 40)):
            _add(rows, "people", d.u(z0, z1), offset + side * d.u(-0.3, 0.3), L_NEAR,
                 _person(d, 1 if walk > 0 else 0, abs(walk)), y=lay.kerb)
        return rows

    return sample


def cyclists(lay: Layout) -> Sampler:
    """Cyclists riding away along the right edge of the road."""
    offset = lay.lanes[1] * lay.lane_w - 0.8

    def sample(d: Dice, z0: float, z1: float) -> Rows:
        rows: Rows = {}
        for _ in range(d.poisson((z1 - z0) / 250)):
            _add(rows, "people", d.u(z0, z1), offset, L_NEAR, _rider(d, False, False))
        return rows

    return sample
