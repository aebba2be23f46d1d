"""Sampling streets: the road layout and the things along it, as parameter columns.

Things come in *streams* that move together (the static street, each traffic
lane, each sidewalk direction). A stream is sampled in blocks along its own
moving frame; a block is a dict ``kind -> Batch`` of parameter columns that
the vectorised emitters in `objects` draw. `world.World` seeds one RNG per
block, so any stretch of a world can be regenerated identically on demand.
Every row has the placement columns z (along the stream), offset (metres right
of the road centre line), y, extent (half length, for range tests), heading
(added to the road direction), drift/stop (sideways walking) and layer.
"""

from __future__ import annotations

import bisect
import colorsys
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeseg.data.synth import objects as ob
from edgeseg.data.synth.mesh import L_FAR, L_LINE, L_MARKING, L_NEAR, L_OUTER, L_PROPERTY
from edgeseg.data.synth.textures import Mat

Colour = tuple[float, float, float]
Rows = dict[str, list[dict[str, Any]]]


class Dice:
    """Scalar random draws from a buffered `np.random.Generator` (a block makes
    hundreds of draws; one numpy call each would dominate the frame time)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf: list[float] = []

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if not self._buf:
            self._buf = self._rng.random(256).tolist()
        return lo + (hi - lo) * self._buf.pop()

    def chance(self, p: float) -> bool:
        return self.u() < p

    def index(self, n: int) -> int:
        return min(int(self.u() * n), n - 1)

    def choose(self, options: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
        if weights is None:
            return options[self.index(len(options))]
        cum = list(itertools.accumulate(weights))
        return options[min(bisect.bisect(cum, self.u(0, cum[-1])), len(options) - 1)]

    def poisson(self, lam: float) -> int:
        """Knuth's method (``lam`` is small here)."""
        limit, k, p = math.exp(-lam), 0, self.u()
        while p > limit:
            k += 1
            p *= self.u()
        return k


@functools.cache
def _dtype(fields: tuple[tuple[str, tuple[int, ...]], ...]) -> np.dtype:
    return np.dtype([(name, object) if name == "xz" else (name, float, shape)
                     for name, shape in fields])


class Batch:
    """Parameter columns of one kind of thing (a structured array: numpy parses the
    rows' scalars, tuples and nested lists in one call)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> Batch:
        dtype = _dtype(tuple((k, () if k == "xz" else np.shape(v)) for k, v in rows[0].items()))
        names = dtype.names
        return cls(np.array([tuple(row[k] for k in names) for row in rows], dtype))

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.table[key]


def _add(rows: Rows, kind: str, z: float, offset: float, layer: int, p: dict[str, Any],
         y: float = 0.0, extent: float = 3.0, heading: float = 0.0, drift: float = 0.0,
         stop: float = 0.0) -> None:
    rows.setdefault(kind, []).append(
        {"z": z, "offset": offset, "y": y, "extent": extent, "heading": heading, "drift": drift,
         "stop": stop, "layer": layer, **p})


# --- colours -----------------------------------------------------------------------

_TINTS = [(math.cos(a), math.cos(a - 2.094), math.cos(a + 2.094))
          for a in np.linspace(0, 2 * math.pi, 64, endpoint=False)]


def _jitter(d: Dice, colour: Colour, amount: float = 0.05) -> Colour:
    """A colour varied in brightness and, by up to ``amount``, in hue."""
    scale = d.u(0.85, 1.15)
    tint = _TINTS[d.index(len(_TINTS))]
    r, g, b = (min(max(c * scale + amount * t, 0.0), 1.0) for c, t in zip(colour, tint))
    return (r, g, b)


def _pick(d: Dice, palette: Sequence[Colour], amount: float = 0.04) -> Colour:
    return _jitter(d, d.choose(palette), amount)


def _hsv(d: Dice, sat: tuple[float, float], val: tuple[float, float]) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(d.u(), d.u(*sat), d.u(*val))
    return (r, g, b)


_CAR_PAINT = [(0.88, 0.88, 0.88), (0.07, 0.07, 0.08), (0.6, 0.62, 0.65), (0.33, 0.34, 0.36),
              (0.1, 0.14, 0.32), (0.55, 0.07, 0.06), (0.2, 0.34, 0.6), (0.7, 0.64, 0.52),
              (0.85, 0.68, 0.12), (0.15, 0.3, 0.2)]
_CAR_WEIGHTS = [22, 18, 18, 14, 7, 7, 6, 3, 2, 3]
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

    def band(self, o0: float, o1: float, z0: float, z1: float, step: float = 8.0) -> np.ndarray:
        """World xz outline of the band between road offsets o0 and o1 over z0..z1."""
        n = max(2, int((z1 - z0) / step) + 1)
        w = 2 * math.pi / self.period
        zs = [z0 + (z1 - z0) * i / (n - 1) for i in range(n)]
        xs = [self.amp * math.sin(w * z + self.phase) for z in zs]
        return np.array([(x + o0, z) for x, z in zip(xs, zs)]
                        + [(x + o1, z) for x, z in zip(xs[::-1], zs[::-1])])


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


# --- parameters of one thing ---------------------------------------------------------

def _person(d: Dice, view: int, walk: float) -> dict[str, Any]:
    """view: 0 front, 1 back, 2 side."""
    bag = d.chance(0.3)
    return {
        "height": d.u(1.1, 1.35) if d.chance(0.06) else d.u(1.55, 1.95),
        "view": view, "facing": d.choose([-1.0, 1.0]), "walk": walk, "phase": d.u(0, 2 * math.pi),
        "skin": _pick(d, _SKIN, 0.02), "hair": _pick(d, _HAIR, 0.03),
        "top": _hsv(d, (0.05, 0.8), (0.1, 0.85)), "legs": _hsv(d, (0.0, 0.5), (0.08, 0.55)),
        "bag": _hsv(d, (0.0, 0.6), (0.1, 0.6)), "has_bag": bag,
    }


def _rider(d: Dice, moto: bool, front: bool) -> dict[str, Any]:
    p = _person(d, 0 if front else 1, 0.0)
    p.update(height=d.u(1.6, 1.9), moto=moto, front=front, lit=True,
             frame=_hsv(d, (0.2, 0.9), (0.15, 0.8)))
    return p


_BLOBS = 6


def _tree(d: Dice, size: float) -> dict[str, Any]:
    conifer = d.chance(0.15)
    radius = size * d.u(1.5, 3.2)
    count = 3 + d.index(_BLOBS - 3)
    blobs = [[d.u(-0.6, 0.6) * radius, d.u(0.4, 1.6) * radius, radius * d.u(0.55, 0.9),
              radius * d.u(0.5, 0.85) * (2.0 if conifer else 1.0), d.u(0.75, 1.15)]
             if i < count else [0.0] * 5 for i in range(_BLOBS)]
    return {
        "trunk": size * d.u(1.8, 3.2), "width": size * d.u(0.18, 0.35),
        "bark": _jitter(d, (0.3, 0.24, 0.18), 0.04),
        "leaf": _pick(d, _LEAF[:3] if conifer else _LEAF, 0.04),  # no autumn for conifers
        "blobs": blobs, "conifer": conifer, "tex": d.u(0.6, 1.4),
    }


def _vehicle(d: Dice, lit: bool) -> dict[str, Any]:
    """A car (sedan, hatchback, SUV), van, bus or truck; see `objects.emit_vehicles`."""
    kind = d.choose(["car", "van", "bus", "truck"], [84, 6, 5, 5])
    p = {"label": ob.CAR, "inset": 0.0, "a0": 0.0, "a1": 1.0, "win_back": 1.0, "car": 0.0,
         "cargo": 0.0, "glass": _jitter(d, (0.12, 0.15, 0.2), 0.03), "lit": lit,
         "brake": d.chance(0.2)}
    if kind == "car":
        suv = d.chance(0.25)
        h = d.u(1.65, 1.85) if suv else d.u(1.38, 1.55)
        a0, a1 = (0.08, 0.74) if suv else d.choose([(0.2, 0.7), (0.1, 0.68)])
        p.update(width=d.u(1.65, 1.95), length=d.u(4.3, 4.9) if suv else d.u(3.7, 4.8),
                 clear=0.2, belt=h * d.u(0.5, 0.58), top=h, inset=0.1, a0=a0, a1=a1, car=1.0,
                 colour=_jitter(d, d.choose(_CAR_PAINT, _CAR_WEIGHTS), 0.03))
    elif kind == "van":  # a car in Cityscapes
        p.update(width=1.95, length=d.u(4.8, 5.6), clear=0.25, belt=1.0, top=d.u(1.95, 2.5),
                 inset=0.02, colour=_jitter(d, d.choose(_CAR_PAINT[:4]), 0.03))
    elif kind == "bus":
        p.update(label=ob.BUS, width=2.5, length=d.u(10, 12), clear=0.35, belt=1.0,
                 top=d.u(2.9, 3.2), colour=_pick(d, _BUS_PAINT))
    else:  # a cab in front of a cargo box
        p.update(label=ob.TRUCK, width=2.4, length=d.u(7, 9), clear=0.4, belt=1.3, top=2.9,
                 a0=0.76, win_back=0.0, cargo=d.u(3.2, 3.7), colour=_hsv(d, (0.0, 0.7), (0.3, 0.95)))
    return p


def _ground(rows: Rows, xz: np.ndarray, label: int, colour: Colour, material: Mat, gy: float,
            z: float, layer: int, extent: float) -> None:
    _add(rows, "grounds", z, 0.0, layer,
         {"xz": xz, "gy": gy, "label": label, "colour": colour, "material": material},
         extent=extent)


# --- samplers ------------------------------------------------------------------------

class Street:
    """The static street: `structures` (zones beside the sidewalks, lamps, the skyline),
    drawn far, and `furniture` (signs, sidewalk trees, people standing, parked
    vehicles, crossings), drawn near: two samplers, so far blocks skip small stuff."""

    def __init__(self, lay: Layout, d: Dice) -> None:
        self.lay = lay
        # buildings, park, fence, wall, hedge
        self.zone_w = [6 * d.u(0.3, 1.7), 2 * d.u(0.3, 1.7), d.u(0.3, 1.7), d.u(0.3, 1.7),
                       d.u(0.3, 1.7)]
        self.lamp_spacing = d.u(18, 35)
        self.lamp_phase = d.u(0, self.lamp_spacing)
        self.lamp_sides = d.choose([(-1, 1), (1,), (-1,)], [6, 3, 1])
        self.lamp_glow = _LAMP_GLOW["sodium" if d.chance(0.6) else "led"]
        self.tree_spacing = d.u(9, 18) if d.chance(0.5) else 0.0
        self.tall = d.u(0.5, 1.5)
        self.crowd = d.u(0.3, 2.0)

    def structures(self, d: Dice, z0: float, z1: float) -> Rows:
        rows: Rows = {}
        for side in (-1, 1):
            z = z0
            while z < z1 - 1:
                zone = d.choose(["buildings", "park", "fence", "wall", "hedge"], self.zone_w)
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
        _ground(rows, lay.band(edge, edge + side * 45, za, zb),
                ob.SIDEWALK if paved else ob.TERRAIN,
                lay.colours["walk"] if paved else _jitter(d, lay.colours["grass"], 0.03),
                Mat.PAVING if paved else Mat.GRASS, lay.kerb, mid, L_PROPERTY, half)
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
            material = d.choose([Mat.PLASTER, Mat.BRICK, Mat.GLASS], [55, 30, 15])
            colour = _pick(d, _FACADES[material], 0.04)
            floor_h = d.u(2.9, 3.8)
            floors = max(2, int(d.u(2, 9) * self.tall))
            _add(rows, "buildings", z + length / 2, line, layer, {
                "side": side, "length": length, "depth": d.u(10, 20),
                "height": floors * floor_h + d.u(0.3, 1.5), "material": material,
                "colour": colour, "glass": _pick(d, _GLASS, 0.03), "lit": d.u(0.1, 0.6),
                "cell": (d.u(2.4, 4.2), floor_h), "trim": _jitter(d, colour, 0.08),
                "shop": _hsv(d, (0, 0.7), (0.2, 0.9)), "has_shop": d.chance(0.4),
            }, extent=length / 2)
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
            shape = d.choose(_SIGN_SHAPES, [40, 20, 25, 5, 10])
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
                if p["label"] == ob.CAR:
                    flip = d.chance(0.85 if side < 0 else 0.1)
                    _add(rows, "vehicles", z + length / 2, lay.road_edge(side) - side * park / 2,
                         L_NEAR, p, extent=length / 2, heading=math.pi if flip else 0.0)
            z += length + d.u(0.8, 2.5)

    def _backdrop(self, d: Dice, rows: Rows, side: int, z0: float, z1: float) -> None:
        """Tall buildings and big trees far behind the street: the skyline."""
        edge = self.lay.walk_edge(side)
        for _ in range(d.index(3)):
            length = d.u(15, 40)
            floor_h = d.u(3, 3.6)
            _add(rows, "buildings", d.u(z0, z1), edge + side * d.u(30, 90), L_FAR, {
                "side": side, "length": length, "depth": 20.0,
                "height": floor_h * (4 + d.index(12)),
                "material": d.choose([Mat.PLASTER, Mat.GLASS, Mat.BRICK], [5, 3, 2]),
                "colour": _jitter(d, (0.65, 0.65, 0.66), 0.1), "glass": _pick(d, _GLASS),
                "lit": d.u(0.1, 0.5), "cell": (d.u(2.5, 4), floor_h), "trim": (0.6, 0.6, 0.6),
                "shop": (0.0, 0.0, 0.0), "has_shop": False}, extent=length / 2)
        if d.chance(0.3):
            _add(rows, "trees", d.u(z0, z1), edge + side * d.u(25, 60), L_FAR,
                 _tree(d, d.u(2.0, 3.5)), y=self.lay.kerb)

    def _crossing(self, d: Dice, rows: Rows, z: float) -> None:
        """A zebra crossing with signals on both sides and people walking over it."""
        lay = self.lay
        left, right = lay.road_edge(-1), lay.road_edge(1)
        for x in np.arange(left + 0.5, right - 0.5, 1.0):
            xz = np.array([[x, z - 1.5], [x + 0.5, z - 1.5], [x + 0.5, z + 1.5], [x, z + 1.5]])
            xz[:, 0] += lay.center(xz[:, 1])
            _ground(rows, xz, ob.ROAD, lay.colours["marking"], Mat.MARKING, 0.0, z, L_MARKING, 1.5)
        state = d.index(3)
        for side in (-1, 1):
            arm = -side * d.u(3, 6) if side > 0 and d.chance(0.5) else 0.0
            _add(rows, "signals", z - 2.5, lay.road_edge(side) + side * (lay.curb + 0.4), L_NEAR,
                 {"height": d.u(2.4, 3.2) + (2.5 if arm else 0.0), "arm": arm, "state": state,
                  "facing": side > 0, "colour": _jitter(d, (0.3, 0.3, 0.32))}, y=lay.kerb)
        for _ in range(d.index(4)):
            start = d.u(left, right)
            direction = d.choose([-1.0, 1.0])
            p = _person(d, 2, 1.2)
            p["facing"] = direction
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
                _add(rows, "riders", z, offset, L_NEAR, _rider(d, True, side < 0))
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
            _add(rows, "riders", d.u(z0, z1), offset, L_NEAR, _rider(d, False, False))
        return rows

    return sample
