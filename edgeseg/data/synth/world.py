"""A persistent street world, and the part of it in view as a mesh.

A `World` is a road layout plus streams of things (see `scene`): the static
street and one moving stream per traffic lane and sidewalk direction. Each
stream is cut into blocks along its own moving frame, and each block is
sampled from an RNG seeded by (seed, purpose, scene index, stream, block), so
any stretch of a world can be regenerated on demand, identically, at any time
``t``: a single frame is ``t = 0`` and a video just advances ``t``. Things in
one stream share its speed, so traffic never collides and nothing pops in or
out of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeseg.data.synth import objects as ob
from edgeseg.data.synth.camera import Camera
from edgeseg.data.synth.mesh import (
    L_GROUND,
    L_MARKING,
    L_SKY,
    L_STREET,
    Mesh,
    MeshBuilder,
    attrs,
)
from edgeseg.data.synth.scene import (
    Batch,
    Dice,
    Rows,
    Sampler,
    Street,
    cyclists,
    sample_layout,
    traffic,
    walkers,
    with_parameters,
)
from edgeseg.data.synth.textures import Mat

FAR = 200.0       # draw distance (m) of the street and its structures
DETAIL = 90.0     # draw distance of small things (people, signs, parked cars)
TRAFFIC = 160.0   # draw distance of traffic
BEHIND = 12.0     # things this far behind the camera may still reach into view
SKY_DEPTH = 5000.0
GROUND_STEPS = 6  # points along each side of a ground strip (up to 40 m)
PURPOSES = {"scene": 0, "pair": 1, "video": 2}


@dataclass(frozen=True)
class Stream:
    """Things moving together at ``speed``, sampled per ``block`` metres, drawn to ``reach``."""

    speed: float
    block: float
    reach: float
    sample: Sampler


def _grounds(b: MeshBuilder, xz: np.ndarray, layer: object, label: object, colour: object,
             material: object, gy: object) -> None:
    """Ground polygons (P, K, 2) in world xz (see `objects.emit_grounds`); the other
    columns are per polygon or constant."""
    n = len(xz)
    columns = {"xz": xz, "label": np.broadcast_to(label, n),
               "colour": np.broadcast_to(colour, (n, 3)),
               "material": np.broadcast_to(material, n), "gy": np.broadcast_to(gy, n)}
    ob.emit_grounds(b, b.objects(0.0, 0.0, 0.0, 0.0, np.broadcast_to(layer, n)), Batch(columns),
                    0.0)


class World:
    """A persistent street world; see the module docstring."""

    def __init__(self, seed: int, purpose: str, index: int) -> None:
        if seed < 0 or index < 0:
            raise ValueError(f"seed and scene index must be >= 0, got {seed} and {index}")
        self.key = (int(seed), PURPOSES[purpose], int(index))
        d = Dice(*self.key)
        self.layout = lay = sample_layout(d)
        street = Street(lay, d)
        density = d.u(0.4, 1.3)
        streams = [Stream(0.0, 80.0, FAR, street.structures),
                   Stream(0.0, 80.0, DETAIL, street.furniture)]
        for side in (-1, 1):
            for lane in range(lay.lanes[(side + 1) // 2]):
                ego = side > 0 and lane == lay.cam_lane
                speed = lay.speed if ego else side * lay.speed * d.u(0.55, 1.0)
                streams.append(Stream(speed, 160.0, TRAFFIC, traffic(lay, side, lane, ego, density)))
            crowd = d.u(0.2, 2.0)
            for share, walk in ((0.35, 1.3), (0.7, -1.25)):
                streams.append(Stream(walk, 120.0, DETAIL, walkers(lay, side, share, walk, crowd)))
        streams.append(Stream(4.5, 160.0, DETAIL, cyclists(lay)))
        self.streams = streams
        self._blocks: dict[tuple[int, int], Rows] = {}

    def camera(self, width: int, height: int, t: float = 0.0) -> Camera:
        """The ego camera at time ``t``: in its lane, looking along the road."""
        lay = self.layout
        z = lay.speed * t
        return Camera(
            width=width, height=height, focal=lay.focal * width, cx=(width - 1) / 2,
            cy=lay.horizon * height, x=float(lay.center(z)) + (lay.cam_lane + 0.5) * lay.lane_w,
            y=lay.cam_height, z=z, yaw=float(lay.tangent(z)) + lay.yaw)

    def _block(self, stream: int, block: int) -> Rows:
        key = (stream, block)
        if key not in self._blocks:
            dice = Dice(*self.key, stream, block + (1 << 24))
            size = self.streams[stream].block
            self._blocks[key] = self.streams[stream].sample(dice, block * size, (block + 1) * size)
        return self._blocks[key]

    def visible(self, cam: Camera, t: float) -> dict[str, tuple[Batch, np.ndarray]]:
        """Per kind, the things that may be in view at time ``t`` and their world z."""
        found: dict[str, tuple[list[dict], list[float]]] = {}
        used = {}
        for s, stream in enumerate(self.streams):
            shift = stream.speed * t
            z_lo, z_hi = cam.z - BEHIND, cam.z + stream.reach
            first = math.floor((z_lo - shift - 20) / stream.block)
            last = math.floor((z_hi - shift + 20) / stream.block)
            for block in range(first, last + 1):
                used[(s, block)] = blocks = self._block(s, block)
                for kind, rows in blocks.items():
                    keep, zs = found.setdefault(kind, ([], []))
                    for row in rows:
                        z = row["z"] + shift
                        if z + row["extent"] >= z_lo and z - row["extent"] <= z_hi:
                            keep.append(row)
                            zs.append(z)
        self._blocks = used  # keep only what this frame needed
        return {kind: (with_parameters(kind, Batch.from_rows(rows)), np.array(zs))
                for kind, (rows, zs) in found.items() if rows}

    def mesh(self, cam: Camera, t: float = 0.0) -> Mesh:
        """Everything in view at time ``t`` as seen from ``cam``, sky first."""
        b = MeshBuilder(cam)
        self._sky(b, cam)
        self._street(b, cam)
        lay = self.layout
        for kind, (batch, z) in self.visible(cam, t).items():
            emit, anchor = ob.EMITTERS[kind]
            if anchor == "world":  # ground strips: world xz outlines from their bands
                batch.columns["xz"] = lay.bands(*batch["band"].T, GROUND_STEPS)
                obj = b.objects(0.0, 0.0, 0.0, 0.0, batch["layer"])
            else:
                walked = np.clip(batch["drift"] * t, -batch["stop"], batch["stop"])
                x = lay.center(z) + batch["offset"] + walked
                heading = cam.yaw if anchor == "billboard" else lay.tangent(z) + batch["heading"]
                obj = b.objects(x, batch["y"], z, heading, batch["layer"])
            emit(b, obj, batch, t)
        return b.build()

    @staticmethod
    def _sky(b: MeshBuilder, cam: Camera) -> None:
        """A camera-facing quad far away that covers the whole view (polygon 0)."""
        obj = b.objects(cam.x, cam.y, cam.z, cam.yaw, L_SKY)
        w = SKY_DEPTH * cam.width / cam.focal
        h = SKY_DEPTH * cam.height / cam.focal
        verts = np.array([[[-w, -h, SKY_DEPTH], [w, -h, SKY_DEPTH], [w, h, SKY_DEPTH],
                           [-w, h, SKY_DEPTH]]])
        frame = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0], [0, 0, SKY_DEPTH]], float)
        b.polys(obj, verts, frame, attrs(1, ob.SKY, Mat.SKY, (1.0, 1.0, 1.0)))

    def _street(self, b: MeshBuilder, cam: Camera) -> None:
        """The ground, road, curbs, sidewalks and lane markings around the camera."""
        lay = self.layout
        col = lay.colours
        z0, z1 = cam.z - BEHIND, cam.z + FAR
        # strips along the whole stretch (15 m steps): (from, to, layer, label, colour,
        # material, height)
        strips = []
        for side in (-1, 1):
            edge = lay.road_edge(side)
            strips += [(edge + side * lay.curb, lay.walk_edge(side), L_STREET, ob.SIDEWALK,
                        col["walk"], Mat.PAVING, lay.kerb),
                       (edge, edge + side * lay.curb, L_STREET, ob.SIDEWALK, col["curb"],
                        Mat.CONCRETE, lay.kerb)]
        strips.append((lay.road_edge(-1), lay.road_edge(1), L_STREET, ob.ROAD, col["road"],
                       Mat.ASPHALT, 0.0))
        lines = self._lines()
        strips += [(offset - 0.07, offset + 0.07, L_MARKING, ob.ROAD, colour, Mat.MARKING, 0.0)
                   for offset, colour, dashed in lines if not dashed]
        o0, o1, *rest = (np.array(c) for c in zip(*strips))
        _grounds(b, lay.bands(o0, o1, z0, z1, int((z1 - z0) / 15) + 1), *rest)
        # quads: the terrain all around, then dashes 4 m long every 12 m
        big = 3000.0
        quads = [np.array([[[cam.x - big, z0], [cam.x + big, z0], [cam.x + big, cam.z + big],
                            [cam.x - big, cam.z + big]]])]
        parts = [(1, L_GROUND, ob.TERRAIN, col["grass"], Mat.GRASS)]  # (count, ...)
        dashed = [(offset, colour) for offset, colour, dashed in lines if dashed]
        if dashed:
            starts = np.arange(math.floor(z0 / 12) * 12, cam.z + 110, 12)
            offset = np.repeat([o for o, _ in dashed], len(starts))
            za = np.tile(starts, len(dashed))
            quads.append(lay.bands(offset - 0.07, offset + 0.07, za, za + 4.0, 2))
            parts += [(len(starts), L_MARKING, ob.ROAD, colour, Mat.MARKING)
                      for _, colour in dashed]
        counts = [part[0] for part in parts]
        layer, label, colour, material = (np.repeat(np.array(c), counts, 0)
                                          for c in list(zip(*parts))[1:])
        _grounds(b, np.concatenate(quads), layer, label, colour, material, 0.0)
        self._curb_faces(b, cam)

    def _lines(self) -> list[tuple[float, tuple[float, float, float], bool]]:
        """Lane lines: (offset, colour, dashed): centre, lane separators, edge lines."""
        lay = self.layout
        col = lay.colours
        lines = []
        if lay.lanes[0]:
            if col["centre"][2] < 0.5:  # yellow: a double solid line
                lines += [(-0.12, col["centre"], False), (0.12, col["centre"], False)]
            else:
                lines.append((0.0, col["centre"], True))
        for side in (-1, 1):
            n = lay.lanes[(side + 1) // 2]
            lines += [(side * k * lay.lane_w, col["marking"], True) for k in range(1, n)]
            if n:
                lines.append((side * (n * lay.lane_w - 0.2), col["marking"], False))
        return lines

    def _curb_faces(self, b: MeshBuilder, cam: Camera) -> None:
        """The vertical faces of the curbs, facing the road (planar enough near the camera)."""
        lay = self.layout
        zs = np.linspace(cam.z - BEHIND, cam.z + FAR, 30)
        ref = cam.z + 8.0
        theta = float(lay.tangent(ref))
        c, s = math.cos(theta), math.sin(theta)
        edges = np.array([lay.road_edge(-1), lay.road_edge(1)])
        verts = np.empty((2, 60, 3))
        verts[:, :30, 0] = lay.center(zs) + edges[:, None]
        verts[:, 30:, 0] = verts[:, 29::-1, 0]
        verts[:, :30, 1] = 0.0
        verts[:, 30:, 1] = lay.kerb
        verts[:, :30, 2] = zs
        verts[:, 30:, 2] = zs[::-1]
        # normals towards the road: the left curb's faces +x, the right one's -x
        frames = np.array([[(sign * c, 0.0, -sign * s), (s, 0.0, c), (0, -1, 0),
                            (float(lay.center(ref)) + edge, lay.kerb, ref)]
                           for sign, edge in zip((1, -1), edges.tolist())])
        obj = b.objects(0.0, 0.0, 0.0, 0.0, np.full(2, L_STREET))
        b.polys(obj, verts, frames, attrs(2, ob.SIDEWALK, Mat.CONCRETE, lay.colours["curb"]))
