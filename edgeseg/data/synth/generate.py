"""Rendering scenes in memory: one scene in several domains, day/night pairs.

Every random choice comes from `np.random.Generator`s seeded by (seed,
purpose, index, ...), so the same arguments give identical bytes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeseg.data.synth.camera import Camera
from edgeseg.data.synth.domains import apply_domain, domain_index
from edgeseg.data.synth.render import Surface, rasterize
from edgeseg.data.synth.world import PURPOSES, World

DEFAULT_SIZE = (512, 256)
PAIR_SHIFT = (2.0, 6.0)  # pixels of image motion between a day image and its night pair


@dataclass
class SceneRender:
    """A scene's labels (uint8 trainIds), depth (metres) and one RGB image per domain."""

    labels: np.ndarray
    depth: np.ndarray
    images: dict[str, np.ndarray]


def domain_rng(seed: int, purpose: str, index: int, domain: str) -> np.random.Generator:
    """The RNG of one domain of one scene (independent of which other domains are drawn)."""
    return np.random.default_rng([int(seed), PURPOSES[purpose], int(index), 100 + domain_index(domain)])


def surface_of(world: World, cam: Camera, style: str, t: float = 0.0) -> Surface:
    return Surface(rasterize(world.mesh(cam, t), cam), style)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the system.

    A frame allocates tens of MB of short-lived image-size arrays; by default glibc
    hands them back and the next frame page-faults them in again, which costs
    about a third of the frame time. Process-wide, so entry points that generate
    many frames (the CLI, benchmarks) opt in. Returns False where it is unavailable.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 64 << 20) and
                libc.mallopt(m_trim_threshold, 512 << 20))


def render_scene(seed: int, index: int, domains: Sequence[str] = ("day", "night"),
                 size: tuple[int, int] = DEFAULT_SIZE, style: str = "textured") -> SceneRender:
    """Scene ``index`` of ``seed`` at ``size`` (width, height), lit in each of ``domains``."""
    world = World(seed, "scene", index)
    surface = surface_of(world, world.camera(*size), style)
    images = {d: apply_domain(surface, d, domain_rng(seed, "scene", index, d)) for d in domains}
    return SceneRender(surface.labels, surface.depth, images)


@dataclass
class PairRender:
    """A day image and a night image of one scene from slightly different cameras, with
    the day labels (what a pair set stores) and the night view's own labels."""

    day: np.ndarray
    night: np.ndarray
    labels: np.ndarray
    night_labels: np.ndarray


def render_pair(seed: int, index: int, size: tuple[int, int] = DEFAULT_SIZE,
                style: str = "textured") -> PairRender:
    """Pair ``index`` of ``seed``: the night camera is nudged by a few pixels (position,
    height, yaw), so the two images are only coarsely aligned."""
    world = World(seed, "pair", index)
    cam = world.camera(*size)
    day = surface_of(world, cam, style)
    rng = np.random.default_rng([int(seed), PURPOSES["pair"], int(index), 99])
    night = surface_of(world, cam.perturbed(rng, rng.uniform(*PAIR_SHIFT)), style)
    return PairRender(apply_domain(day, "day", domain_rng(seed, "pair", index, "day")),
                      apply_domain(night, "night", domain_rng(seed, "pair", index, "night")),
                      day.labels, night.labels)
