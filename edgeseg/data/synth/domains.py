"""Lighting one rendered view as day, night, dusk, fog or rain.

All domains light the same `render.Surface` (albedo, depth, labels, lights),
so a scene's label map is shared by all its domains and only appearance
changes. The gap is made to be real: night is dark, blue-cast and noisy, lit
by street lamps, headlights and windows with bloom; fog fades with depth
(I = I t + A (1 - t), t = exp(-beta depth)); rain is dim, desaturated, streaked
and reflective. Lights and blurs work at 1/8 and 1/4 resolution for speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edgeseg.data.synth.render import Surface, channels3
from edgeseg.data.synth.textures import bank_slice, gaussian_bank, rain_bank

DOMAINS = ("day", "night", "dusk", "fog", "rain")
#: the ego car's headlights (camera frame): position, colour, direction, reach, exponent
_EGO_LIGHTS = np.array([[-0.6, -0.8, 0.5, 0.22, 0.21, 0.19, 0.0, -0.08, 1.0, 12.0, 8.0],
                        [0.6, -0.8, 0.5, 0.22, 0.21, 0.19, 0.0, -0.08, 1.0, 12.0, 8.0]])
_SIDEWALK = 1  # road (0) and sidewalk get wet


def _sun(rng: np.random.Generator, elevation: tuple[float, float]) -> np.ndarray:
    """A unit world vector towards the sun at a random azimuth."""
    el = math.radians(rng.uniform(*elevation))
    az = rng.uniform(0, 2 * math.pi)
    return np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])


def _sky(surface: Surface, horizon: Any, zenith: Any, power: float = 0.6) -> np.ndarray:
    """(H, W, 3) vertical sky gradient from the horizon row up to the top of the image."""
    cam = surface.cam
    rows = np.arange(cam.height, dtype=np.float32)
    t = np.clip((cam.cy - rows) / max(cam.cy, 1.0), 0, 1) ** power
    low, high = np.asarray(horizon, np.float32), np.asarray(zenith, np.float32)
    grad = (low + t[:, None] * (high - low))[:, None]
    return cv2.resize(grad, (cam.width, cam.height), interpolation=cv2.INTER_NEAREST)


def _with_sky(light: np.ndarray, surface: Surface, sky: np.ndarray) -> np.ndarray:
    """Light with sky pixels replaced by the sky's own radiance (in place)."""
    cv2.copyTo(sky, surface.sky.view(np.uint8), light)
    return light


def _lit(light: np.ndarray, surface: Surface, sky: np.ndarray) -> np.ndarray:
    """albedo * light, sky pixels showing ``sky`` instead (computed in ``light``)."""
    return np.multiply(_with_sky(light, surface, sky), surface.albedo, out=light)


def _planes(plane: np.ndarray, rgb: Any, base: np.ndarray | None = None,
            rgb_base: Any = None) -> np.ndarray:
    """(H, W, 3) = plane * rgb (+ base * rgb_base), computed plane by plane (much faster
    than broadcasting an (H, W, 1) array over colour channels)."""
    if base is None:
        return cv2.merge([plane * np.float32(c) for c in rgb])
    return cv2.merge([cv2.addWeighted(plane, float(c), base, float(b), 0.0)
                      for c, b in zip(rgb, rgb_base)])


def _sunlit(surface: Surface, sun: np.ndarray, sun_rgb: Any, ambient: Any) -> np.ndarray:
    """(H, W, 3) irradiance from the sky (ambient) and the sun (with cast shadows)."""
    occlusion = surface.occlusion
    direct = surface.direct_sun(sun)
    direct *= occlusion
    return _planes(direct, sun_rgb, occlusion, ambient)


def _point_lights(surface: Surface, lights: np.ndarray, ambient: Any = (0.0, 0.0, 0.0)
                  ) -> np.ndarray:
    """(H, W, 3) irradiance from spot and down lights (camera frame rows: position,
    colour, direction, reach, exponent) plus ``ambient``, computed at 1/8 resolution:
    light is smooth."""
    cam = surface.cam
    px, py, pz = cv2.split(surface.points(8))
    lights = lights[(lights[:, 2] > -5) & (lights[:, 2] < 90)].astype(np.float32)
    out = np.empty(px.shape + (3,), np.float32)
    out[:] = ambient
    for exponent in np.unique(lights[:, 10]):
        group = lights[lights[:, 10] == exponent]
        at = group[:, :, None, None]  # (k, 11, 1, 1): broadcast over the grid
        dx, dy, dz = px - at[:, 0], py - at[:, 1], pz - at[:, 2]
        dist2 = dx * dx + dy * dy + dz * dz + np.float32(1e-6)
        cos = np.maximum((dx * at[:, 6] + dy * at[:, 7] + dz * at[:, 8]) / np.sqrt(dist2), 0)
        spot = _power(cos, int(exponent))
        weight = spot / (1 + dist2 / (at[:, 9] * at[:, 9]))
        out += np.tensordot(weight, group[:, 3:6], axes=(0, 0)).astype(np.float32)
    return cv2.resize(out, (cam.width, cam.height), interpolation=cv2.INTER_LINEAR)


def _power(x: np.ndarray, n: int) -> np.ndarray:
    """``x ** n`` for a small integer ``n`` >= 1 by repeated squaring (no pow())."""
    out = None
    while n:
        if n & 1:
            out = x if out is None else out * x
        n >>= 1
        if n:
            x = x * x
    return out


def _bloom(glow: np.ndarray, strength: float) -> np.ndarray:
    """A soft halo around bright lights: two blurs at low resolution."""
    h, w = glow.shape[:2]
    small = cv2.pyrDown(cv2.pyrDown(glow))  # 1/4 resolution
    size = (small.shape[1], small.shape[0])
    wide = cv2.resize(cv2.GaussianBlur(cv2.pyrDown(small), (0, 0), 2.5), size,
                      interpolation=cv2.INTER_LINEAR)  # a wide halo from 1/8 resolution
    halo = cv2.addWeighted(cv2.GaussianBlur(small, (0, 0), 1.5), 0.6 * strength, wide,
                           0.9 * strength, 0.0)
    return cv2.resize(halo, (w, h), interpolation=cv2.INTER_LINEAR)


def _glow(img: np.ndarray, glow: np.ndarray, strength: float) -> np.ndarray:
    """``img`` plus lights and their bloom (in place)."""
    img += glow
    img += _bloom(glow, strength)
    return img


def _lights(surface: Surface, emission: float, windows: np.ndarray) -> np.ndarray:
    """(H, W, 3) light of lamps, vehicles and signals (times ``emission``) and of the lit
    windows (``windows``: their colour)."""
    glow = surface.emission * np.float32(emission)
    return surface.add_lit_windows(glow, windows)


def _haze(img: np.ndarray, surface: Surface, beta: float, airlight: np.ndarray) -> np.ndarray:
    """Depth-dependent haze: I t + A (1 - t) with t = exp(-beta depth)."""
    t = cv2.exp(surface.depth * np.float32(-beta))
    air = np.empty_like(img)
    air[:] = airlight
    return cv2.blendLinear(img, air, t, 1 - t)


def _sensor_noise(img: np.ndarray, rng: np.random.Generator, read: float, shot: float
                  ) -> np.ndarray:
    """Photon (signal-dependent) and read noise from a pre-drawn bank (in place)."""
    h, w = img.shape[:2]
    noise = bank_slice(gaussian_bank(h, w), rng, h, w)
    sigma = cv2.max(img, 0.0)
    cv2.sqrt(sigma, sigma)
    cv2.addWeighted(sigma, shot, sigma, 0.0, read, dst=sigma)
    return cv2.accumulateProduct(sigma, noise, img)


def _day_look(rng: np.random.Generator) -> dict[str, Any]:
    return {"sun": _sun(rng, (25, 65)), "sun_rgb": np.array([1.0, 0.97, 0.9]) * rng.uniform(0.75, 0.95),
            "ambient": np.array([0.55, 0.62, 0.75]) * rng.uniform(0.5, 0.65),
            "exposure": rng.uniform(0.95, 1.1)}


def _day(surface: Surface, look: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    exposure = look["exposure"]
    light = _sunlit(surface, look["sun"], look["sun_rgb"] * exposure, look["ambient"] * exposure)
    sky = _sky(surface, np.multiply((0.8, 0.86, 0.95), exposure),
               np.multiply((0.3, 0.5, 0.85), exposure))
    img = _lit(light, surface, sky)
    return cv2.scaleAdd(surface.emission, 0.15, img, dst=img)


def _night_look(rng: np.random.Generator) -> dict[str, Any]:
    return {"ambient": np.array([0.04, 0.05, 0.09]) * rng.uniform(0.6, 1.3),
            "glow": np.array([0.09, 0.07, 0.06]) * rng.uniform(0.6, 1.4),
            "warm": np.array([1.0, rng.uniform(0.7, 0.85), rng.uniform(0.35, 0.55)]),
            "windows": rng.uniform(0.5, 0.9), "bloom": rng.uniform(0.6, 1.0),
            "read": rng.uniform(0.008, 0.02), "shot": rng.uniform(0.02, 0.05)}


def _night(surface: Surface, look: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    lights = np.concatenate([surface.lights(), _EGO_LIGHTS])
    light = _point_lights(surface, lights, look["ambient"])
    if surface.contact_any:
        light *= surface.occlusion3
    img = _lit(light, surface, _sky(surface, look["glow"], (0.01, 0.012, 0.03), 0.35))
    img = _glow(img, _lights(surface, 1.0, look["warm"] * look["windows"]), look["bloom"])
    return _sensor_noise(img, rng, look["read"], look["shot"])


def _dusk_look(rng: np.random.Generator) -> dict[str, Any]:
    return {"sun": _sun(rng, (3, 10)), "sun_rgb": np.array([1.0, 0.55, 0.28]) * rng.uniform(0.7, 1.0),
            "ambient": np.array([0.33, 0.3, 0.45]) * rng.uniform(0.3, 0.45),
            "warm": np.array([1.0, rng.uniform(0.7, 0.85), rng.uniform(0.35, 0.55)])}


def _dusk(surface: Surface, look: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    light = _sunlit(surface, look["sun"], look["sun_rgb"], look["ambient"])
    cv2.scaleAdd(_point_lights(surface, surface.lights()), 0.4, light, dst=light)
    img = _lit(light, surface, _sky(surface, (1.0, 0.58, 0.32), (0.22, 0.22, 0.48), 0.5))
    img = _glow(img, _lights(surface, 0.6, look["warm"] * 0.35), 0.5)
    img *= np.float32(1.12)  # more contrast: (img - 0.5) 1.12 + 0.5
    img -= np.float32(0.06)
    return img


def _fog_look(rng: np.random.Generator) -> dict[str, Any]:
    return {"sun": _sun(rng, (30, 60)), "beta": rng.uniform(0.02, 0.06),
            "airlight": np.array([0.78, 0.8, 0.82]) * rng.uniform(0.9, 1.05)}


def _fog(surface: Surface, look: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    light = _sunlit(surface, look["sun"], (0.3, 0.3, 0.3), (0.7, 0.72, 0.75))
    img = _lit(light, surface, _sky(surface, (0.85, 0.86, 0.88), (0.75, 0.78, 0.82)))
    cv2.scaleAdd(surface.emission, 0.3, img, dst=img)
    return _haze(img, surface, look["beta"], look["airlight"])


def _rain_look(rng: np.random.Generator) -> dict[str, Any]:
    return {"ambient": np.array([0.5, 0.53, 0.58]) * rng.uniform(0.55, 0.75),
            "wet": rng.uniform(0.6, 1.0), "streaks": rng.uniform(0.15, 0.3),
            "beta": rng.uniform(0.005, 0.015)}


def _rain(surface: Surface, look: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    cam = surface.cam
    light = _planes(surface.occlusion, look["ambient"])
    img = _lit(light, surface, _sky(surface, (0.62, 0.64, 0.66), (0.45, 0.47, 0.5)))
    grey = channels3(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    img = cv2.addWeighted(img, 0.55, grey, 0.45, 0.0)  # desaturated
    # wet ground: mirror the scene about the horizon, blurred, stronger far away
    rows = np.clip(2 * int(round(cam.cy)) - np.arange(cam.height), 0, cam.height - 1)
    glow = surface.emission * np.float32(0.8)
    mirror = cv2.blur((img + glow)[rows], (1, 9))
    wet = (surface.labels <= _SIDEWALK) * cv2.min(surface.depth * np.float32(1 / 60) + 0.2, 0.5)
    wet *= np.float32(look["wet"])
    img = cv2.blendLinear(img, mirror, 1 - wet, wet)
    img = _glow(img, glow, 0.4)
    streaks = bank_slice(rain_bank(cam.height, cam.width), rng, cam.height, cam.width)
    img += channels3(streaks * np.float32(look["streaks"]))
    img = _haze(img, surface, look["beta"], np.array([0.55, 0.57, 0.6]))
    return _sensor_noise(img, rng, 0.01, 0.0)


_DOMAINS: dict[str, tuple[Callable[[np.random.Generator], dict[str, Any]],
                          Callable[[Surface, dict[str, Any], np.random.Generator], np.ndarray]]] = {
    "day": (_day_look, _day),
    "night": (_night_look, _night),
    "dusk": (_dusk_look, _dusk),
    "fog": (_fog_look, _fog),
    "rain": (_rain_look, _rain),
}


@dataclass(frozen=True)
class Look:
    """A domain with its sampled conditions (sun, fog density, light colours, ...): kept
    fixed over a video while per-frame noise varies."""

    domain: str
    params: dict[str, Any] = field(hash=False)


def domain_index(domain: str) -> int:
    """The position of ``domain`` in `DOMAINS`, with a clear error for unknown names."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")
    return DOMAINS.index(domain)


def sample_look(domain: str, rng: np.random.Generator) -> Look:
    domain_index(domain)
    sample, _ = _DOMAINS[domain]
    return Look(domain, sample(rng))


def apply_domain(surface: Surface, look: Look | str, rng: np.random.Generator) -> np.ndarray:
    """Light ``surface`` as a domain (a `Look`, or a domain name to sample one from
    ``rng``); ``rng`` also draws noise. Returns an (H, W, 3) uint8 RGB image."""
    if isinstance(look, str):
        look = sample_look(look, rng)
    _, render = _DOMAINS[look.domain]
    img = render(surface, look.params, rng)
    # saturating conversion: negative values (noise) become 0
    return cv2.addWeighted(img, 255.0, img, 0.0, 0.0, dtype=cv2.CV_8U)
