"""Collecting a frame's polygons, in batches, to transform and draw them in one go.

Objects (cars, people, buildings, ...) are opened in bulk with their world
position, heading and draw layer; their parts are planar polygons in the
object's frame (x right, y up, z forward), added a batch at a time as
(P, K, 3) vertex arrays, so emitting a hundred people costs a handful of numpy
calls. Camera-facing things ("billboards": people, trees, poles) are objects
whose heading is the camera's yaw, drawn in their z = 0 plane. Every polygon
carries a texture frame (normal, u and v axes, origin), its class, colours and
material; `render` turns the lot into pixels. Unused parts of a template are
emitted with zero size and dropped by the renderer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.data.synth.camera import Camera

# attribute columns of a polygon
(A_OBJ, A_LABEL, A_MAT, A_R, A_G, A_B, A_ER, A_EG, A_EB, A_GR, A_GG, A_GB, A_LIT, A_WRAP,
 A_SU, A_SV) = range(16)

#: draw layers, far to near; polygons on ground layers receive cast shadows
(L_SKY, L_GROUND, L_PROPERTY, L_STREET, L_MARKING, L_FAR, L_OUTER, L_LINE, L_NEAR) = range(9)
GROUND_LAYERS = L_MARKING

BILLBOARD = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0], [0, 0, 0]], float)
UP = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], float)

ArrayLike = Any  # a scalar or an array broadcasting to the batch


def attrs(n: int, label: ArrayLike, material: ArrayLike, colour: ArrayLike,
          emission: ArrayLike = 0.0, glass: ArrayLike = 0.0, lit: ArrayLike = 0.0,
          wrap: ArrayLike = 0.0, scale: ArrayLike = 1.0) -> np.ndarray:
    """(n, 16) polygon attributes (object column left for the builder).

    ``glass`` colours the window parts of facade materials, ``lit`` is the
    share of windows lit at night, ``wrap`` softens sun shading for round
    things and ``scale`` multiplies the material's texture density (u, v).
    """
    out = np.empty((n, 16))
    out[:, A_LABEL] = label
    out[:, A_MAT] = material
    out[:, A_R:A_B + 1] = colour
    out[:, A_ER:A_EB + 1] = emission
    out[:, A_GR:A_GB + 1] = glass
    out[:, A_LIT] = lit
    out[:, A_WRAP] = wrap
    out[:, A_SU:A_SV + 1] = scale
    return out


@dataclass
class Mesh:
    """A frame's polygons as arrays (object-local vertices and frames)."""

    poses: np.ndarray      # (O, 4) x, y, z, heading
    layers: np.ndarray     # (O,) draw layer
    verts: np.ndarray      # (V, 3) local vertices
    starts: np.ndarray     # (P + 1,) first vertex of each polygon, then V
    frames: np.ndarray     # (P, 4, 3) local normal, u, v, origin
    attrs: np.ndarray      # (P, 16) see A_*
    casters: np.ndarray    # (C, 7) object, local x0, z0, x1, z1 footprint, y0, y1
    blobs: np.ndarray      # (B, 5) object, local footprint of a contact shadow
    lights: np.ndarray     # (n, 12) object, local position, colour, local direction, reach, exponent

    def footprints(self, rows: np.ndarray) -> np.ndarray:
        """(n, 4, 2) world xz corners of local footprint rectangles (object, x0, z0, x1, z1)."""
        pose = self.poses[rows[:, 0].astype(int)]
        return np.stack(_to_world(pose, rows[:, [1, 3, 3, 1]], rows[:, [2, 2, 4, 4]]), -1)

    def world_lights(self) -> np.ndarray:
        """(n, 11) lights in world coordinates: position, colour, direction, reach, exponent."""
        rows = self.lights
        pose = self.poses[rows[:, 0].astype(int)]
        x, z = _to_world(pose, rows[:, 1], rows[:, 3])
        dx, dz = _to_world(pose * [0, 0, 0, 1], rows[:, 7], rows[:, 9])
        return np.stack([x, pose[:, 1] + rows[:, 2], z, *rows[:, 4:7].T, dx, rows[:, 8], dz,
                         rows[:, 10], rows[:, 11]], 1)


def _to_world(pose: np.ndarray, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local (x, z) of objects with ``pose`` rows (broadcast over trailing axes) -> world."""
    shape = (-1,) + (1,) * (np.ndim(x) - 1)
    c, s = np.cos(pose[:, 3]).reshape(shape), np.sin(pose[:, 3]).reshape(shape)
    return pose[:, 0].reshape(shape) + c * x + s * z, pose[:, 2].reshape(shape) - s * x + c * z


def _rows(obj: np.ndarray, *values: ArrayLike) -> np.ndarray:
    """(N, 1 + len(values)) rows: object index, then per-object values (scalars broadcast)."""
    out = np.empty((len(obj), 1 + len(values)))
    out[:, 0] = obj
    for i, v in enumerate(values, 1):
        out[:, i] = v
    return out


class MeshBuilder:
    def __init__(self, cam: Camera) -> None:
        self.cam = cam
        self._poses: list[np.ndarray] = []
        self._layers: list[np.ndarray] = []
        self._count = 0
        self._verts: list[np.ndarray] = []
        self._sizes: list[tuple[int, int]] = []
        self._frames: list[np.ndarray] = []
        self._attrs: list[np.ndarray] = []
        self._casters: list[np.ndarray] = []
        self._blobs: list[np.ndarray] = []
        self._lights: list[np.ndarray] = []

    def objects(self, x: ArrayLike, y: ArrayLike, z: ArrayLike, heading: ArrayLike,
                layer: ArrayLike) -> np.ndarray:
        """Open objects at world (x, y, z) with a heading; returns their indices."""
        n = max(np.size(v) for v in (x, y, z, heading, layer))
        pose = np.empty((n, 4))
        for i, v in enumerate((x, y, z, heading)):
            pose[:, i] = v
        layers = np.empty(n, int)
        layers[:] = layer
        self._poses.append(pose)
        self._layers.append(layers)
        self._count += n
        return np.arange(self._count - n, self._count)

    def polys(self, obj: np.ndarray | None, verts: np.ndarray, frames: np.ndarray,
              attributes: np.ndarray) -> None:
        """Add P polygons of K vertices: ``verts`` (P, K, 3) in the frames of objects ``obj``
        (P,; None: already in ``attributes``), texture ``frames`` (P, 4, 3) (or one
        (4, 3)), ``attributes`` from `attrs`."""
        p, k = verts.shape[:2]
        if p == 0:
            return
        if obj is not None:
            attributes[:, A_OBJ] = obj
        self._verts.append(verts.reshape(-1, 3))
        self._sizes.append((p, k))
        if frames.ndim == 2:  # one frame for all
            frames = np.repeat(frames[None], p, 0)
        self._frames.append(frames)
        self._attrs.append(attributes)

    def casters(self, obj: np.ndarray, x0: ArrayLike, z0: ArrayLike, x1: ArrayLike,
                z1: ArrayLike, y0: ArrayLike, y1: ArrayLike) -> None:
        """Vertical boxes over local footprints that cast sun shadows on the ground."""
        self._casters.append(_rows(obj, x0, z0, x1, z1, y0, y1))

    def blobs(self, obj: np.ndarray, x0: ArrayLike, z0: ArrayLike, x1: ArrayLike,
              z1: ArrayLike) -> None:
        """Footprints whose ground is always darkened (contact shadows under vehicles)."""
        self._blobs.append(_rows(obj, x0, z0, x1, z1))

    def lights(self, obj: np.ndarray, position: np.ndarray, colour: ArrayLike,
               direction: ArrayLike, reach: ArrayLike, exponent: ArrayLike) -> None:
        """Night lights in local frames: spots along ``direction``, sharper with ``exponent``
        (a small integer)."""
        out = np.empty((len(obj), 12))
        out[:, 0] = obj
        out[:, 1:4] = position
        out[:, 4:7] = colour
        out[:, 7:10] = direction
        out[:, 10] = reach
        out[:, 11] = exponent
        self._lights.append(out)

    def build(self) -> Mesh:
        counts = np.concatenate([np.full(p, k) for p, k in self._sizes])

        def cat(parts: list[np.ndarray], width: int) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros((0, width))

        return Mesh(
            poses=np.concatenate(self._poses),
            layers=np.concatenate(self._layers),
            verts=np.concatenate(self._verts),
            starts=np.concatenate([[0], np.cumsum(counts)]),
            frames=np.concatenate(self._frames),
            attrs=np.concatenate(self._attrs),
            casters=cat(self._casters, 7),
            blobs=cat(self._blobs, 5),
            lights=cat(self._lights, 12),
        )


# --- shape templates, vectorised over a batch (object-local metres) ------------------

@functools.cache
def arc(k: int, start: float = 0.0, stop: float = 2 * np.pi, endpoint: bool = False) -> np.ndarray:
    """(k, 2) unit-circle points from angle ``start`` to ``stop``."""
    a = np.linspace(start, stop, k, endpoint=endpoint)
    return np.stack([np.cos(a), np.sin(a)], 1)


def _batch_shape(*values: ArrayLike) -> tuple[int, ...]:
    """The broadcast shape of per-item values (mostly scalars and equal-length columns:
    checked in Python, much faster than `np.broadcast_shapes` for a handful of values)."""
    shape: tuple[int, ...] = ()
    for v in values:
        if isinstance(v, np.ndarray):
            s = v.shape
        elif isinstance(v, (float, int)):
            continue
        else:
            s = np.shape(v)
        if s and s != shape:
            shape = np.broadcast_shapes(shape, s) if shape else s
    return shape


def col(*values: ArrayLike) -> np.ndarray:
    """Stack per-item values into (N, len(values)) (scalars broadcast)."""
    out = np.empty(_batch_shape(*values) + (len(values),))
    for i, v in enumerate(values):
        out[..., i] = v
    return out


def _polygon(points: list[tuple[ArrayLike, ArrayLike]]) -> np.ndarray:
    """(N, K, 2) polygons from K (x, y) corners of per-item values."""
    out = np.empty(_batch_shape(*(c for xy in points for c in xy)) + (len(points), 2))
    for k, (x, y) in enumerate(points):
        out[..., k, 0] = x
        out[..., k, 1] = y
    return out


def rects(x0: ArrayLike, y0: ArrayLike, x1: ArrayLike, y1: ArrayLike) -> np.ndarray:
    """(N, 4, 2) axis-aligned rectangles."""
    return _polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def ellipses(cx: ArrayLike, cy: ArrayLike, rx: ArrayLike, ry: ArrayLike, k: int = 12) -> np.ndarray:
    """(N, k, 2) ellipses."""
    unit = arc(k)
    out = np.empty(_batch_shape(cx, cy, rx, ry) + (k, 2))
    out[..., 0] = np.multiply.outer(rx, unit[:, 0])
    out[..., 1] = np.multiply.outer(ry, unit[:, 1])
    out[..., 0] += np.asarray(cx)[..., None]
    out[..., 1] += np.asarray(cy)[..., None]
    return out


def strokes(x0: ArrayLike, y0: ArrayLike, x1: ArrayLike, y1: ArrayLike, w0: ArrayLike,
            w1: ArrayLike | None = None) -> np.ndarray:
    """(N, 4, 2) segments from (x0, y0) to (x1, y1), ``w0``/``w1`` wide at their ends."""
    w1 = w0 if w1 is None else w1
    dx, dy = np.subtract(x1, x0), np.subtract(y1, y0)
    norm = np.maximum(np.hypot(dx, dy), 1e-9) * 2
    nx, ny = -dy / norm, dx / norm
    return _polygon([(x0 + nx * w0, y0 + ny * w0), (x1 + nx * w1, y1 + ny * w1),
                     (x1 - nx * w1, y1 - ny * w1), (x0 - nx * w0, y0 - ny * w0)])


def billboard(points: np.ndarray) -> np.ndarray:
    """(N, K, 2) x, y points -> (N, K, 3) in the z = 0 plane."""
    out = np.zeros(points.shape[:-1] + (3,))
    out[..., :2] = points
    return out


def on_face(frames: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """(N, K, 2) face coordinates (metres along u from the origin, down v) on faces with
    ``frames`` (N, 4, 3) -> (N, K, 3) local points."""
    return frames[:, None, 3] + ab[..., :1] * frames[:, None, 1] + ab[..., 1:] * frames[:, None, 2]


#: box faces: corner indices (x1 adds 1, y1 adds 2, z1 adds 4), normal, u, v, origin corner
_BOX = (
    ((0, 1, 3, 2), (0, 0, -1), (1, 0, 0), (0, -1, 0), 2),    # back
    ((5, 4, 6, 7), (0, 0, 1), (-1, 0, 0), (0, -1, 0), 7),    # front
    ((4, 0, 2, 6), (-1, 0, 0), (0, 0, 1), (0, -1, 0), 2),    # left
    ((1, 5, 7, 3), (1, 0, 0), (0, 0, 1), (0, -1, 0), 3),     # right
    ((2, 3, 7, 6), (0, 1, 0), (1, 0, 0), (0, 0, 1), 2),      # top
)
BACK, FRONT, LEFT, RIGHT, TOP = range(5)
_BOX_IDX = np.array([f[0] for f in _BOX])
_BOX_AXES = np.array([[f[1], f[2], f[3]] for f in _BOX], float)
_BOX_ORIGIN = np.array([f[4] for f in _BOX])
_CORNER_BITS = np.array([[i & 1, i >> 1 & 1, i >> 2] for i in range(8)], float)


def boxes(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Faces of N axis-aligned boxes: vertices (N, 5, 4, 3) and frames (N, 5, 4, 3) in the
    order back (-z), front (+z), left (-x), right (+x), top. Faces turned away from
    the camera are culled by the renderer."""
    corners = lo[:, None] + (hi - lo)[:, None] * _CORNER_BITS
    frames = np.empty((len(lo), 5, 4, 3))
    frames[:, :, :3] = _BOX_AXES
    frames[:, :, 3] = corners[:, _BOX_ORIGIN]
    return corners[:, _BOX_IDX], frames
