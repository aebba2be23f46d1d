"""Tests for edgeseg.viz: overlays, grids, charts and atomic writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg import viz
from edgeseg.labels import CITYSCAPES19, IGNORE_INDEX, colorize, palette_lut
from edgeseg.metrics import ConfusionMatrix, SegMetrics

SPACE = CITYSCAPES19
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sample(h: int = 32, w: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    gt = np.zeros((h, w), np.uint8)
    gt[:, w // 2 :] = 13  # road | car
    gt[: h // 4] = IGNORE_INDEX
    pred = np.where(gt == IGNORE_INDEX, 10, gt).astype(np.uint8)
    pred[h // 2 :, : w // 4] = 11
    return image, pred, gt


def metrics(seed: int) -> SegMetrics:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 19, (24, 24)).astype(np.uint8)
    gt[gt == 16] = 15  # "train" absent -> nan IoU must not break the charts
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 19, gt.shape)).astype(np.uint8)
    pred[pred == 16] = 15
    return ConfusionMatrix(19).update(pred, gt).summary(SPACE.names)


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_import_does_not_need_matplotlib() -> None:
    code = "import sys; sys.modules['matplotlib'] = None; import edgeseg.viz"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_overlay_colours_labels_and_keeps_ignore() -> None:
    image, _, gt = sample()
    out = viz.overlay(image, gt, SPACE, alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    ign = gt == IGNORE_INDEX
    np.testing.assert_array_equal(out[ign], image[ign])
    car = gt == 13
    expected = (image[car].astype(float) + np.array(SPACE.palette[13])) / 2
    assert np.abs(out[car] - expected).max() <= 1
    solid = viz.overlay(image, gt, SPACE, alpha=1.0)
    assert (solid[gt == 0] == SPACE.palette[0]).all()
    with pytest.raises(ValueError):
        viz.overlay(image, gt[:, :10], SPACE)


def test_colorize_maps_each_id_to_its_colour_in_either_channel_order() -> None:
    ids = np.arange(24, dtype=np.uint8).reshape(4, 6)
    ids[0, 0] = IGNORE_INDEX
    strided = np.repeat(ids, 2, axis=1)[:, ::2]  # a non-contiguous view of the same ids
    for bgr in (False, True):
        out = colorize(strided, palette_lut(SPACE.palette, bgr=bgr))
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8
        for (y, x), k in np.ndenumerate(ids):
            want = SPACE.palette[k] if k < len(SPACE.palette) else (0, 0, 0)
            assert tuple(out[y, x]) == tuple(want[::-1] if bgr else want), (k, bgr)


def test_side_by_side_and_legend() -> None:
    a = np.zeros((10, 5, 3), np.uint8)
    b = np.zeros((7, 4), np.uint8)  # grey, shorter
    out = viz.side_by_side(a, b, gap=2)
    assert out.shape == (10, 11, 3)
    strip = viz.legend_strip(SPACE, 600)
    assert strip.shape[1] == 600 and strip.shape[2] == 3 and strip.dtype == np.uint8
    colours = {tuple(c) for c in strip.reshape(-1, 3).tolist()}
    assert all(tuple(c) in colours for c in SPACE.palette)  # every swatch is drawn


def test_save_overlay_grid(tmp_path: Path) -> None:
    image, pred, gt = sample(64, 128)
    path = tmp_path / "out" / "grid.png"
    ret = viz.save_overlay_grid(
        path, [("frame 1", image, pred, gt), ("frame 2", image, pred, None)], SPACE, panel_width=64
    )
    assert ret == path
    img = read_png(path)
    width = 3 * 64 + 2 * 4
    legend_h = viz.legend_strip(SPACE, width).shape[0]
    assert img.shape == (24 + 2 * (24 + 32) + legend_h, width, 3)
    # the prediction panel of row 1 is the overlay of the resized image
    small = cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA)
    pred_s = cv2.resize(pred, (64, 32), interpolation=cv2.INTER_NEAREST)
    expected = viz.overlay(small, pred_s, SPACE)
    got = cv2.cvtColor(img[48 : 48 + 32, 68 : 68 + 64], cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(got, expected)
    assert only_files(tmp_path / "out") == ["grid.png"]


def test_plots_write_pngs(tmp_path: Path) -> None:
    day, night = metrics(0), metrics(1)
    bars = viz.plot_iou_bars(tmp_path / "bars.png", {"day": day, "night": night}, "day vs night")
    delta = viz.plot_iou_delta_bars(tmp_path / "delta.png", day, night, "fp32 vs int8")
    for p in (bars, delta):
        h, w, _ = read_png(p).shape
        assert w > h > 200
    assert only_files(tmp_path) == ["bars.png", "delta.png"]


def test_write_into_file_as_directory_fails_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    image, pred, gt = sample()
    with pytest.raises(OSError):
        viz.save_overlay_grid(blocker / "grid.png", [("a", image, pred, gt)], SPACE)
    with pytest.raises(OSError):
        viz.plot_iou_bars(blocker / "bars.png", {"a": metrics(0)})
    assert only_files(tmp_path) == ["not_a_dir"]


def test_failing_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    def broken_savefig(self, fname, **kwargs):
        Path(fname).write_bytes(PNG_MAGIC + b"truncated")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        viz.plot_iou_delta_bars(tmp_path / "delta.png", metrics(0), metrics(1))

    def broken_write_bytes(self, data):
        with open(self, "wb") as f:
            f.write(data[:10])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", broken_write_bytes)
    image, pred, gt = sample()
    with pytest.raises(OSError, match="disk full"):
        viz.save_overlay_grid(tmp_path / "grid.png", [("a", image, pred, gt)], SPACE)
    assert only_files(tmp_path) == []


def test_save_comparison_grid_puts_each_model_in_its_column(tmp_path: Path) -> None:
    image, pred, gt = sample(64, 128)
    other = (pred + 1) % SPACE.num_classes
    path = viz.save_comparison_grid(tmp_path / "cmp.png", [("frame", image, [pred, other], gt)],
                                    ["source_only", "method"], SPACE, panel_width=64)
    img = read_png(path)
    width = 4 * 64 + 3 * 4
    assert img.shape == (24 + 24 + 32 + viz.legend_strip(SPACE, width).shape[0], width, 3)
    small = cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA)
    for col, labels in ((1, pred), (2, other), (3, gt)):
        x = col * (64 + 4)
        expected = viz.overlay(small, cv2.resize(labels, (64, 32),
                                                 interpolation=cv2.INTER_NEAREST), SPACE)
        got = cv2.cvtColor(img[48:48 + 32, x:x + 64], cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="1 predictions for 2 columns"):
        viz.save_comparison_grid(tmp_path / "bad.png", [("f", image, [pred], gt)],
                                 ["a", "b"], SPACE)
