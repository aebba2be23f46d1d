"""Geometry of the things in a street, one kind at a time, vectorised over a batch.

Every ``emit_*`` function draws N objects already opened with
`MeshBuilder.objects` (indices ``obj``) from their parameter columns ``p``
(sampled in `scene`) at time ``t`` (seconds; animates walking and pedalling).
Parts are added back to front, so the painter's order inside an object is the
order of the calls. Class ids are Cityscapes-19 trainIds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from edgeseg.data.synth.mesh import (
    A_B,
    A_EB,
    A_ER,
    A_GB,
    A_GR,
    A_LABEL,
    A_LIT,
    A_MAT,
    A_OBJ,
    A_R,
    A_SU,
    A_SV,
    A_WRAP,
    BACK,
    BILLBOARD,
    FRONT,
    LEFT,
    RIGHT,
    UP,
    MeshBuilder,
    arc,
    attrs,
    billboard,
    boxes,
    col,
    ellipses,
    on_face,
    rects,
    strokes,
)
from edgeseg.data.synth.textures import TILE, Mat

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON,
 RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)

Params = Mapping[str, np.ndarray]

_OFF = (0.0, 0.0, 0.0)
_TYRE = (0.05, 0.05, 0.055)
_RIM = (0.55, 0.55, 0.57)
_DARK = (0.09, 0.09, 0.1)
_PLATE = (0.85, 0.85, 0.8)
_TAIL = (0.65, 0.04, 0.03)
_TAIL_GLOW = np.array([1.6, 0.12, 0.05])
_HEAD = (0.9, 0.9, 0.85)
_HEAD_GLOW = np.array([2.0, 1.9, 1.6])
_SIGNAL = np.array([(0.9, 0.1, 0.05), (0.95, 0.65, 0.05), (0.1, 0.85, 0.4)])
_FACADE_DENSITY = 40.0  # textures.DENSITY of facade materials


def _column(value: object, n: int, reps: int) -> object:
    """An attribute of ``reps`` parts of ``n`` objects each: a constant (scalar or
    tuple), a per-object array (first axis n, repeated per part) or a list with one
    of those per part."""
    if isinstance(value, list):
        first = value[0]
        trailing = first.shape[1:] if _per_object(first, n) else np.shape(first)
        out = np.empty((reps * n, *trailing))
        for i, v in enumerate(value):
            out[i * n:(i + 1) * n] = v
        return out
    if _per_object(value, n):
        return np.concatenate([value] * reps)  # type: ignore[list-item]
    return value


_DEFAULT_ATTRS = attrs(1, 0, 0, 0.0)[0]
_DEFAULT_ATTRS[A_OBJ] = 0
#: keyword -> attribute column(s), see `mesh.attrs`
_ATTR_COLUMNS = {"label": A_LABEL, "material": A_MAT, "colour": slice(A_R, A_B + 1),
                 "emission": slice(A_ER, A_EB + 1), "glass": slice(A_GR, A_GB + 1),
                 "lit": A_LIT, "wrap": A_WRAP, "scale": slice(A_SU, A_SV + 1)}


def _per_object(value: object, n: int) -> bool:
    return isinstance(value, np.ndarray) and value.ndim > 0 and len(value) == n


def _add(b: MeshBuilder, obj: np.ndarray, shapes: list[np.ndarray] | np.ndarray, label: object,
         material: object, colour: object,
         frames: np.ndarray | list[np.ndarray] | None = None, **kw: object) -> None:
    """Add one part per object for each (N, K, 2|3) array in ``shapes`` (same K), or
    for each of the R parts of a stacked (R, N, K, 2|3) array.

    2-D shapes are billboard outlines; 3-D ones lie on per-object ``frames``
    (N, 4, 3), a list of those, one per shape, or a stacked (R, N, 4, 3) array.
    Every attribute is a constant, a per-object array or a list with one of those
    per shape (see `mesh.attrs`).
    """
    n = len(obj)
    if n == 0:
        return
    if isinstance(shapes, np.ndarray):
        reps = len(shapes)
        verts = shapes.reshape(reps * n, *shapes.shape[2:])
    else:
        reps = len(shapes)
        verts = shapes[0] if reps == 1 else np.concatenate(shapes)
    if verts.shape[-1] == 2:
        verts = billboard(verts)
    if frames is None:
        frames = BILLBOARD
    elif isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = frames.reshape(-1, 4, 3)
    else:
        frames = _column(frames, n, reps)  # type: ignore[assignment]
    # attributes of all parts at once, (reps, n, 16): values broadcast over parts
    table = np.empty((reps, n, 16))
    table[:] = _DEFAULT_ATTRS
    table[:, :, A_OBJ] = obj
    for name, value in (("label", label), ("material", material), ("colour", colour),
                        *kw.items()):
        at = _ATTR_COLUMNS[name]
        if isinstance(value, list):
            for i, v in enumerate(value):
                table[i, :, at] = v
        else:
            table[:, :, at] = value
    b.polys(None, verts, frames, table.reshape(reps * n, 16))  # type: ignore[arg-type]


def _box(b: MeshBuilder, obj: np.ndarray, lo: np.ndarray, hi: np.ndarray, label: object,
         material: object, colour: object, faces: int = 5, **kw: object) -> np.ndarray:
    """Add the first ``faces`` faces (back, front, left, right, top) of boxes; returns
    their frames (N, 5, 4, 3)."""
    verts, frames = boxes(lo, hi)
    _add(b, obj, verts[:, :faces].swapaxes(0, 1), label, material, colour,
         frames[:, :faces].swapaxes(0, 1), **kw)
    return frames


def _face_rects(frames: np.ndarray, a0: list[object], b0: list[object], a1: list[object],
                b1: list[object]) -> np.ndarray:
    """Rectangles in face coordinates (metres along u, down v; one scalar or (N,) value
    per part) on per-part face ``frames`` (R, N, 4, 3) -> (R, N, 4, 3) local points."""
    r, n = frames.shape[:2]
    ab = np.empty((4, r, n))
    for i, values in enumerate((a0, b0, a1, b1)):
        for k, v in enumerate(values):
            ab[i, k] = v
    return on_face(frames.reshape(r * n, 4, 3),
                   rects(ab[0], ab[1], ab[2], ab[3]).reshape(r * n, 4, 2)).reshape(r, n, 4, 3)


# --- vehicles ----------------------------------------------------------------------

def emit_vehicles(b: MeshBuilder, obj: np.ndarray, p: Params, t: float) -> None:
    """Cars, vans, buses and trucks: a body box with wheels, lights and plates, a glazed
    upper box (cabin, cab or window band) and, for trucks, a cargo box.

    Columns: label, width, length, clear, belt, inset, top, a0, a1 (upper box z
    range as shares of the length), win_back, car, cargo (cargo top, 0 = none),
    colour, glass, lit, brake.
    """
    w, length, label, colour = p["width"], p["length"], p["label"], p["colour"]
    clear, belt, top, inset = p["clear"], p["belt"], p["top"], p["inset"]
    hw, hl = w / 2, length / 2
    z0, z1 = (p["a0"] - 0.5) * length, (p["a1"] - 0.5) * length
    body = _box(b, obj, col(-hw, clear, -hl), col(hw, belt, hl), label, Mat.PAINT, colour,
                wrap=0.2)
    upper = _box(b, obj, col(inset - hw, belt, z0), col(hw - inset, top, z1), label, Mat.PAINT,
                 colour, wrap=0.2)
    cargo = p["cargo"] > 0
    _box(b, obj[cargo], col(-hw, belt, -hl)[cargo], col(hw, p["cargo"], 0.73 * length - hl)[cargo],
         label[cargo], Mat.PAINT, colour[cargo], wrap=0.2)

    # rectangles on the faces, in face coordinates (metres along, metres down)
    tall, up = belt - clear, top - belt
    lamp_h = np.minimum(0.15, 0.3 * tall)
    lit = p["lit"][:, None]
    back, front = body[:, BACK], body[:, FRONT]
    parts = [  # (frame, a0, b0, a1, b1, colour, emission)
        (back, 0.1, tall - 0.1, w - 0.1, tall, _DARK, _OFF),
        (back, hw - 0.25, 0.42 * tall, hw + 0.25, 0.42 * tall + 0.11, _PLATE, _OFF),
        (front, hw - 0.4, 0.1, hw + 0.4, 0.1 + 0.4 * tall, _DARK, _OFF),
    ]
    for frame, lamp, glow in ((back, _TAIL, _TAIL_GLOW * lit * (1 + p["brake"][:, None])),
                              (front, _HEAD, _HEAD_GLOW * lit)):
        for a0 in (0.06, w - 0.32):
            parts.append((frame, a0, 0.08, a0 + 0.26, 0.08 + lamp_h, lamp, glow))
        for a0 in (0.1, w - 0.32):
            parts.append((frame, a0, tall, a0 + 0.22, belt, _TYRE, _OFF))
    bottom = np.where(p["car"] > 0, up - 0.08, 0.7 * up)
    pillar = np.where(p["car"] > 0, 0.05, 0.0)  # the B pillar of cars
    for face, span, on in ((BACK, w - 2 * inset, p["win_back"]), (FRONT, w - 2 * inset, 1.0),
                           (LEFT, z1 - z0, 1.0), (RIGHT, z1 - z0, 1.0)):
        parts.append((upper[:, face], 0.1, 0.07, np.where(on > 0, span - 0.1, 0.1), bottom,
                      p["glass"], _OFF))
        if face in (LEFT, RIGHT):
            parts.append((upper[:, face], 0.52 * span - pillar, 0.0, 0.52 * span + pillar,
                          bottom, colour, _OFF))
    frames = np.stack([f for f, *_ in parts])
    quads = _face_rects(frames, *([part[i] for part in parts] for i in range(1, 5)))
    _add(b, obj, quads, label, Mat.FLAT, [c for *_, c, _ in parts], frames,
         emission=[e for *_, e in parts])
    radius = np.minimum(np.where(label == CAR, 0.33, 0.5), belt * 0.6)
    sides = np.stack([body[:, LEFT], body[:, LEFT], body[:, RIGHT], body[:, RIGHT]])
    along = np.stack([0.17 * length + 0.25, 0.83 * length - 0.25] * 2)  # (4 wheels, N)
    on_sides = sides.reshape(-1, 4, 3)
    for k, scale, colour_ in ((12, 1.0, _TYRE), (8, 0.55, _RIM)):
        disc = ellipses(along, belt - radius, scale * radius, scale * radius, k)
        wheels = on_face(on_sides, disc.reshape(-1, k, 2)).reshape(4, -1, k, 3)
        _add(b, obj, wheels, label, Mat.FLAT, colour_, sides)
    b.casters(obj, -hw, -hl, hw, hl, 0.0, np.maximum(top, p["cargo"]))
    b.blobs(obj, -hw - 0.15, -hl - 0.1, hw + 0.15, hl + 0.1)
    on = p["lit"] > 0
    b.lights(obj[on], col(0.0, 0.65, hl[on] + 0.3), (0.5, 0.48, 0.42), (0.0, -0.08, 1.0), 10.0,
             8.0)


# --- people ------------------------------------------------------------------------

_CAP = arc(9, 0.0, np.pi, endpoint=True)  # hair above the face


def _figure(b: MeshBuilder, obj: np.ndarray, p: Params, label: object, hip: np.ndarray,
            knees: np.ndarray, feet: np.ndarray, hands: np.ndarray, lean: np.ndarray) -> None:
    """Human figures posed by hip (N, 2), knees, feet and hands (N, 2 sides, 2).

    Columns: height, view (0 front, 1 back, 2 side), skin, hair, top, legs, bag, has_bag.
    """
    h = p["height"]
    side = p["view"] == 2
    hx, hy = hip[:, 0], hip[:, 1]
    sx, sy = hx + lean * h, hy + 0.29 * h
    half = np.where(side, 0.075, 0.125) * h
    legs_x = [np.where(side, hx, hx - 0.055 * h), np.where(side, hx, hx + 0.055 * h)]
    arms_x = [np.where(side, sx, sx - 0.95 * half), np.where(side, sx, sx + 0.95 * half)]
    # legs (hip to knee, knee to foot, per side) and arms in one go
    limbs = strokes(np.stack([legs_x[0], knees[:, 0, 0], legs_x[1], knees[:, 1, 0], *arms_x]),
                    np.stack([hy, knees[:, 0, 1], hy, knees[:, 1, 1], sy, sy]),
                    np.stack([knees[:, 0, 0], feet[:, 0, 0], knees[:, 1, 0], feet[:, 1, 0],
                              hands[:, 0, 0], hands[:, 1, 0]]),
                    np.stack([knees[:, 0, 1], feet[:, 0, 1], knees[:, 1, 1], feet[:, 1, 1],
                              hands[:, 0, 1], hands[:, 1, 1]]),
                    np.stack([0.075 * h, 0.07 * h] * 2 + [0.055 * h] * 2))
    torso = np.stack([col(hx - 0.8 * half, hy - 0.02 * h), col(hx + 0.8 * half, hy - 0.02 * h),
                      col(sx + half, sy), col(sx - half, sy)], 1)
    bag = np.where(p["has_bag"] > 0, 0.7 * half, 0.0)
    quads = [*limbs[:4], torso, rects(sx - bag, sy - 0.2 * h, sx + bag, sy - 0.04 * h),
             *limbs[4:], rects(sx - 0.025 * h, sy - 0.01 * h, sx + 0.025 * h, sy + 0.04 * h)]
    colours = [p["legs"]] * 4 + [p["top"], p["bag"], p["top"], p["top"], p["skin"]]
    _add(b, obj, quads, label, Mat.FABRIC, colours, wrap=1.0)
    small = ellipses(np.stack([feet[:, 0, 0], feet[:, 1, 0], hands[:, 0, 0], hands[:, 1, 0]]),
                     np.stack([feet[:, 0, 1] + 0.015 * h, feet[:, 1, 1] + 0.015 * h,
                               hands[:, 0, 1], hands[:, 1, 1]]),
                     np.stack([0.05 * h] * 2 + [0.025 * h] * 2),
                     np.stack([0.02 * h] * 2 + [0.03 * h] * 2), 8)
    _add(b, obj, small, label, Mat.FLAT, [_DARK, _DARK, p["skin"], p["skin"]])
    head_y = sy + 0.105 * h
    _add(b, obj, [ellipses(sx, head_y, 0.055 * h, 0.068 * h)], label, Mat.FLAT, p["skin"], wrap=1.0)
    cap = _CAP * col(0.058 * h, 0.052 * h)[:, None] + col(sx, head_y + 0.01 * h)[:, None]
    full = ellipses(sx, head_y, 0.058 * h, 0.07 * h, 9)  # seen from behind: all hair
    _add(b, obj, [np.where((p["view"] == 1)[:, None, None], full, cap)], label, Mat.FLAT,
         p["hair"], wrap=1.0)


def emit_people(b: MeshBuilder, obj: np.ndarray, p: Params, t: float) -> None:
    """Pedestrians standing or walking and, ``ride`` 1 or 2, cyclists and motorcyclists
    (rider class) seen from behind or in front on their bicycle or motorcycle.

    Columns: the figure's plus facing (+-1, side view), walk (m/s), phase and, for
    riders, front, frame (colour) and lit.
    """
    h = p["height"]
    riding = p["ride"] > 0
    if riding.any():
        at = np.flatnonzero(riding)
        _two_wheelers(b, obj[at], p["ride"][at] > 1, p["front"][at] > 0, p["frame"][at],
                      p["lit"][at])
    swing = np.sin(p["phase"] + t * 7.0 * p["walk"]) * np.minimum(p["walk"], 1.0)
    side = (p["view"] == 2)[:, None]
    d = p["facing"]
    stride = 0.22 * h * swing
    lift = 0.03 * h * swing
    up, down = np.maximum(lift, 0), np.maximum(-lift, 0)
    feet = np.where(side[..., None],
                    np.stack([col(d * stride, 0), col(-d * stride, 0)], 1),
                    np.stack([col(-0.07 * h, up), col(0.07 * h, down)], 1))
    knees = np.where(side[..., None],
                     np.stack([col(d * (0.6 * stride + 0.03 * h), 0.26 * h),
                               col(d * (0.03 * h - 0.4 * stride), 0.26 * h)], 1),
                     np.stack([col(-0.06 * h, 0.27 * h + up), col(0.06 * h, 0.27 * h + down)], 1))
    hands = np.where(side[..., None],
                     np.stack([col(-0.8 * d * stride, 0.47 * h), col(0.8 * d * stride, 0.47 * h)], 1),
                     np.stack([col(-0.15 * h, 0.47 * h), col(0.15 * h, 0.47 * h)], 1))
    hip = col(0.0 * h, 0.5 * h)
    if riding.any():  # seated, pedalling bicycles
        pedal = np.sin(p["phase"] + t * 5.0) * (p["ride"] == 1)
        rider = riding[:, None, None]
        feet = np.where(rider, np.stack([col(-0.13, 0.25 + 0.1 * pedal),
                                         col(0.13, 0.25 - 0.1 * pedal)], 1), feet)
        knees = np.where(rider, [[-0.15, 0.62], [0.15, 0.62]], knees)
        hands = np.where(rider, [[-0.28, 1.05], [0.28, 1.05]], hands)
        hip = np.where(riding[:, None], [0.0, 0.95], hip)
    _figure(b, obj, p, np.where(riding, RIDER, PERSON), hip, knees, feet, hands, 0.0 * h)
    b.casters(obj, np.where(riding, -0.25, -0.2), np.where(riding, -0.8, -0.15),
              np.where(riding, 0.25, 0.2), np.where(riding, 0.8, 0.15), 0.0,
              np.where(riding, 1.6, h))


def _two_wheelers(b: MeshBuilder, obj: np.ndarray, moto: np.ndarray, front: np.ndarray,
                  frame: np.ndarray, lit: np.ndarray) -> None:
    """The bicycles and motorcycles (``moto``) of riders seen from behind or in ``front``:
    wheel, handlebar, body and, on motorcycles, a lamp."""
    label = np.where(moto, MOTORCYCLE, BICYCLE)
    width = np.where(moto, 0.14, 0.05)
    _add(b, obj, [rects(-width / 2, 0.0, width / 2, 0.68)], label, Mat.FLAT, _TYRE)
    _add(b, obj, [strokes(-0.3, 1.0, 0.3, 1.0, np.where(moto, 0.07, 0.04))], label, Mat.FLAT, _DARK)
    body = np.where(moto[:, None, None], rects(-0.2, 0.55, 0.2, 0.85), rects(-0.07, 0.7, 0.07, 0.78))
    _add(b, obj, [body], label, Mat.PAINT, frame)
    if moto.any():
        m = moto
        glow = np.where(front[:, None], _HEAD_GLOW, _TAIL_GLOW) * lit[:, None]
        _add(b, obj[m], [rects(-0.07, 0.75, 0.07, 0.82)[None].repeat(m.sum(), 0)], label[m],
             Mat.FLAT, np.where(front[m, None], _HEAD, _TAIL), emission=glow[m])


def emit_bikes(b: MeshBuilder, obj: np.ndarray, p: Params, t: float) -> None:
    """Parked bicycles seen from the side. Columns: frame (colour), facing (+-1)."""
    d = p["facing"]
    r = 0.34
    ring = np.concatenate([_RING * r, _RING[::-1] * (r - 0.045)])  # a keyhole annulus
    wheels = [ring[None] + col(x * d, r)[:, None] for x in (-0.7, 0.7)]
    _add(b, obj, wheels, BICYCLE, Mat.FLAT, _TYRE)
    rear, front, seat, bar, crank = ((-0.7, r), (0.7, r), (-0.15, 0.9), (0.5, 0.95), (0.0, 0.32))
    tubes = [strokes(xa * d, ya, xb * d, yb, 0.04) for (xa, ya), (xb, yb) in (
        (rear, crank), (crank, seat), (seat, rear), (seat, bar), (bar, crank), (bar, front))]
    _add(b, obj, tubes, BICYCLE, Mat.FLAT, p["frame"])
    _add(b, obj, [strokes(0.5 * d, 0.95, 0.45 * d, 1.1, 0.04), rects(-0.27 * d, 0.9, -0.05 * d, 0.95)],
         BICYCLE, Mat.FLAT, _DARK)
    b.casters(obj, -0.9, -0.2, 0.9, 0.2, 0.0, 1.0)


_RING = arc(17, endpoint=True)


# --- street furniture and vegetation -------------------------------------------------

def emit_trees(b: MeshBuilder, obj: np.ndarray, p: Params, t: float) -> None:
    """Trunks and crowns of up to 6 blobs (ellipses, or triangles for conifers).

    Columns: trunk (height), width, bark, leaf, blobs (N, 6, 5: dx, dy, rx, ry,
    shade; rx = 0 unused), conifer, tex (texture scale).
    """
    top, w = p["trunk"], p["width"]
    _add(b, obj, [strokes(0, 0, 0, top + 0.5, w, 0.6 * w)], VEGETATION, Mat.BARK, p["bark"],
         wrap=1.0)
    blobs = p["blobs"]
    keep = blobs[:, :, 2] > 0
    item = np.nonzero(keep)[0]
    dx, dy, rx, ry, shade = blobs[keep].T
    cy = top[item] + dy
    ell = ellipses(dx, cy, rx, ry)
    tri = np.repeat(np.stack([col(dx - rx, cy - ry), col(dx + rx, cy - ry), col(dx, cy + ry)], 1),
                    4, 1)
    shape = np.where(p["conifer"][item, None, None] > 0, tri, ell)
    colour = np.minimum(p["leaf"][item] * shade[:, None], 1.0)
    tex = p["tex"][item]
    _add(b, obj[item], [shape], VEGETATION, Mat.FOLIAGE, colour, wrap=1.0, scale=tex[:, None])
    radius = np.max(np.abs(blobs[:, :, 0]) + blobs[:, :, 2], 1)
    b.casters(obj, -radius, -radius, radius, radius, top, top + 2 * radius)
    b.casters(obj, -w / 2, -w / 2, w / 2, w / 2, 0.0, top)


def emit_lamps(b: MeshBuilder, obj: np.ndarray, p: Params, t: float) -> None:
    """Street lamps: a pole, an arm over the road (``reach``, signed), a luminaire that
    glows at night and lights the street. Columns: height, reach, glow, colour."""
    h, arm = p["height"], p["reach"]
    sign = np.sign(arm)
    poles = strokes(np.stack([0.0 * h, 0.0 * h]), np.stack([0.0 * h, h - 0.3]),
                    np.stack([0.0 * h, arm]), np.stack([h, h + 0.1]), np.array([[0.18], [0.09]]),
                    np.array([[0.11], [0.09]]))
    _add(b, obj, [*poles, rects(arm - 0.3 * sign, h, arm + 0.15 * sign, h + 0.16)], POLE,
         [Mat.CONCRETE, Mat.PAINT, Mat.FLAT], [p["colour"], p["colour"], (0.8, 0.8, 0.78)],
         emission=[_OFF, _OFF, p["glow"]], wrap=[1.0, 0.0, 0.0])
    b.lights(obj, col(arm, h, 0.0), p["glow"] * 0.18, (0.0, -1.0, 0.0), 6.0, 2.0)
    b.casters(obj, -0.1, -0.1, 0.1, 0.1, 0.0, h)


def _outline(points: list[tuple[float, float]], repeat: list[int]) -> np.ndarray:
    return np.repeat(np.array(points, float), repeat, 0)


#: unit sign outlines, 16 vertices each: circle, triangle, rectangle, octagon, diamond
_SIGNS = np.stack([
    arc(16),
    _outline([(-1, -0.6), (1, -0.6), (0, 1.1)], [5, 5, 6]),
    _outline([(-1, -0.75), (1, -0.75), (1, 0.75), (-1, 0.75)], [4] * 4),
    np.repeat(arc(8), 2, 0),
    _outline([(0, -1), (1, 0), (0, 1), (-1, 0)], [4] * 4),
])
_SIGN_CENTRES = np.array([[0, 0], [0, -0.033], [0, 0], [0, 0], [0, 0]])[:, None]


def emit_signs(b: MeshBuilder, obj: np.ndarray, p: Params, t: float) -> None:
    """Traffic signs on posts; ones facing away show a grey back. Columns: shape (index
    into circle/triangle/rect/octagon/diamond), size, height, rim, face, facing, post, extra."""
    h, r = p["height"], p["size"] / 2
    facing = p["facing"] > 0
    extra = np.where(facing & (p["extra"] > 0), 0.8 * r, 0.0)
    _add(b, obj, [strokes(0, 0, 0, h + r, 0.07), rects(-extra, h - r - 0.35, extra, h - r - 0.08)],
         [POLE, SIGN], Mat.PAINT, [p["post"], (0.95, 0.95, 0.95)])
    shape = p["shape"].astype(int)
    centre = col(0.0 * h, h)[:, None]
    unit = _SIGNS[shape]
    mid = _SIGN_CENTRES[shape]
    inner = (mid + np.where(facing, 0.72, 0.0)[:, None, None] * (unit - mid))
    rim = np.where(facing[:, None], p["rim"], (0.55, 0.56, 0.58))
    _add(b, obj, [unit * r[:, None, None] + centre, inner * r[:, None, None] + centre], SIGN,
         Mat.PAINT, [rim, p["face"]])


def emit_signals(b: MeshBuilder, obj: np.ndarray, p: Params, t: float) -> None:
    """Traffic lights: a pole, optionally an arm over the road, the signal head with one
    lamp lit. Columns: height, arm (signed reach, 0 = none), state (0 red, 1 amber,
    2 green), facing, colour."""
    h, arm = p["height"], p["arm"]
    top = np.where(arm != 0, h + 0.2, h + 0.3)
    _add(b, obj, [strokes(0, 0, 0, h + 0.3, 0.14, 0.12), strokes(0, h + 0.3, arm, h + 0.3, 0.1),
                  rects(arm - 0.17, top - 0.9, arm + 0.17, top)], [POLE, POLE, LIGHT], Mat.PAINT,
         [p["colour"], p["colour"], _DARK])
    f = p["facing"] > 0
    lamps, colours, glows = [], [], []
    for i in range(3):
        on = (p["state"][f] == i)[:, None]
        lamps.append(ellipses(arm[f], top[f] - 0.17 - 0.28 * i, 0.1, 0.1))
        colours.append(np.where(on, _SIGNAL[i], 0.15 * _SIGNAL[i] + 0.05))
        glows.append(2.5 * _SIGNAL[i] * on)
    _add(b, obj[f], lamps, LIGHT, Mat.FLAT, colours, emission=glows)


# --- structures along the road (local +x points away from it on the right side) ------

def emit_buildings(b: MeshBuilder, obj: np.ndarray, p: Params, t: float) -> None:
    """Building blocks with textured facades (windows by texture, lit at night), a
    cornice and sometimes a shop front. Columns: side (+1 right of the road), length,
    depth, height, material, colour, glass, lit, cell (window cell width, floor
    height), trim, shop, has_shop."""
    length, depth, h, side = p["length"], p["depth"], p["height"], p["side"]
    x0 = np.where(side > 0, 0.0, -depth)
    scale = TILE / p["cell"] / _FACADE_DENSITY
    frames = _box(b, obj, col(x0, 0.0, -length / 2), col(x0 + depth, h, length / 2), BUILDING,
                  p["material"], p["colour"], faces=4, glass=p["glass"], lit=p["lit"], scale=scale)
    faces = [BACK, FRONT, LEFT, RIGHT]
    walls = frames[:, faces].swapaxes(0, 1)
    trims = _face_rects(walls, [0.0] * 4, [0.0] * 4, [depth, depth, length, length], [0.35] * 4)
    _add(b, obj, trims, BUILDING, Mat.CONCRETE, p["trim"], walls)
    s = p["has_shop"] > 0
    facade = np.where((side[s] > 0)[:, None, None], frames[s, LEFT], frames[s, RIGHT])
    _add(b, obj[s], [on_face(facade, rects(0.4, h[s] - 3.6, length[s] - 0.4, h[s] - 0.05))],
         BUILDING, Mat.SHOP, p["shop"][s], facade, glass=(0.25, 0.24, 0.2), lit=0.9,
         scale=(TILE / 4.5 / _FACADE_DENSITY, TILE / 3.6 / _FACADE_DENSITY))
    b.casters(obj, x0, -length / 2, x0 + depth, length / 2, 0.0, h)


_POSTS = 16


def emit_boxes(b: MeshBuilder, obj: np.ndarray, p: Params, t: float) -> None:
    """Walls, hedges and fences: long boxes along the road, posts on fences.

    Columns: label, length, thickness, height, colour, material, posts, has_posts, wrap.
    """
    half, th, h = p["length"] / 2, p["thickness"] / 2, p["height"]
    frames = _box(b, obj, col(-th, 0.0, -half), col(th, h, half), p["label"], p["material"],
                  p["colour"], wrap=p["wrap"])
    posts = p["has_posts"] > 0
    along = 0.05 + 2.5 * np.arange(_POSTS)
    keep = posts[:, None] & (along < 2 * half[:, None])
    item, k = np.nonzero(keep)
    faces = [frames[item, LEFT], frames[item, RIGHT]]
    shapes = [on_face(f, rects(along[k], 0.0, along[k] + 0.08, h[item])) for f in faces]
    _add(b, obj[item], shapes, p["label"][item], Mat.PAINT, p["posts"][item], faces)
    b.casters(obj, -th, -half, th, half, 0.0, h)


def emit_grounds(b: MeshBuilder, obj: np.ndarray, p: Params, t: float) -> None:
    """Flat ground polygons given in world xz (objects at the origin): property
    strips, crossings, the street. Columns: xz (N, k, 2), gy (height), label, colour,
    material."""
    xz = p["xz"]
    verts = np.empty((*xz.shape[:2], 3))
    verts[:, :, 0::2] = xz
    verts[:, :, 1] = p["gy"][:, None]
    frames = np.repeat(UP[None], len(obj), 0)
    frames[:, 3, 1] = p["gy"]
    b.polys(obj, verts, frames, attrs(len(obj), p["label"], p["material"], p["colour"]))


Emitter = Callable[[MeshBuilder, np.ndarray, Params, float], None]

#: kind -> (emitter, anchor): "billboard" faces the camera, "road" runs along the road,
#: "world" is already in world coordinates
EMITTERS: dict[str, tuple[Emitter, str]] = {
    "grounds": (emit_grounds, "world"),
    "buildings": (emit_buildings, "road"),
    "boxes": (emit_boxes, "road"),
    "vehicles": (emit_vehicles, "road"),
    "people": (emit_people, "billboard"),
    "bikes": (emit_bikes, "billboard"),
    "trees": (emit_trees, "billboard"),
    "lamps": (emit_lamps, "billboard"),
    "signs": (emit_signs, "billboard"),
    "signals": (emit_signals, "billboard"),
}
