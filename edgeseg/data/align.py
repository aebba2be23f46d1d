"""Day/night alignment by a homography from feature matches (numpy + OpenCV, torch-free).

DANIA (Sec. 3.4, Eq. 18) warps the day prediction onto the night image with a coarse
flow: one homography per day/night pair, estimated from feature matches with RANSAC.
Here:

- `estimate_homography` estimates it for one pair: both images as CLAHE-equalised grey
  at the night size (dark frames have too little contrast for a detector otherwise),
  ORB (or SIFT) features, Lowe's ratio test, ``cv2.findHomography`` with RANSAC, and
  checks that reject a matrix no nearby camera could produce. A rejected pair gets the
  identity and ``ok=False``; the caller decides what identity means (the readers'
  coarse alignment).
- `compute_alignments` / `load_alignments`: one JSON cache per pair dataset (name ->
  matrix, counts, image sizes), computed once in the main process and read by the
  trainer; a change of the estimator settings, of the dataset or of an image size
  recomputes what it invalidates.
- `AlignedPairs`: a reader view that adds ``sample["homography"]``.
- `global_descriptor` and `DerivedPairs`: retrieval of a day frame for each night
  frame (``edgeseg derive pairs``) and the reader of its output folder.

A homography ``H`` maps NIGHT pixel coordinates (x, y; integers at pixel centres) to DAY
pixel coordinates of the images as the reader stores them; `edgeseg.data.transforms`
carries it through augmentation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.data.base import DatasetError
from edgeseg.data.readers._common import Item, Reader
from edgeseg.data.transforms import Size, resize_matrix
from edgeseg.fileio import write_json
from edgeseg.labels import get_label_space

log = logging.getLogger(__name__)

FEATURES = ("orb", "sift")
CACHE_FORMAT = "edgeseg-alignments/1"
#: the format of every ``edgeseg derive`` folder's manifest.json
DERIVE_FORMAT = "edgeseg-derive/1"
#: computed entries between two writes of the cache (a long first run keeps its work)
_SAVE_EVERY = 200


class AlignmentError(DatasetError):
    """An alignment cache or derived-pairs folder that cannot be used as asked."""


@dataclass(frozen=True)
class AlignSettings:
    """The estimator's settings; all of them key the cache (a change recomputes).

    Thresholds and why:

    - ``max_features`` 2000: ORB's keypoint budget; enough for 1080p street scenes,
      cheap on CPU.
    - ``ratio`` 0.75: Lowe's ratio test; drops ambiguous matches (repeated facades).
    - ``ransac_threshold`` 5 px: reprojection tolerance at the work size; the two
      cameras differ in depth (parallax), so a coarse flow needs some slack.
    - ``min_inliers`` 15: below it RANSAC fits noise (4 points always fit; a handful of
      chance matches often agree on some matrix).
    - ``min_area_scale`` / ``max_area_scale`` 0.1 / 10: the determinant of the 2x2 part
      (local area scale); nearby cameras do not zoom more than ~3x per axis, a
      negative one mirrors the image.
    - ``max_anisotropy`` 1.3: the ratio of the 2x2 part's singular values; nearby cameras
      zoom about equally along both axes and turn a little, so a strong shear or a
      one-axis stretch is a fit to chance matches (a synthetic day/night pair gave
      scales 1.1 / 1.29 with shear 0.45: ratio 1.49).
    - ``max_perspective`` 0.5: the perspective denominator ``h20 x + h21 y + 1`` stays
      within 1 +- 0.5 at every corner (stronger tilts are RANSAC artefacts).
    - ``corner_margin`` 0.5: the night image's corners map at most half an image size
      outside the day image.
    - ``max_side`` 1280: the work size is the night size, scaled down so its longer
      side is at most this (speed; the matrix is returned in full-size coordinates).
    - ``clahe_clip`` 2.0 / ``clahe_tiles`` 8: CLAHE on the grey images of both frames.
    """

    features: str = "orb"
    max_features: int = 2000
    ratio: float = 0.75
    ransac_threshold: float = 5.0
    min_inliers: int = 15
    min_area_scale: float = 0.1
    max_area_scale: float = 10.0
    max_anisotropy: float = 1.3
    max_perspective: float = 0.5
    corner_margin: float = 0.5
    max_side: int = 1280
    clahe_clip: float = 2.0
    clahe_tiles: int = 8

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"features={self.features!r}: choose one of {', '.join(FEATURES)}")
        if self.features == "sift" and not hasattr(cv2, "SIFT_create"):
            raise ValueError(f"features='sift' needs OpenCV >= 4.4 with SIFT (this is "
                             f"{cv2.__version__}); use features='orb'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class Alignment:
    """One pair's estimate: ``matrix`` maps night pixel coordinates to day pixel
    coordinates (3x3 float64; the identity when ``ok`` is False); ``matches`` the
    ratio-test matches, ``inliers`` those RANSAC kept, ``inlier_rate`` their share;
    ``reason`` why it was rejected (and notes, e.g. a resized day image)."""

    matrix: np.ndarray
    ok: bool
    matches: int
    inliers: int
    inlier_rate: float
    reason: str
    day_size: Size = (0, 0)
    night_size: Size = (0, 0)

    def to_json(self) -> dict[str, Any]:
        return {"matrix": self.matrix.tolist(), "ok": self.ok, "inliers": self.inliers,
                "matches": self.matches, "inlier_rate": self.inlier_rate,
                "reason": self.reason,
                "size": {"day": list(self.day_size), "night": list(self.night_size)}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alignment:
        size = data.get("size", {})
        matrix = np.asarray(data["matrix"], np.float64)
        if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"matrix of shape {matrix.shape}, expected a finite 3x3")
        return cls(matrix, bool(data["ok"]), int(data["matches"]), int(data["inliers"]),
                   float(data["inlier_rate"]), str(data.get("reason", "")),
                   _size(size.get("day")), _size(size.get("night")))


def _size(value: Any) -> Size:
    return (int(value[0]), int(value[1])) if value else (0, 0)


# --- estimation ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Features:
    """Keypoints (N, 2 float32, work-size pixel coordinates) and descriptors of one
    image at work size ``size`` (h, w); ``shape`` is its stored (h, w)."""

    points: np.ndarray
    descriptors: np.ndarray | None
    size: Size
    shape: Size


def work_size(night_shape: Size, max_side: int) -> Size:
    """The size both images are matched at: the night size, its longer side capped."""
    h, w = night_shape
    f = min(1.0, max_side / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def equalised_grey(image: np.ndarray, size: Size, settings: AlignSettings) -> np.ndarray:
    """CLAHE-equalised grey of RGB ``image`` at ``size`` (h, w)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    if grey.shape[:2] != size:
        grey = cv2.resize(grey, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    tiles = settings.clahe_tiles
    return cv2.createCLAHE(clipLimit=settings.clahe_clip, tileGridSize=(tiles, tiles)).apply(grey)


def _detector(settings: AlignSettings) -> Any:
    if settings.features == "sift":
        return cv2.SIFT_create(nfeatures=settings.max_features)
    return cv2.ORB_create(nfeatures=settings.max_features)


def detect_features(image: np.ndarray, size: Size, settings: AlignSettings) -> Features:
    """Keypoints and descriptors of ``image`` (RGB uint8) resized to work size ``size``."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an RGB uint8 image, got {image.dtype} of shape {image.shape}")
    keypoints, descriptors = _detector(settings).detectAndCompute(
        equalised_grey(image, size, settings), None)
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    h, w = image.shape[:2]
    return Features(points, descriptors, size, (h, w))


def _identity(night: Features, day: Features, reason: str, matches: int = 0,
              inliers: int = 0) -> Alignment:
    return Alignment(np.eye(3), False, matches, inliers,
                     inliers / matches if matches else 0.0, reason, day.shape, night.shape)


def _degenerate(matrix: np.ndarray, size: Size, settings: AlignSettings) -> str:
    """Why work-size homography ``matrix`` is not a plausible nearby-camera map ("" if
    it is)."""
    det = float(np.linalg.det(matrix[:2, :2]))
    if not settings.min_area_scale <= det <= settings.max_area_scale:
        return (f"degenerate: area scale {det:.3g} outside [{settings.min_area_scale}, "
                f"{settings.max_area_scale}]")
    sv = np.linalg.svd(matrix[:2, :2], compute_uv=False)
    if sv[0] > settings.max_anisotropy * sv[1]:
        return (f"degenerate: anisotropy {sv[0] / sv[1]:.3g} (shear or one-axis stretch) "
                f"above {settings.max_anisotropy}")
    h, w = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], np.float64)
    mapped = corners @ matrix.T
    denominators = mapped[:, 2]
    if np.any(np.abs(denominators - 1.0) > settings.max_perspective):
        return (f"degenerate: perspective denominator {denominators.min():.3g}.."
                f"{denominators.max():.3g} at the corners, outside 1 +- "
                f"{settings.max_perspective}")
    xy = mapped[:, :2] / denominators[:, None]
    m = settings.corner_margin
    if np.any(xy[:, 0] < -m * w) or np.any(xy[:, 0] > (1 + m) * w) or \
            np.any(xy[:, 1] < -m * h) or np.any(xy[:, 1] > (1 + m) * h):
        return f"degenerate: a corner maps more than {m:g} image sizes outside the day image"
    edges = np.roll(xy, -1, axis=0) - xy
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(
        edges, -1, axis=0)[:, 0]
    if not (np.all(turns > 0) or np.all(turns < 0)):
        return "degenerate: the night image's outline folds over (not convex)"
    return ""


def match_features(night: Features, day: Features, settings: AlignSettings) -> Alignment:
    """The night -> day homography of two images' features (same work size), in the
    stored pixel coordinates of each image, or the identity with the reason."""
    if night.size != day.size:
        raise ValueError(f"features at work sizes {night.size} and {day.size}; detect both "
                         "at one size")
    note = ""
    if day.shape != night.shape:
        note = (f"; day {day.shape[1]}x{day.shape[0]} resized to the night size "
                f"{night.shape[1]}x{night.shape[0]}")
    if len(night.points) < 4 or len(day.points) < 4 or night.descriptors is None \
            or day.descriptors is None:
        return _identity(night, day, f"too few features ({len(night.points)} night, "
                                     f"{len(day.points)} day keypoints){note}")
    norm = cv2.NORM_L2 if settings.features == "sift" else cv2.NORM_HAMMING
    pairs = cv2.BFMatcher(norm).knnMatch(night.descriptors, day.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < settings.ratio * p[1].distance]
    matches = len(good)
    if matches < 4:  # RANSAC still runs on fewer than min_inliers: its rate is reported
        return _identity(night, day, f"{matches} ratio-test matches, fewer than 4{note}",
                         matches)
    src = night.points[[g.queryIdx for g in good]]
    dst = day.points[[g.trainIdx for g in good]]
    matrix, mask = cv2.findHomography(src, dst, cv2.RANSAC, settings.ransac_threshold)
    if matrix is None or mask is None:
        return _identity(night, day, f"RANSAC found no homography{note}", matches)
    inliers = int(mask.sum())
    if inliers < settings.min_inliers:
        return _identity(night, day, f"{inliers} inliers, fewer than {settings.min_inliers}"
                                     f"{note}", matches, inliers)
    if not np.all(np.isfinite(matrix)) or abs(matrix[2, 2]) < 1e-12:
        return _identity(night, day, f"degenerate: not a finite matrix{note}", matches, inliers)
    matrix = matrix / matrix[2, 2]
    reason = _degenerate(matrix, night.size, settings)
    if reason:
        return _identity(night, day, reason + note, matches, inliers)
    # work-size coordinates -> each image's stored coordinates
    full = (np.linalg.inv(resize_matrix(day.shape, day.size)) @ matrix
            @ resize_matrix(night.shape, night.size))
    return Alignment(full / full[2, 2], True, matches, inliers, inliers / matches,
                     "ok" + note, day.shape, night.shape)


def estimate_homography(day: np.ndarray, night: np.ndarray, features: str = "orb",
                        **options: Any) -> Alignment:
    """The homography mapping night pixel coordinates to day pixel coordinates of one
    pair of RGB uint8 images (sizes may differ: the day image is matched at the night
    size); ``options`` are other `AlignSettings` fields."""
    settings = AlignSettings(features=features, **options)
    size = work_size(night.shape[:2], settings.max_side)
    return match_features(detect_features(night, size, settings),
                          detect_features(day, size, settings), settings)


# --- retrieval ----------------------------------------------------------------------------


def global_descriptor(image: np.ndarray, settings: AlignSettings | None = None) -> np.ndarray:
    """A 128-d unit vector for retrieval by cosine similarity: magnitude-weighted histograms
    of gradient orientation (8 unsigned bins) in a 4x4 grid of a CLAHE-equalised 64x48
    grey thumbnail. Gradients and equalisation make it nearly independent of brightness
    and colour, so a dusk frame can find its day view."""
    settings = settings or AlignSettings()
    grey = equalised_grey(image, (48, 64), settings).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.sqrt(gx * gx + gy * gy)
    bins = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * 8).astype(int), 7)
    cells = np.zeros((4, 4, 8), np.float64)
    rows, cols = np.indices(grey.shape)
    np.add.at(cells, (rows // 12, cols // 16, bins), magnitude)
    cells = np.sqrt(cells)  # Hellinger-style: strong edges do not dominate
    vector = cells.reshape(-1)
    return (vector / max(np.linalg.norm(vector), 1e-12)).astype(np.float32)


# --- stored sizes, names ------------------------------------------------------------------


def _png_size(path: Path) -> Size | None:
    """(h, w) from a PNG header (no decoding), or None for another format."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", head[16:24])
    return int(h), int(w)


def _image_size(path: Path) -> Size | None:
    size = _png_size(path)
    if size is None:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        size = None if image is None else (int(image.shape[0]), int(image.shape[1]))
    return size


def _items(reader: Any) -> list[Item] | None:
    """The `Item`s of the reader under any views (Unlabelled, relabelled, pseudo-labelled)
    when it is a pairs reader with a ``night`` file per item; None otherwise."""
    seen = 0
    while reader is not None and seen < 8:
        items = reader.__dict__.get("items") if hasattr(reader, "__dict__") else None
        if items and all(isinstance(it, Item) and "night" in it.extras for it in items):
            return list(items)
        reader = reader.__dict__.get("reader", reader.__dict__.get("base"))
        seen += 1
    return None


def pair_names(reader: Any) -> list[str]:
    """Sample names in order, from the items (no image read) when there are any."""
    items = _items(reader)
    if items is not None and len(items) == len(reader):
        return [str(it.name) for it in items]
    return [str(reader[i].get("name", i)) for i in range(len(reader))]


def _stored_sizes(reader: Any) -> dict[str, tuple[Size, Size]] | None:
    """name -> (day, night) sizes from the file headers, or None without item paths."""
    items = _items(reader)
    if items is None or len(items) != len(reader):
        return None
    out = {}
    for it in items:
        day, night = _image_size(it.image), _image_size(it.extras["night"])
        if day is None or night is None:
            return None
        out[str(it.name)] = (day, night)
    return out


def _unique(names: list[str], where: Any) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise AlignmentError(f"{where}: sample name {name!r} appears twice; alignments are "
                                 "kept by name, so pair names must be unique")
        seen.add(name)


# --- the cache ----------------------------------------------------------------------------


def _read_cache(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None
    return data


def load_alignments(path: str | Path, settings: AlignSettings | None = None,
                    data: str | None = None) -> dict[str, Alignment]:
    """The alignments of cache ``path``; with ``settings``/``data`` they must be what it was
    computed with (a one-line error otherwise)."""
    path = Path(path)
    cache = _read_cache(path)
    if cache is None:
        raise AlignmentError(f"{path}: not an alignment cache ({CACHE_FORMAT}); delete it and "
                             "start again: the main process recomputes it")
    if settings is not None and cache.get("settings") != settings.to_dict():
        raise AlignmentError(f"{path}: computed with other estimator settings; delete it and "
                             "start again: the main process recomputes it")
    if data is not None and cache.get("data") != data:
        raise AlignmentError(f"{path}: alignments of {cache.get('data')}, not of {data}; "
                             "point the cache at another file")
    try:
        return {str(k): Alignment.from_json(v) for k, v in cache["pairs"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise AlignmentError(f"{path}: a broken entry ({exc}); delete it and start again") \
            from None


def _estimate_sample(sample: Mapping[str, Any], settings: AlignSettings) -> Alignment:
    return estimate_homography(sample["image"], sample["night"], **settings.to_dict())


def compute_alignments(reader: Any, path: str | Path, settings: AlignSettings | None = None,
                       *, data: str = "", progress: bool = True,
                       estimate: Callable[[Mapping[str, Any], AlignSettings], Alignment]
                       = _estimate_sample) -> dict[str, Alignment]:
    """The alignment of every pair of ``reader`` (samples with ``image`` = day and
    ``night``), from cache ``path`` where valid, estimating the rest (and everything when
    the settings or ``data``, the dataset's identity, changed, or an image's size differs
    from the one cached); writes the cache atomically when anything changed."""
    path = Path(path)
    settings = settings or AlignSettings()
    names = pair_names(reader)
    _unique(names, getattr(reader, "root", path))
    cache = _read_cache(path)
    cached: dict[str, Alignment] = {}
    if cache is not None and cache.get("settings") == settings.to_dict() \
            and cache.get("data") == data:
        for name, entry in (cache.get("pairs") or {}).items():
            try:
                cached[str(name)] = Alignment.from_json(entry)
            except (KeyError, TypeError, ValueError, IndexError):
                continue
    elif cache is not None:
        log.info("alignment: %s was computed for other settings or data; recomputing", path)
    sizes = _stored_sizes(reader)
    table: dict[str, Alignment] = {}
    todo: list[int] = []
    for i, name in enumerate(names):
        hit = cached.get(name)
        if hit is not None and (sizes is None or sizes[name] == (hit.day_size, hit.night_size)):
            table[name] = hit
        else:
            todo.append(i)
    changed = bool(todo) or cache is None or set(cached) != set(names)
    if todo:
        from tqdm import tqdm

        with tqdm(total=len(todo), desc="alignment", unit="pair", dynamic_ncols=True,
                  disable=not progress) as bar:
            for n, i in enumerate(todo, 1):
                sample = reader[i]
                if "night" not in sample:
                    raise AlignmentError(f"{getattr(reader, 'root', '?')}: sample "
                                         f"{names[i]!r} has no night image; alignment needs "
                                         "a pairs dataset")
                table[names[i]] = estimate(sample, settings)
                bar.update(1)
                if n % _SAVE_EVERY == 0:
                    _write_cache(path, settings, data, names, table)
        log.info("alignment: estimated %d of %d pairs (cache %s)", len(todo), len(names), path)
    if changed:
        _write_cache(path, settings, data, names, table)
    return {name: table[name] for name in names}


def _write_cache(path: Path, settings: AlignSettings, data: str, names: list[str],
                 table: Mapping[str, Alignment]) -> None:
    pairs = {n: table[n].to_json() for n in names if n in table}
    write_json(path, {"format": CACHE_FORMAT, "data": data, "settings": settings.to_dict(),
                      "count": len(pairs), "ok": sum(1 for p in pairs.values() if p["ok"]),
                      "pairs": pairs})


#: (kind, marker in the reason) of every way an estimate fails
_FAILURES = (("too few features", "too few features"), ("too few matches", "ratio-test matches"),
             ("too few inliers", "inliers, fewer than"), ("no homography", "RANSAC found no"),
             ("degenerate", "degenerate"))


def fallback_summary(alignments: Mapping[str, Alignment]) -> str:
    """'N of M pairs fell back to identity (reason: count, ...)' or ''."""
    failed = [a for a in alignments.values() if not a.ok]
    if not failed:
        return ""
    kinds: dict[str, int] = {}
    for a in failed:
        kind = next((k for k, marker in _FAILURES if marker in a.reason), a.reason.split(";")[0])
        kinds[kind] = kinds.get(kind, 0) + 1
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    return f"{len(failed)} of {len(alignments)} pairs fell back to identity ({detail})"


class AlignedPairs:
    """A pairs reader with ``sample["homography"]``: float32 3x3, night -> day pixel
    coordinates of the images as stored (the identity where estimation failed: the
    reader's own coarse alignment). Warns once how many pairs fell back to identity."""

    def __init__(self, reader: Any, alignments: Mapping[str, Alignment],
                 cache: str | Path | None = None) -> None:
        self.reader = reader
        self.root = reader.root
        self.label_space = reader.label_space
        self.cache = str(cache) if cache is not None else "the alignments"
        self.matrices = {n: a.matrix.astype(np.float32) for n, a in alignments.items()}
        self.sizes = {n: (a.day_size, a.night_size) for n, a in alignments.items()}
        summary = fallback_summary(alignments)
        if summary:
            log.warning("alignment of %s: %s", self.root, summary)

    def __getattr__(self, name: str) -> Any:
        if name == "reader":  # unpickling in loader workers must not recurse
            raise AttributeError(name)
        return getattr(self.reader, name)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.reader[index])
        name = str(sample.get("name", index))
        matrix = self.matrices.get(name)
        if matrix is None:
            raise AlignmentError(f"{self.cache}: no alignment of pair {name!r}; delete it and "
                                 "start again: the main process recomputes it")
        day, night = sample["image"].shape[:2], sample["night"].shape[:2]
        if self.sizes[name] != ((0, 0), (0, 0)) and self.sizes[name] != (day, night):
            raise AlignmentError(
                f"{self.cache}: pair {name!r} was aligned at day {self.sizes[name][0]} / night "
                f"{self.sizes[name][1]}, its images are now {day} / {night}; delete the cache "
                "and start again: the main process recomputes it")
        sample["homography"] = matrix.copy()
        return sample


# --- derived pairs ------------------------------------------------------------------------

DERIVED_LAYOUT = (
    "DIR/manifest.json          edgeseg derive pairs: the label space and, per night frame,\n"
    "                           its day frame, both files, inliers, inlier rate, ok, matrix\n"
    "DIR/splits/pairs.txt       night names of the pairs that passed (the default split)\n"
    "DIR/splits/all.txt         every night frame (failed pairs carry the identity)\n"
    "(write one with: edgeseg derive pairs --day SPEC --night SPEC -o DIR)"
)


def read_pairs_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a finished ``edgeseg derive pairs`` folder, or a one-line error."""
    path = root / "manifest.json"
    fix = f"run edgeseg derive pairs --day SPEC --night SPEC -o {root}"
    if not path.is_file():
        raise AlignmentError(f"{path}: not found; {root} is not a finished `edgeseg derive "
                             f"pairs` output: {fix}")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise AlignmentError(f"{path}: not valid JSON ({exc}); {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != DERIVE_FORMAT \
            or manifest.get("command") != "pairs" or not isinstance(manifest.get("pairs"), list):
        raise AlignmentError(f"{path}: not an `edgeseg derive pairs` manifest "
                             f"({DERIVE_FORMAT}, command pairs); {fix}")
    return manifest


class DerivedPairs(Reader):
    """Day/night pairs written by ``edgeseg derive pairs`` (``derived_pairs:DIR[:SPLIT]``,
    SPLIT ``pairs`` by default, or ``all``): samples ``{"image": day, "night": night,
    "label": None, "name": night frame, "homography": night -> day}``."""

    extra_keys = ("night",)
    layout = DERIVED_LAYOUT

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split or "pairs")
        manifest = read_pairs_manifest(self.root)
        self.label_space = get_label_space(str(manifest.get("label_space", "cityscapes19")))
        path = self.root / "splits" / f"{self.split}.txt"
        if path.is_file() and not path.read_text().strip():
            raise AlignmentError(
                f"{path}: no pair of {self.root} passed (its manifest.json has the summary); "
                "derive again with other thresholds, or read every pair, failed ones with the "
                f"identity, as derived_pairs:{self.root}:all")
        names = self.read_list(path)
        by_night = {str(p["night"]): p for p in manifest["pairs"]}
        items, self.matrices = [], {}
        for name in names:
            pair = by_night.get(name)
            if pair is None:
                raise AlignmentError(f"{path}: {name!r} is not a pair of {self.root}/"
                                     "manifest.json; derive the folder again")
            items.append(Item(name, Path(pair["day_path"]), None,
                              {"night": Path(pair["night_path"])}))
            self.matrices[name] = np.asarray(pair["matrix"], np.float32).reshape(3, 3)
        self.finish(items, path)

    def load(self, item: Item) -> dict[str, Any]:
        sample = super().load(item)
        sample["homography"] = self.matrices[item.name].copy()
        return sample

