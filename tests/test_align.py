"""Day/night homographies from feature matches: known shifts and zooms are recovered,
unrelated images and implausible matrices fall back to the identity, the JSON cache is
computed once and recomputed when what it depends on changes, and the reader views add
the matrix."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edgeseg.data import open_dataset
from edgeseg.data.align import (
    CACHE_FORMAT,
    AlignedPairs,
    Alignment,
    AlignmentError,
    AlignSettings,
    _degenerate,
    compute_alignments,
    estimate_homography,
    load_alignments,
)
from edgeseg.fileio import write_image

SHIFT = np.array([[1.0, 0.0, -7.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]])  # night -> day
#: px at the image corners: ORB keypoints sit on pyramid levels (1.2^k px apart), and the
#: corners amplify any error of the fit; a wrong matrix is off by 7+ px
TOLERANCE = 1.5


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """An RGB image of random filled rectangles and discs: plenty of corners for ORB."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 90, np.uint8)
    for _ in range(h * w // 400):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            corner = (x + int(rng.integers(4, 30)), y + int(rng.integers(4, 30)))
            cv2.rectangle(image, (x, y), corner, colour, -1)
        else:
            cv2.circle(image, (x, y), int(rng.integers(3, 15)), colour, -1)
    return image


def shifted_pair(seed: int = 0, h: int = 240, w: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """(day, night): night shows the day content 7 px further right and 3 px further down
    (night(x, y) = day(x - 7, y - 3), so H = SHIFT), and is dark."""
    big = texture(h + 60, w + 80, seed)
    day = big[20:20 + h, 20:20 + w].copy()
    night = (big[17:17 + h, 13:13 + w] * 0.3).astype(np.uint8)
    return day, night


def zoom_matrix(h: int, w: int, factor: float) -> np.ndarray:
    """Zoom by ``factor`` about the image centre (pixel-centre coordinates)."""
    c = np.array([[1.0, 0.0, (w - 1) / 2], [0.0, 1.0, (h - 1) / 2], [0.0, 0.0, 1.0]])
    return c @ np.diag([factor, factor, 1.0]) @ np.linalg.inv(c)


def corner_error(matrix: np.ndarray, expected: np.ndarray, h: int, w: int) -> float:
    """Largest distance between where the two matrices put the image corners."""
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], float)

    def apply(m: np.ndarray) -> np.ndarray:
        p = corners @ m.T
        return p[:, :2] / p[:, 2:]

    return float(np.abs(apply(matrix) - apply(expected)).max())


def write_pairs_folder(root: Path, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """A ``synthetic_pairs`` folder (day, night, a zero label) holding ``pairs``."""
    ids = [f"p{i:06d}" for i in range(len(pairs))]
    for pid, (day, night) in zip(ids, pairs):
        write_image(root / "pairs" / "day" / f"{pid}.png", day)
        write_image(root / "pairs" / "night" / f"{pid}.png", night)
        write_image(root / "pairs" / "labels" / f"{pid}.png",
                    np.zeros(day.shape[:2], np.uint8), rgb=False)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "pairs.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


# --- estimation ---------------------------------------------------------------------------


def test_recovers_a_known_shift_on_a_dark_night_frame() -> None:
    day, night = shifted_pair()
    a = estimate_homography(day, night)
    assert a.ok and a.reason == "ok" and a.matrix.dtype == np.float64
    assert a.inliers >= 50 and a.inlier_rate > 0.8 and a.matches >= a.inliers
    assert corner_error(a.matrix, SHIFT, 240, 320) < TOLERANCE
    assert (a.day_size, a.night_size) == ((240, 320), (240, 320))


def test_recovers_a_known_zoom() -> None:
    day, _ = shifted_pair(seed=0)
    zoom = zoom_matrix(240, 320, 1.1)
    night = (cv2.warpPerspective(day, zoom, (320, 240)) * 0.4).astype(np.uint8)  # day -> night
    a = estimate_homography(day, night)
    assert a.ok
    assert corner_error(a.matrix, np.linalg.inv(zoom), 240, 320) < TOLERANCE


def test_a_day_frame_of_another_size_gives_stored_coordinates() -> None:
    day, night = shifted_pair(seed=2)
    big_night = cv2.resize(night, (640, 480), interpolation=cv2.INTER_LINEAR)
    a = estimate_homography(day, big_night)
    assert a.ok and "day 320x240 resized to the night size 640x480" in a.reason
    # a 2x night pixel x2 shows night pixel (x2 + 0.5) / 2 - 0.5 (cv2.resize's centres)
    half = np.array([[0.5, 0.0, -0.25], [0.0, 0.5, -0.25], [0.0, 0.0, 1.0]])
    assert corner_error(a.matrix, SHIFT @ half, 480, 640) < TOLERANCE
    assert (a.day_size, a.night_size) == ((240, 320), (480, 640))


@pytest.mark.skipif(not hasattr(cv2, "SIFT_create"), reason="this OpenCV has no SIFT")
def test_sift_recovers_the_shift_too() -> None:
    day, night = shifted_pair(seed=3)
    a = estimate_homography(day, night, features="sift")
    assert a.ok and corner_error(a.matrix, SHIFT, 240, 320) < TOLERANCE


def test_unrelated_images_fall_back_to_identity() -> None:
    day, _ = shifted_pair(seed=4)
    a = estimate_homography(day, texture(240, 320, 99))
    assert not a.ok and np.array_equal(a.matrix, np.eye(3))
    assert a.inliers < 15 and a.reason


def test_images_too_small_for_features_fall_back_with_the_reason() -> None:
    a = estimate_homography(texture(32, 64, 0), texture(32, 64, 0))
    assert not a.ok and np.array_equal(a.matrix, np.eye(3))
    assert "too few features" in a.reason or "matches" in a.reason


def test_implausible_matrices_are_degenerate() -> None:
    settings = AlignSettings()
    size = (240, 320)
    assert _degenerate(SHIFT, size, settings) == ""
    mirror = np.array([[-1.0, 0.0, 319.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert "area scale" in _degenerate(mirror, size, settings)
    assert "area scale" in _degenerate(np.diag([0.2, 0.2, 1.0]), size, settings)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.003, 0.0, 1.0]])
    assert "perspective" in _degenerate(tilt, size, settings)
    far = np.array([[1.0, 0.0, 400.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert "outside the day image" in _degenerate(far, size, settings)
    # a wrong fit seen on a synthetic pair: scales 1.1 / 1.29 and a 0.45 shear
    shear = np.array([[1.1, 0.45, -25.8], [-0.01, 1.29, -11.6], [0.0, 0.0, 1.0]])
    assert "anisotropy 1.49" in _degenerate(shear, size, settings)
    zoom_turn = np.array([[1.2 * np.cos(0.1), -1.2 * np.sin(0.1), 5.0],
                          [1.2 * np.sin(0.1), 1.2 * np.cos(0.1), -3.0], [0.0, 0.0, 1.0]])
    assert _degenerate(zoom_turn, size, settings) == ""  # zoom and a small turn are real
    stretch = np.diag([1.0, 1.35, 1.0])
    assert "anisotropy 1.35" in _degenerate(stretch, size, settings)


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="features='surf': choose one of orb, sift"):
        AlignSettings(features="surf")


# --- the cache ----------------------------------------------------------------------------


class _Pairs:
    """An in-memory pairs reader (no files): the cache checks sizes at read time only."""

    root = Path("/memory")
    label_space = None

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], names: list[str]) -> None:
        self.pairs, self.names = pairs, names

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        day, night = self.pairs[index]
        return {"image": day, "night": night, "label": None, "name": self.names[index]}


class _Counting:
    """An estimator that counts its calls (and is fast: no features)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, sample: dict[str, Any], settings: AlignSettings) -> Alignment:
        self.calls += 1
        h, w = sample["image"].shape[:2]
        hn, wn = sample["night"].shape[:2]
        return Alignment(SHIFT.copy(), True, 40, 30, 0.75, "ok", (h, w), (hn, wn))


def test_the_cache_is_computed_once_and_recomputed_when_its_key_changes(tmp_path: Path) -> None:
    pairs = [(np.zeros((24, 32, 3), np.uint8), np.zeros((24, 32, 3), np.uint8))] * 3
    reader = _Pairs(pairs, ["a", "b", "c"])
    path = tmp_path / "run" / "alignment-pairs.json"
    count = _Counting()
    table = compute_alignments(reader, path, data="x:/d", progress=False, estimate=count)
    assert count.calls == 3 and list(table) == ["a", "b", "c"]
    cache = json.loads(path.read_text())
    assert cache["format"] == CACHE_FORMAT and cache["data"] == "x:/d" and cache["ok"] == 3
    assert cache["settings"] == AlignSettings().to_dict()
    assert cache["pairs"]["b"]["size"] == {"day": [24, 32], "night": [24, 32]}
    assert np.array_equal(np.array(cache["pairs"]["b"]["matrix"]), SHIFT)
    stamp = (path.stat().st_ino, path.stat().st_mtime_ns)

    compute_alignments(reader, path, data="x:/d", progress=False, estimate=count)
    assert count.calls == 3 and (path.stat().st_ino, path.stat().st_mtime_ns) == stamp

    compute_alignments(reader, path, AlignSettings(ratio=0.7), data="x:/d", progress=False,
                       estimate=count)  # another setting: everything again
    assert count.calls == 6
    compute_alignments(reader, path, AlignSettings(ratio=0.7), data="y:/d", progress=False,
                       estimate=count)  # another dataset: everything again
    assert count.calls == 9
    grown = _Pairs(pairs + pairs[:1], ["a", "b", "c", "d"])
    compute_alignments(grown, path, AlignSettings(ratio=0.7), data="y:/d", progress=False,
                       estimate=count)  # a new pair: only it
    assert count.calls == 10

    assert set(load_alignments(path, AlignSettings(ratio=0.7), "y:/d")) == {"a", "b", "c", "d"}
    with pytest.raises(AlignmentError, match="other estimator settings; delete it") as err:
        load_alignments(path, AlignSettings(), "y:/d")
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(AlignmentError, match=r"alignments of y:/d, not of x:/d"):
        load_alignments(path, None, "x:/d")
    path.write_text("{}")
    with pytest.raises(AlignmentError, match="not an alignment cache"):
        load_alignments(path)


def test_repeated_pair_names_are_an_error(tmp_path: Path) -> None:
    pairs = [(np.zeros((24, 32, 3), np.uint8), np.zeros((24, 32, 3), np.uint8))] * 2
    with pytest.raises(AlignmentError, match="name 'a' appears twice"):
        compute_alignments(_Pairs(pairs, ["a", "a"]), tmp_path / "c.json", progress=False,
                           estimate=_Counting())


def test_real_files_recover_the_shift_and_a_resized_image_is_recomputed(tmp_path: Path) -> None:
    root = write_pairs_folder(tmp_path / "pairs", [shifted_pair(seed=s) for s in (5, 6)])
    reader = open_dataset(f"synthetic_pairs:{root}")
    path = tmp_path / "cache.json"
    table = compute_alignments(reader, path, progress=False)
    assert all(a.ok and corner_error(a.matrix, SHIFT, 240, 320) < TOLERANCE for a in table.values())
    # the night frame of p000001 is now stored at 2x: its entry (only) is estimated again
    night = cv2.imread(str(root / "pairs" / "night" / "p000001.png"))
    cv2.imwrite(str(root / "pairs" / "night" / "p000001.png"), cv2.resize(night, (640, 480)))
    count = _Counting()
    table = compute_alignments(reader, path, progress=False, estimate=count)
    assert count.calls == 1 and table["p000001"].night_size == (480, 640)


def test_aligned_pairs_adds_the_matrix_and_warns_about_fallbacks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    unrelated = (shifted_pair(seed=7)[0], (texture(240, 320, 98) * 0.3).astype(np.uint8))
    root = write_pairs_folder(tmp_path / "pairs", [shifted_pair(seed=8), unrelated])
    reader = open_dataset(f"synthetic_pairs:{root}")
    table = compute_alignments(reader, tmp_path / "c.json", progress=False)
    with caplog.at_level(logging.WARNING, logger="edgeseg.data.align"):
        view = AlignedPairs(reader, table, tmp_path / "c.json")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 of 2 pairs fell back to identity" in warnings[0]
    first, second = view[0], view[1]
    assert first["homography"].dtype == np.float32 and first["homography"].shape == (3, 3)
    assert corner_error(first["homography"].astype(float), SHIFT, 240, 320) < TOLERANCE
    assert np.array_equal(second["homography"], np.eye(3, dtype=np.float32))
    assert sorted(first) == ["homography", "image", "label", "name", "night"]
    assert len(view) == 2 and view.root == reader.root and view.has_labels

    stale = dict(table)
    stale["p000000"] = Alignment(np.eye(3), True, 1, 1, 1.0, "ok", (10, 10), (10, 10))
    with pytest.raises(AlignmentError, match=r"was aligned at day \(10, 10\).*delete the cache"):
        AlignedPairs(reader, stale, "c.json")[0]
