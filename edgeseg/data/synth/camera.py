"""A pinhole camera over a flat world, and batched polygon clipping and projection.

World frame: x to the right of the road, y up (ground at y = 0), z along the
road. The camera only yaws, so the horizon is the row ``cy`` and ground depth
depends on the image row alone. Camera frame: x right, y up, z forward.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    focal: float
    cx: float
    cy: float
    x: float
    y: float
    z: float
    yaw: float
    near: float = 0.5

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> camera coordinates."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        dx = points[..., 0] - self.x
        dz = points[..., 2] - self.z
        out = np.empty(points.shape)
        out[..., 0] = c * dx - s * dz
        out[..., 1] = points[..., 1] - self.y
        out[..., 2] = s * dx + c * dz
        return out

    def perturbed(self, rng: np.random.Generator, pixels: float) -> Camera:
        """The same camera nudged by about ``pixels`` of image motion (yaw, height, position)."""
        angle = pixels / self.focal
        return dataclasses.replace(
            self,
            x=self.x + rng.uniform(-0.25, 0.25),
            y=self.y + rng.uniform(-0.08, 0.08),
            z=self.z + rng.uniform(-0.5, 0.5),
            yaw=self.yaw + rng.uniform(-angle, angle),
            cy=self.cy + rng.uniform(-0.5, 0.5) * pixels,
        )


def clip_near(points: np.ndarray, starts: np.ndarray, near: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip polygons (camera coordinates) against the plane z = near, all at once.

    ``starts`` holds the first vertex of each polygon plus the total count;
    returns the clipped vertices and their starts (a polygon may end up empty).
    """
    inside = points[:, 2] >= near
    if inside.all():
        return points, starts
    nxt = np.arange(1, len(points) + 1)
    nxt[starts[1:] - 1] = starts[:-1]
    at = np.flatnonzero(inside != inside[nxt])  # edges crossing the plane
    a, b = points[at], points[nxt[at]]
    cut = a + ((near - a[:, 2]) / (b[:, 2] - a[:, 2]))[:, None] * (b - a)
    kept = inside.astype(np.intp)  # per vertex: itself if inside, then its edge's cut
    kept[at] += 1
    ends = np.cumsum(kept)
    out = np.empty((ends[-1] if len(ends) else 0, 3))
    out[(ends - kept)[inside]] = points[inside]
    out[ends[at] - 1] = cut
    return out, np.concatenate([[0], ends])[starts]


def project(cam: Camera, points: np.ndarray) -> np.ndarray:
    """(N, 3) camera coordinates in front of the camera -> (N, 2) pixel coordinates."""
    scale = cam.focal / points[:, 2]
    out = np.empty((len(points), 2))
    out[:, 0] = cam.cx + points[:, 0] * scale
    out[:, 1] = cam.cy - points[:, 1] * scale
    return out
