"""Geometry -> pixels: one id buffer, then everything else by table lookup.

Polygons are drawn far to near (painter's algorithm) as *ids* into a single
int32 buffer, one `cv2.fillPoly` each. Every visible pixel then knows its
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
from edgeseg.data.synth.textures import DENSITY, TILE, atlas, atlas_maps
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


def channels3(plane: np.ndarray) -> np.ndarray:
    """(H, W) -> contiguous (H, W, 3), much faster to combine than a broadcast view."""
    return cv2.merge([plane] * 3)


def _rotate(rel: np.ndarray, obj: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Rotate local (N, 3) directions of objects ``obj`` by heading-minus-yaw ``rel``."""
    c, s = np.cos(rel)[obj], np.sin(rel)[obj]
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    return np.stack([c * x + s * z, y, -s * x + c * z], 1)


@dataclass
class Raster:
    """The id buffer and per-id tables of one rendered view (tables are float32 (n, k))."""

    cam: Camera
    ids: np.ndarray        # (H, W) int32
    coef: tuple[np.ndarray, np.ndarray, np.ndarray]  # factors of u, v and 1 giving (s, t, 1/z) z
    labels: np.ndarray     # (n,) uint8
    base: np.ndarray       # (n, 3) albedo
    glass: np.ndarray      # (n, 3) window glass colour
    emission: np.ndarray   # (n, 3)
    scalars: np.ndarray    # (n, 4) material, texels per pixel per metre of depth, lit, seed
    normals: np.ndarray    # (n, 3) camera-frame normals
    wrap: np.ndarray       # (n,) shading wrap
    ground: np.ndarray     # (n,) bool: receives cast shadows
    mesh: Mesh


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
    visible = facing < -1e-3 * np.linalg.norm(point, axis=1)

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
    a_sel = attrs[poly]

    layer = mesh.layers[a_sel[:, A_OBJ].astype(int)]
    depth_key = np.where(layer <= GROUND_LAYERS, 0.0, origin[a_sel[:, A_OBJ].astype(int), 2])
    order = np.lexsort((np.arange(len(poly)), -depth_key, layer))
    if len(poly) == 0 or poly[order[0]] != 0:
        raise ValueError("the first polygon of a mesh must be the sky")

    material = a_sel[:, A_MAT].astype(int)
    du = DENSITY[material] * a_sel[:, A_SU]
    dv = DENSITY[material] * a_sel[:, A_SV]
    basis = frames[poly]
    m = np.stack([basis[:, 1] / du[:, None], basis[:, 2] / dv[:, None], basis[:, 3]], 2)
    coef = np.linalg.inv(cam.intrinsics() @ m).reshape(-1, 9)

    ids = np.zeros((cam.height, cam.width), np.int32)
    fixed = np.round(uv * (1 << _SHIFT)).astype(np.int32)
    draw = order[1:]
    for k, a, b in zip(draw.tolist(), starts[sel[draw]].tolist(), starts[sel[draw] + 1].tolist()):
        cv2.fillPoly(ids, [fixed[a:b]], k, cv2.LINE_8, _SHIFT)

    pose = mesh.poses[a_sel[:, A_OBJ].astype(int)]
    seed = (np.round(pose[:, 0] * 7) * 92821 + np.round(pose[:, 2] * 7) * 68917) % 65521
    scalars = np.stack([material, np.maximum(du, dv) / cam.focal, a_sel[:, A_LIT], seed], 1)
    table = coef.reshape(-1, 3, 3).astype(np.float32)  # rows: s, t, 1/z; columns: u, v, 1
    return Raster(
        cam=cam,
        ids=ids,
        coef=tuple(np.ascontiguousarray(table[:, :, k]) for k in range(3)),
        labels=a_sel[:, A_LABEL].astype(np.uint8),
        base=a_sel[:, A_R:A_B + 1].astype(np.float32),
        glass=a_sel[:, A_GR:A_GB + 1].astype(np.float32),
        emission=a_sel[:, A_ER:A_EB + 1].astype(np.float32),
        scalars=scalars.astype(np.float32),
        normals=basis[:, 0],
        wrap=a_sel[:, A_WRAP],
        ground=(layer >= L_GROUND) & (layer <= GROUND_LAYERS),
        mesh=mesh,
    )


def _saturate(colours: np.ndarray, amount: float) -> np.ndarray:
    """Colours pushed away from grey (the flat, game-like style)."""
    grey = colours.mean(-1, keepdims=True)
    return np.clip(grey + (colours - grey) * amount, 0, 1)


def _fill_ground_polygons(raster: Raster, polygons: list[np.ndarray]) -> np.ndarray:
    """Rasterise world xz polygons lying on the ground into a bool mask of ground pixels."""
    cam = raster.cam
    mask = np.zeros((cam.height, cam.width), np.uint8)
    if polygons:
        counts = [len(p) for p in polygons]
        xz = np.concatenate(polygons)
        world = np.stack([xz[:, 0], np.zeros(len(xz)), xz[:, 1]], 1)
        verts, starts = clip_near(cam.to_camera(world), np.concatenate([[0], np.cumsum(counts)]),
                                  cam.near)
        fixed = np.round(project(cam, verts) * (1 << _SHIFT)).astype(np.int32)
        contours = [fixed[a:b] for a, b in zip(starts[:-1], starts[1:]) if b - a >= 3]
        cv2.fillPoly(mask, contours, 1, cv2.LINE_8, _SHIFT)
    return mask.astype(bool) & raster.ground[raster.ids]


class Surface:
    """Per-pixel albedo, depth, labels and the lighting inputs of one view.

    Domain-independent: `domains.apply_domain` lights it as day, night, ...
    """

    def __init__(self, raster: Raster, style: str = "textured") -> None:
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")
        if len(raster.labels) > 32767:
            raise ValueError("more than 32767 polygons in one view")
        self.raster = raster
        self.style = style
        cam = raster.cam
        u3, v3 = _pixel_grid(cam.height, cam.width)
        # cv2.remap with nearest lookup is a fast gather of per-id table rows
        self._map, _ = cv2.convertMaps(raster.ids.astype(np.float32), np.zeros_like(u3[..., 0]),
                                       cv2.CV_16SC2, nninterpolation=True)
        self.labels = self.lookup(raster.labels)
        cu, cv, c1 = (self.lookup(t) for t in raster.coef)
        num = cu * u3
        num += cv * v3
        num += c1
        self.depth = 1.0 / np.maximum(num[..., 2], np.float32(1 / _MAX_DEPTH))
        self.tex_u = num[..., 0] * self.depth
        self.tex_v = num[..., 1] * self.depth
        self._scalars = self.lookup(raster.scalars)
        map_x, map_y = atlas_maps(self.tex_u, self.tex_v, self._scalars[..., 0])
        lum, self.glass = cv2.split(cv2.remap(atlas(), map_x, map_y, cv2.INTER_LINEAR))
        base, glass = raster.base, raster.glass
        if style == "flat":
            base, glass = _saturate(base, 1.6), _saturate(glass, 1.6)
        self.albedo = cv2.blendLinear(self.lookup(base), self.lookup(glass), 1 - self.glass,
                                      self.glass)
        if style == "textured":
            # fade texture detail where a pixel covers more than ~2 texels (no moire)
            fade = np.minimum(np.float32(2.0) / (self.depth * self._scalars[..., 1] + 1e-6), 1)
            self.albedo *= channels3(1 + (lum - 1) * fade)
        self.sky = self.labels == _SKY

    @functools.cached_property
    def emission(self) -> np.ndarray:
        """(H, W, 3) light emitted by lamps, car lights and signals (scaled by the domain)."""
        return self.lookup(self.raster.emission)

    @functools.cached_property
    def contact(self) -> np.ndarray:
        """(H, W) bool: ground darkened under vehicles whatever the light."""
        mesh = self.raster.mesh
        return _fill_ground_polygons(self.raster, list(mesh.footprints(mesh.blobs)))

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
        base = mesh.footprints(mesh.casters[:, :5])
        ends = mesh.casters[:, 5:7, None, None] * reach  # (C, 2, 1, 2)
        prisms = (base[:, None] + ends).reshape(-1, 8, 2).astype(np.float32)
        hulls = [cv2.convexHull(pts)[:, 0].astype(float) for pts in prisms]
        shadow = _fill_ground_polygons(self.raster, hulls) | self.contact
        lit[shadow] = 0
        return lit

    def lit_windows(self) -> np.ndarray:
        """(H, W) glass coverage of the windows lit at night (a stable hash per window)."""
        cells_u = np.floor(self.tex_u * (1 / TILE)).astype(np.int64)  # one window per tile
        cells_v = np.floor(self.tex_v * (1 / TILE)).astype(np.int64)
        seed = self._scalars[..., 3].astype(np.int64)
        h = (cells_u * 73856093) ^ (cells_v * 19349663) ^ (seed * 83492791)
        h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFF
        return self.glass * (h < self._scalars[..., 2] * 65536)

    def points(self, factor: int) -> np.ndarray:
        """Camera-frame 3-D points of a 1/``factor`` resolution grid (for lighting)."""
        cam = self.cam
        h, w = cam.height // factor, cam.width // factor
        depth = cv2.resize(self.depth, (w, h), interpolation=cv2.INTER_NEAREST)
        v, u = np.mgrid[0:h, 0:w].astype(np.float32) * factor + (factor - 1) / 2
        scale = depth / cam.focal
        return np.stack([(u - cam.cx) * scale, (cam.cy - v) * scale, depth], -1)

    def lights(self) -> np.ndarray:
        """(n, 11) light sources in camera coordinates: pos, colour, direction, reach, exponent."""
        lights = self.raster.mesh.world_lights()
        cam = self.cam
        lights[:, 0:3] = cam.to_camera(lights[:, 0:3])
        lights[:, 6:9] = cam.to_camera(lights[:, 6:9]) - cam.to_camera(np.zeros((1, 3)))
        return lights
