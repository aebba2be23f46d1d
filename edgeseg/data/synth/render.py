"""Geometry -> pixels: one id buffer, then everything else by table lookup.

Polygons are drawn far to near (painter's algorithm) as *ids* into a single
int16 buffer, one `cv2.fillPoly` each. Every visible pixel then knows its
polygon, so labels, colours and materials are table lookups and can never
disagree with the image. Each polygon is planar, and the inverse of its
plane's homography gives, per pixel and exactly, 1/depth and texture
coordinates: the depth map (for fog and lights) and perspective-correct
textures cost a few whole-frame array operations.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.data.synth.camera import Camera, clip_near, project
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
    GROUND_LAYERS,
    L_GROUND,
    Mesh,
)
from edgeseg.data.synth.textures import DENSITY, TILE, atlas, atlas_column, atlas_maps
from edgeseg.labels import CITYSCAPES19

STYLES = ("textured", "flat")
_SKY = CITYSCAPES19.names.index("sky")
_SHIFT = 4  # fillPoly fixed-point bits: sub-pixel accurate edges
_MAX_DEPTH = 1e4


@functools.lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel column and row coordinates, each repeated over 3 channels (contiguous
    operands keep the per-pixel arithmetic vectorised)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.merge([u] * 3), cv2.merge([v] * 3)


@functools.lru_cache(maxsize=8)
def _grid_centres(height: int, width: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution pixel coordinates of the cells of a 1/``factor`` grid."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32) * factor + (factor - 1) / 2
    return u, v


def channels3(plane: np.ndarray) -> np.ndarray:
    """(H, W) -> contiguous (H, W, 3), much faster to combine than a broadcast view."""
    return cv2.merge([plane] * 3)


def _rotate(rel: np.ndarray, obj: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Rotate local (N, 3) directions of objects ``obj`` by heading-minus-yaw ``rel``."""
    c, s = np.cos(rel)[obj], np.sin(rel)[obj]
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    out = np.empty(local.shape)
    out[:, 0] = c * x + s * z
    out[:, 1] = y
    out[:, 2] = c * z - s * x
    return out


def _inverse_homographies(cam: Camera, a: np.ndarray, b: np.ndarray, c: np.ndarray
                          ) -> np.ndarray:
    """(n, 3, 3) inverses of K [a b c] (planes spanned by ``a``, ``b`` at ``c``, camera frame),
    in closed form: rows s, t, 1/z; columns u, v, 1."""
    rows = np.empty((len(a), 3, 3))  # the adjugate of [a b c]: b x c, c x a, a x b
    for i, (p, q) in enumerate(((b, c), (c, a), (a, b))):
        rows[:, i, 0] = p[:, 1] * q[:, 2] - p[:, 2] * q[:, 1]
        rows[:, i, 1] = p[:, 2] * q[:, 0] - p[:, 0] * q[:, 2]
        rows[:, i, 2] = p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]
    rows /= np.einsum("ij,ij->i", a, rows[:, 0])[:, None, None]
    f = cam.focal
    out = np.empty_like(rows)
    out[:, :, 0] = rows[:, :, 0] / f
    out[:, :, 1] = rows[:, :, 1] / -f
    out[:, :, 2] = rows[:, :, 2] - out[:, :, 0] * cam.cx - out[:, :, 1] * cam.cy
    return out


@dataclass
class Raster:
    """The id buffer and per-id tables of one rendered view (tables are float32)."""

    cam: Camera
    idmap: np.ndarray      # (H, W, 2) int16: polygon id, 0 (a `cv2.remap` map)
    coef: tuple[np.ndarray, np.ndarray, np.ndarray]  # factors of u, v and 1 giving (s, t, 1/z) z
    labels: np.ndarray     # (n,) uint8
    base: np.ndarray       # (n, 3) albedo
    glass: np.ndarray      # (n, 3) window glass colour
    emission: np.ndarray   # (n, 3)
    atlas_x: np.ndarray    # (n,) first atlas column of the material's tile
    fade: np.ndarray       # (n,) 2 / texels per pixel per metre of depth
    lit: np.ndarray        # (n,) share of windows lit at night
    seed: np.ndarray       # (n,) int64 per-object hash seed (windows)
    normals: np.ndarray    # (n, 3) camera-frame normals
    wrap: np.ndarray       # (n,) shading wrap
    ground: int            # ids 1 .. ground are on the ground (receive cast shadows)
    mesh: Mesh

    @property
    def ids(self) -> np.ndarray:
        """(H, W) int16 polygon ids."""
        return self.idmap[..., 0]


def rasterize(mesh: Mesh, cam: Camera) -> Raster:
    """Draw a mesh as seen by ``cam`` into an id buffer (id 0, the sky, first)."""
    attrs = mesh.attrs
    obj = attrs[:, A_OBJ].astype(int)
    rel = mesh.poses[:, 3] - cam.yaw
    origin = cam.to_camera(mesh.poses[:, :3])

    frames = mesh.frames.reshape(-1, 3)
    frame_obj = np.repeat(obj, 4)
    frames = _rotate(rel, frame_obj, frames).reshape(-1, 4, 3)
    frames[:, 3] += origin[obj]
    normal, point = frames[:, 0], frames[:, 3]
    facing = np.einsum("ij,ij->i", normal, point)
    visible = facing < -1e-3 * np.sqrt(np.einsum("ij,ij->i", point, point))

    counts = np.diff(mesh.starts)
    keep_vert = np.repeat(visible, counts)
    vert_obj = np.repeat(obj, counts)[keep_vert]
    verts = _rotate(rel, vert_obj, mesh.verts[keep_vert]) + origin[vert_obj]
    starts = np.concatenate([[0], np.cumsum(counts[visible])])
    verts, starts = clip_near(verts, starts, cam.near)
    poly = np.flatnonzero(visible)

    sizes = np.diff(starts)
    ok = sizes >= 3
    uv = project(cam, verts) if len(verts) else np.zeros((0, 2))
    first = starts[:-1][ok]
    lo = np.minimum.reduceat(uv, first) if len(first) else np.zeros((0, 2))
    hi = np.maximum.reduceat(uv, first) if len(first) else np.zeros((0, 2))
    on_screen = ((hi[:, 0] >= -1) & (lo[:, 0] <= cam.width) & (hi[:, 1] >= -1)
                 & (lo[:, 1] <= cam.height) & ((hi - lo).max(1) >= 0.5))
    sel = np.flatnonzero(ok)[on_screen]
    poly = poly[sel]
    if len(poly) > 32767:
        raise ValueError("more than 32767 polygons in one view")
    a_sel = attrs[poly]

    sel_obj = a_sel[:, A_OBJ].astype(int)
    layer = mesh.layers[sel_obj]
    depth_key = np.where(layer <= GROUND_LAYERS, 0.0, origin[sel_obj, 2])
    order = np.lexsort((np.arange(len(poly)), -depth_key, layer))
    if len(poly) == 0 or poly[order[0]] != 0:
        raise ValueError("the first polygon of a mesh must be the sky")
    # ids in drawing order: the sky is 0, then the ground layers, then everything else
    sel, poly, sel_obj, layer = sel[order], poly[order], sel_obj[order], layer[order]
    a_sel = attrs[poly]

    material = a_sel[:, A_MAT].astype(int)
    du = DENSITY[material] * a_sel[:, A_SU]
    dv = DENSITY[material] * a_sel[:, A_SV]
    basis = frames[poly]
    coef = _inverse_homographies(cam, basis[:, 1] / du[:, None], basis[:, 2] / dv[:, None],
                                 basis[:, 3])

    # ids as a 2-channel int16 image: directly the map of the per-id table lookups
    idmap = np.zeros((cam.height, cam.width, 2), np.int16)
    fixed = np.round(uv * (1 << _SHIFT)).astype(np.int32)
    bounds = sel[1:]
    fill = cv2.fillPoly  # the colour k fills channel 0 (an int: much faster than a tuple)
    for k, a, b in zip(range(1, len(sel)), starts[bounds].tolist(), starts[bounds + 1].tolist()):
        fill(idmap, [fixed[a:b]], k, cv2.LINE_8, _SHIFT)

    pose = mesh.poses[sel_obj]
    seed = (np.round(pose[:, 0] * 7) * 92821 + np.round(pose[:, 2] * 7) * 68917) % 65521
    table = coef.astype(np.float32)  # rows: s, t, 1/z; columns: u, v, 1
    return Raster(
        cam=cam,
        idmap=idmap,
        coef=tuple(np.ascontiguousarray(table[:, :, k]) for k in range(3)),
        labels=a_sel[:, A_LABEL].astype(np.uint8),
        base=a_sel[:, A_R:A_B + 1].astype(np.float32),
        glass=a_sel[:, A_GR:A_GB + 1].astype(np.float32),
        emission=a_sel[:, A_ER:A_EB + 1].astype(np.float32),
        atlas_x=atlas_column(material),
        fade=(2 * cam.focal / np.maximum(du, dv)).astype(np.float32),
        lit=a_sel[:, A_LIT].astype(np.float32),
        seed=seed.astype(np.int64),
        normals=basis[:, 0],
        wrap=a_sel[:, A_WRAP],
        ground=int(np.count_nonzero((layer >= L_GROUND) & (layer <= GROUND_LAYERS))),
        mesh=mesh,
    )


def _saturate(colours: np.ndarray, amount: float) -> np.ndarray:
    """Colours pushed away from grey (the flat, game-like style)."""
    grey = colours.mean(-1, keepdims=True)
    return np.clip(grey + (colours - grey) * amount, 0, 1)


def shadow_prisms(base: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(C, 8, 2) ground outlines of the shadows of vertical prisms over convex (C, 4, 2)
    footprints ``base`` whose bottom and top cast to offsets ``low`` and ``high`` (C, 2):
    the footprint at ``low`` swept to ``high`` (a hexagon; repeated corners where the
    sweep runs along a side). Convex, so each fills with `cv2.fillConvexPoly`."""
    p = base + low[:, None]
    sweep = (high - low)[:, None]  # (C, 1, 2)
    edge = np.roll(p, -1, 1) - p  # edge i runs from corner i to corner i + 1
    turn = p[:, :, 0] * np.roll(p, -1, 1)[:, :, 1] - p[:, :, 1] * np.roll(p, -1, 1)[:, :, 0]
    orient = np.sign(turn.sum(1))[:, None]  # +1 counter-clockwise
    # edges facing the sweep move with it; corners between moving and staying edges split
    out = orient * (edge[:, :, 1] * sweep[:, :, 0] - edge[:, :, 0] * sweep[:, :, 1]) > 0
    into = np.roll(out, 1, 1)
    corners = np.stack([p + into[..., None] * sweep, p + out[..., None] * sweep], 2)
    return corners.reshape(len(p), 8, 2)


def _fill_ground_polygons(raster: Raster, polygons: np.ndarray, ground: np.ndarray
                          ) -> np.ndarray:
    """Rasterise convex world xz polygons (P, K, 2) lying on the ground into a uint8 mask
    (1 = covered) restricted to the ``ground`` pixels. One fill per polygon: a single
    fill of overlapping polygons would leave their overlaps empty (even-odd rule)."""
    cam = raster.cam
    mask = np.zeros((cam.height, cam.width), np.uint8)
    if len(polygons):
        p, k = polygons.shape[:2]
        xz = polygons.reshape(-1, 2)
        world = np.stack([xz[:, 0], np.zeros(len(xz)), xz[:, 1]], 1)
        verts, starts = clip_near(cam.to_camera(world), np.arange(0, p * k + 1, k), cam.near)
        if len(verts):
            uv = project(cam, verts)
            fixed = np.round(uv * (1 << _SHIFT)).astype(np.int32)
            fill = cv2.fillConvexPoly
            for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
                if b - a >= 3:
                    fill(mask, fixed[a:b], 1, cv2.LINE_8, _SHIFT)
    return cv2.bitwise_and(mask, ground, dst=mask)


class Surface:
    """Per-pixel albedo, depth, labels and the lighting inputs of one view.

    Domain-independent (`domains.apply_domain` lights it as day, night, ...): its
    arrays are shared by all domains and never modified.
    """

    def __init__(self, raster: Raster, style: str = "textured") -> None:
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")
        self.raster = raster
        self.style = style
        cam = raster.cam
        # cv2.remap with nearest lookup through the id map is a fast gather of table rows
        self._map = raster.idmap
        self.labels = self.lookup(raster.labels)
        u3, v3 = _pixel_grid(cam.height, cam.width)
        num, cv, c1 = (self.lookup(t) for t in raster.coef)
        num *= u3
        cv *= v3
        num += cv
        num += c1
        tex_u, tex_v, inv_z = cv2.split(num)
        cv2.max(inv_z, 1 / _MAX_DEPTH, dst=inv_z)
        self.depth = np.reciprocal(inv_z)
        tex_u *= self.depth
        tex_v *= self.depth
        self.tex_u, self.tex_v = tex_u, tex_v
        map_x, map_y = atlas_maps(tex_u, tex_v, self.lookup(raster.atlas_x))
        lum_atlas, glass_atlas = atlas()
        self.glass = cv2.remap(glass_atlas, map_x, map_y, cv2.INTER_LINEAR)
        base, glass = raster.base, raster.glass
        if style == "flat":
            base, glass = _saturate(base, 1.6), _saturate(glass, 1.6)
        self.albedo = cv2.blendLinear(self.lookup(base), self.lookup(glass), 1 - self.glass,
                                      self.glass)
        if style == "textured":
            # fade texture detail where a pixel covers more than ~2 texels (no moire)
            lum = cv2.remap(lum_atlas, map_x, map_y, cv2.INTER_LINEAR)
            fade = self.lookup(raster.fade)
            fade *= inv_z
            cv2.min(fade, 1.0, dst=fade)
            lum -= np.float32(1)
            lum *= fade
            lum += np.float32(1)
            self.albedo *= channels3(lum)
        self.sky = self.labels == _SKY

    @functools.cached_property
    def emission(self) -> np.ndarray:
        """(H, W, 3) light emitted by lamps, car lights and signals (scaled by the domain)."""
        return self.lookup(self.raster.emission)

    @functools.cached_property
    def ground(self) -> np.ndarray:
        """(H, W) uint8: 255 where a pixel shows the ground (receives shadows)."""
        return cv2.inRange(self._map, (1, 0), (self.raster.ground, 0))

    @functools.cached_property
    def contact(self) -> np.ndarray:
        """(H, W) uint8: 1 where the ground is darkened under vehicles whatever the light."""
        mesh = self.raster.mesh
        return _fill_ground_polygons(self.raster, mesh.footprints(mesh.blobs), self.ground)

    @functools.cached_property
    def contact_any(self) -> bool:
        """Whether any pixel is in a contact shadow."""
        return bool(cv2.countNonZero(self.contact))

    @functools.cached_property
    def occlusion(self) -> np.ndarray:
        """(H, W) float32 darkening of the ground under vehicles (applies to all light)."""
        occlusion = np.ones(self.contact.shape, np.float32)
        np.copyto(occlusion, np.float32(0.45), where=self.contact.view(bool))
        return occlusion

    @functools.cached_property
    def occlusion3(self) -> np.ndarray:
        """`occlusion` over 3 channels."""
        return channels3(self.occlusion)

    def lookup(self, table: np.ndarray) -> np.ndarray:
        """Per-pixel rows of a per-id table: (n,) -> (H, W), (n, k <= 4) -> (H, W, k)."""
        return cv2.remap(table.reshape(1, len(table), -1), self._map, None, cv2.INTER_NEAREST)

    @property
    def cam(self) -> Camera:
        return self.raster.cam

    def direct_sun(self, sun: np.ndarray) -> np.ndarray:
        """(H, W) share of direct sunlight: surface orientation and cast shadows.

        ``sun`` is a unit world vector towards the sun (y > 0).
        """
        cam = self.cam
        rotated = cam.to_camera(sun[None]) - cam.to_camera(np.zeros((1, 3)))
        wrap = self.raster.wrap
        shade = np.clip((self.raster.normals @ rotated[0] + wrap) / (1 + wrap), 0, 1)
        lit = self.lookup(shade.astype(np.float32))
        reach = -sun[[0, 2]] / max(sun[1], 0.05)
        mesh = self.raster.mesh
        casters = mesh.casters
        prisms = shadow_prisms(mesh.footprints(casters[:, :5]), casters[:, 5:6] * reach,
                               casters[:, 6:7] * reach)
        shadow = _fill_ground_polygons(self.raster, prisms, self.ground)
        shadow |= self.contact
        np.copyto(lit, np.float32(0), where=shadow.view(bool))
        return lit

    @functools.cached_property
    def _lit_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of the pixels of windows lit at night and their glass coverage (a
        stable hash per window decides)."""
        glass = self.glass.reshape(-1)
        at = np.flatnonzero(glass > 0)  # only window pixels: a small share of the frame
        ids = self._map.reshape(-1, 2)[at, 0]
        cells_u = np.floor(self.tex_u.reshape(-1)[at] * (1 / TILE)).astype(np.int64)
        cells_v = np.floor(self.tex_v.reshape(-1)[at] * (1 / TILE)).astype(np.int64)
        h = (cells_u * 73856093) ^ (cells_v * 19349663) ^ (self.raster.seed[ids] * 83492791)
        h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFF
        lit = h < self.raster.lit[ids] * 65536
        return at[lit], glass[at[lit]]

    def add_lit_windows(self, image: np.ndarray, colour: np.ndarray) -> np.ndarray:
        """``image`` (H, W, 3) plus ``colour`` times the coverage of lit windows (in place)."""
        at, coverage = self._lit_windows
        pixels = image.reshape(-1, 3)
        pixels[at] += coverage[:, None] * np.asarray(colour, np.float32)
        return image

    def points(self, factor: int) -> np.ndarray:
        """Camera-frame 3-D points of a 1/``factor`` resolution grid (for lighting)."""
        cam = self.cam
        h, w = cam.height // factor, cam.width // factor
        depth = cv2.resize(self.depth, (w, h), interpolation=cv2.INTER_NEAREST)
        u, v = _grid_centres(h, w, factor)
        scale = depth / cam.focal
        return np.stack([(u - cam.cx) * scale, (cam.cy - v) * scale, depth], -1)

    def lights(self) -> np.ndarray:
        """(n, 11) light sources in camera coordinates: pos, colour, direction, reach, exponent."""
        lights = self.raster.mesh.world_lights()
        cam = self.cam
        lights[:, 0:3] = cam.to_camera(lights[:, 0:3])
        lights[:, 6:9] = cam.to_camera(lights[:, 6:9]) - cam.to_camera(np.zeros((1, 3)))
        return lights
