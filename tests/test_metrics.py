"""Tests for edgeseg.metrics: hand-computed IoUs, Cityscapes parity, boundary bands, and the
image fidelity scores (PSNR, SSIM) of image networks."""

from __future__ import annotations

import copy
import json
import math

import cv2
import numpy as np
import pytest

from edgeseg.labels import CITYSCAPES19, CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX
from edgeseg.metrics import (
    ConfusionMatrix,
    SegMetrics,
    boundary_mask,
    compare_summaries,
    format_table,
    psnr,
    ssim,
)

# 4 classes; class 3 appears only in the prediction at an ignored pixel, so it
# must stay absent (IoU nan) and be left out of the mean.
GT = np.array([[0, 0, 1, 1], [0, IGNORE_INDEX, 1, 2]], np.uint8)
PRED = np.array([[0, 1, 1, 1], [2, 3, 1, 2]], np.uint8)


def small_cm() -> ConfusionMatrix:
    return ConfusionMatrix(4).update(PRED, GT)


def test_hand_computed_matrix_and_scores() -> None:
    cm = small_cm()
    expected = np.array([[1, 1, 1, 0], [0, 3, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.matrix.dtype == np.int64
    iou = cm.iou_per_class()
    np.testing.assert_allclose(iou[:3], [1 / 3, 3 / 4, 1 / 2])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    acc = cm.class_accuracy()
    np.testing.assert_allclose(acc[:3], [1 / 3, 1, 1])
    assert math.isnan(acc[3])
    assert cm.num_pixels == 7


def test_empty_matrix_is_nan_without_warnings() -> None:
    cm = ConfusionMatrix(3)
    with np.errstate(all="raise"):
        assert math.isnan(cm.miou())
        assert math.isnan(cm.pixel_accuracy())
    cm.update(np.zeros((2, 2), np.uint8), np.full((2, 2), IGNORE_INDEX, np.uint8))
    assert cm.num_pixels == 0


def test_merge_equals_update_on_concatenation() -> None:
    rng = np.random.default_rng(0)
    gt_ok = rng.integers(0, 5, (3, 8, 10)).astype(np.uint8)
    gt_ok[rng.random(gt_ok.shape) < 0.2] = IGNORE_INDEX
    pred = rng.integers(0, 5, (3, 8, 10)).astype(np.int64)

    whole = ConfusionMatrix(5, ignore_index=IGNORE_INDEX)
    whole.update(pred, gt_ok)
    parts = [ConfusionMatrix(5).update(p, g) for p, g in zip(pred, gt_ok)]

    merged = ConfusionMatrix(5)
    for p in parts:
        merged.merge(p)
    np.testing.assert_array_equal(merged.matrix, whole.matrix)

    summed = parts[0] + parts[1] + parts[2]
    np.testing.assert_array_equal(summed.matrix, whole.matrix)
    # + must not mutate its operands
    np.testing.assert_array_equal(
        parts[0].matrix, ConfusionMatrix(5).update(pred[0], gt_ok[0]).matrix
    )

    whole.reset()
    assert whole.num_pixels == 0


@pytest.mark.parametrize("bad", [4, -1])
def test_pred_out_of_range_raises(bad: int) -> None:
    pred = PRED.astype(np.int16)
    pred[0, 0] = bad
    with pytest.raises(ValueError, match="prediction value"):
        ConfusionMatrix(4).update(pred, GT)


def test_invalid_inputs_raise() -> None:
    cm = ConfusionMatrix(4)
    gt = GT.copy()
    gt[0, 0] = 7  # not remapped to train ids
    with pytest.raises(ValueError, match="ground-truth value 7"):
        cm.update(PRED, gt)
    with pytest.raises(ValueError, match="shape"):
        cm.update(PRED[:, :3], GT)
    with pytest.raises(TypeError):
        cm.update(PRED.astype(np.float32), GT)
    with pytest.raises(ValueError):
        cm.merge(ConfusionMatrix(5))
    negative = GT.astype(np.int16)
    negative[0, 0] = -2
    with pytest.raises(ValueError, match="ground-truth value -2"):
        cm.update(PRED, negative)
    assert cm.num_pixels == 0  # failed updates leave the counts untouched


def test_signed_ignore_index_gives_same_counts() -> None:
    # int16 labels with ignore -1 take the masked code path; counts must agree
    gt = GT.astype(np.int16)
    gt[gt == IGNORE_INDEX] = -1
    cm = ConfusionMatrix(4, ignore_index=-1).update(PRED, gt)
    np.testing.assert_array_equal(cm.matrix, small_cm().matrix)


def test_summary_json_roundtrip() -> None:
    s = small_cm().summary(["a", "b", "c", "d"])
    assert isinstance(s, SegMetrics)
    assert list(s.per_class) == ["a", "b", "c", "d"]
    d = s.to_dict()
    assert d["per_class"]["d"] is None
    text = json.dumps(d, allow_nan=False)  # strict JSON: no NaN tokens
    back = SegMetrics.from_dict(json.loads(text))
    assert back.miou == pytest.approx(s.miou)
    assert math.isnan(back.per_class["d"])
    assert back.num_pixels == 7
    # per-class accuracy (recall) by hand: a 1 of 3, b 3 of 3, c 1 of 1, d absent from gt
    assert d["per_class_acc"] == pytest.approx({"a": 1 / 3, "b": 1.0, "c": 1.0, "d": None})
    assert d["mean_class_acc"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert back.per_class_acc["a"] == pytest.approx(1 / 3) and math.isnan(back.per_class_acc["d"])
    assert back.mean_class_acc == pytest.approx(s.mean_class_acc)
    with pytest.raises(ValueError):
        small_cm().summary(["a", "b"])


def test_format_table_and_compare() -> None:
    s = small_cm().summary(["road", "car", "sky", "train"])
    table = format_table(s, title="val")
    lines = table.splitlines()
    assert lines[0] == "val"
    assert next(ln for ln in lines if ln.startswith("car")).split() == ["car", "75.00", "100.00"]
    assert next(ln for ln in lines if ln.startswith("road")).split() == ["road", "33.33", "33.33"]
    assert next(ln for ln in lines if ln.startswith("train")).split() == ["train", "n/a", "n/a"]
    miou_line = next(ln for ln in lines if ln.startswith("mIoU"))
    assert miou_line.split()[-2:] == [f"{100 * s.miou:.2f}", f"{100 * (1 / 3 + 2) / 3:.2f}"]
    assert any(ln.startswith("pixel accuracy") and ln.endswith("71.43") for ln in lines)
    two_columns = [ln for ln in lines[1:] if not ln.startswith(("-", "pixel"))]
    assert len(two_columns) == 6 and len({len(ln) for ln in two_columns}) == 1  # fixed width

    night = ConfusionMatrix(4).update(GT.clip(0, 2), GT).summary(["road", "car", "sky", "train"])
    out = compare_summaries(s, night, "day", "night")
    car = next(ln for ln in out.splitlines() if ln.startswith("car"))
    assert car.split() == ["car", "75.00", "100.00", "+25.00"]
    gap = out.splitlines()[-1]
    assert gap.startswith("mIoU gap (night - day)")
    assert f"{100 * (night.miou - s.miou):+.2f}" in gap


# --- parity with the official Cityscapes evaluator --------------------------------


def test_iou_matches_cityscapesscripts(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    monkeypatch.delenv("CITYSCAPES_RESULTS", raising=False)
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import id2label

    rng = np.random.default_rng(1)
    eval_ids = np.array(sorted(CITYSCAPES_ID_TO_TRAINID))
    present = eval_ids[eval_ids != 31]  # "train" absent from gt and pred -> nan in both
    gt_files, pred_files, cm = [], [], ConfusionMatrix(19)
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for raw, train in CITYSCAPES_ID_TO_TRAINID.items():
        lut[raw] = train
    for i in range(3):
        # blocky gt over all labelIds 0..33 (incl. void / ignoreInEval ids), noisy copy as pred
        gt = rng.choice(np.setdiff1d(np.arange(34), [31]), (8, 12)).astype(np.uint8)
        gt = cv2.resize(gt, (96, 64), interpolation=cv2.INTER_NEAREST)
        pred = np.where(np.isin(gt, present), gt, rng.choice(present, gt.shape)).astype(np.uint8)
        noise = rng.random(gt.shape) < 0.3
        pred[noise] = rng.choice(present, int(noise.sum()))
        stem = f"tmpcity_{i:06d}_000019"
        gt_path, pred_path = tmp_path / f"{stem}_gtFine_labelIds.png", tmp_path / f"{stem}_pred.png"
        assert cv2.imwrite(str(gt_path), gt) and cv2.imwrite(str(pred_path), pred)
        gt_files.append(str(gt_path))
        pred_files.append(str(pred_path))
        cm.update(lut[pred], lut[gt])

    args = copy.copy(cs_eval.args)
    args.evalInstLevelScore = False  # needs *_instanceIds.png (and np.in1d, gone in numpy 2.4)
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    result = cs_eval.evaluateImgLists(pred_files, gt_files, args)

    ours = cm.iou_per_class()
    for raw, train in CITYSCAPES_ID_TO_TRAINID.items():
        name = id2label[raw].name
        assert name == CITYSCAPES19.names[train]
        theirs = result["classScores"][name]
        if raw == 31:
            assert math.isnan(theirs) and math.isnan(ours[train])
        else:
            assert ours[train] == pytest.approx(theirs, abs=1e-6), name
    assert cm.miou() == pytest.approx(result["averageScoreClasses"], abs=1e-6)
    assert 0.2 < cm.miou() < 0.95  # the example is neither trivial nor hopeless


# --- boundary band and agreement ----------------------------------------------------


def two_regions(h: int = 20, w: int = 30, edge: int = 12) -> np.ndarray:
    lab = np.full((h, w), 4, np.uint8)
    lab[:, :edge] = 1
    return lab


@pytest.mark.parametrize("width", [1, 3])
def test_boundary_mask_follows_edge_with_width(width: int) -> None:
    mask = boundary_mask(two_regions(), width)
    cols = np.flatnonzero(mask.any(0))
    np.testing.assert_array_equal(cols, np.arange(12 - width, 12 + width))
    assert mask[:, cols].all()  # full height, width px on each side of the edge
    # horizontal edges behave the same (transpose)
    np.testing.assert_array_equal(boundary_mask(two_regions().T.copy(), width), mask.T)


def test_boundary_mask_ignore_handling() -> None:
    lab = two_regions()
    lab[:, 20:] = IGNORE_INDEX
    mask = boundary_mask(lab, 2)
    assert not mask[:, 20:].any()  # ignore pixels are never in the band
    assert not mask[:, 14:20].any()  # a class/ignore transition is not a boundary
    assert mask[:, 10:14].all()
    assert not boundary_mask(np.full((5, 5), 3, np.uint8), 2).any()
    stacked = boundary_mask(np.stack([two_regions(), lab]), 2)
    assert stacked.shape == (2, 20, 30) and (stacked[1] == mask).all()
    with pytest.raises(ValueError):
        boundary_mask(lab, 0)


def test_pair_scorer_agreement() -> None:
    from edgeseg.evaluate import PairScorer, agreement

    ref = two_regions()
    b = ref.copy()
    b[0:3, 12] = 1  # 3 disagreements inside the band (width 3 -> cols 9..14)
    b[:, 25:] = 0  # 100 disagreements far from the edge
    band = boundary_mask(ref, 3).sum()
    assert band == 20 * 6
    scorer = PairScorer(band=3)
    scorer.update(ref, b)
    assert scorer.boundary_agreement == pytest.approx(1 - 3 / band)
    assert scorer.agreement == pytest.approx(1 - 103 / ref.size)
    assert agreement([ref], [b]) == scorer.agreement and agreement([ref], [ref]) == 1.0
    flat = PairScorer(band=3)
    flat.update(np.zeros_like(ref), b)
    assert flat.boundary_agreement is None  # no boundary in the reference
    with pytest.raises(ValueError):
        scorer.update(ref, b[:, :5])


def test_ground_truth_without_ignore_or_top_classes() -> None:
    """Labels holding only low class ids (no 255) must still count into a full matrix."""
    cm = ConfusionMatrix(19)
    gt = np.array([[0, 1], [1, 0]], np.uint8)
    pred = np.array([[0, 1], [18, 0]], np.uint8)
    cm.update(pred, gt)
    assert cm.matrix.shape == (19, 19)
    assert cm.matrix[0, 0] == 2 and cm.matrix[1, 1] == 1 and cm.matrix[1, 18] == 1


# --- PSNR / SSIM -------------------------------------------------------------------------------


def _noise_image(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_psnr_of_identical_images_is_inf_and_ssim_one() -> None:
    img = _noise_image(0, (24, 20, 3))
    assert psnr(img, img.copy()) == math.inf
    assert ssim(img, img.copy()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 5, 16, 128])
def test_psnr_of_a_constant_offset_is_20_log10_255_over_k(k: int) -> None:
    base = _noise_image(1, (16, 12, 3)) // 2  # 0..127: + k <= 255 never clips
    shifted = (base + np.uint8(k)).astype(np.uint8)
    assert psnr(base, shifted) == pytest.approx(20 * math.log10(255 / k), rel=1e-12)
    assert psnr(shifted, base) == psnr(base, shifted)  # symmetric
    assert psnr(np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8)) == 0.0


def test_psnr_peak_and_shape_checks() -> None:
    a, b = np.zeros((4, 4)), np.full((4, 4), 0.1)
    assert psnr(a, b, peak=1.0) == pytest.approx(20.0, rel=1e-12)  # MSE 0.01
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="empty"):
        psnr(np.zeros((0, 3)), np.zeros((0, 3)))


def test_ssim_of_two_constant_images_is_the_luminance_term() -> None:
    """No variance, no covariance: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 255)^2."""
    c1 = (0.01 * 255) ** 2
    a, b = np.full((20, 16), 100, np.uint8), np.full((20, 16), 120, np.uint8)
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1), rel=1e-9)
    # (H, W, C): the mean of each channel's SSIM
    pa = np.dstack([np.full((12, 12), v, np.uint8) for v in (0, 50, 200)])
    pb = np.dstack([np.full((12, 12), v, np.uint8) for v in (255, 50, 150)])
    want = np.mean([(2 * x * y + c1) / (x * x + y * y + c1)
                    for x, y in ((0, 255), (50, 50), (200, 150))])
    assert ssim(pa, pb) == pytest.approx(want, rel=1e-9)


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. by the definition: every 11x11 window inside the image, weighted by a
    Gaussian of sigma 1.5 built here (no OpenCV), statistics summed one window at a time."""
    r = 5
    offsets = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = x.astype(np.float64), y.astype(np.float64)
    values = []
    for i in range(r, x.shape[0] - r):
        for j in range(r, x.shape[1] - r):
            px, py = x[i - r:i + r + 1, j - r:j + r + 1], y[i - r:i + r + 1, j - r:j + r + 1]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cxy + c2)
                          / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_direct_window_by_window_computation() -> None:
    x = _noise_image(2, (15, 18, 3))
    noisy = x.astype(np.int16) + np.random.default_rng(3).integers(-30, 31, x.shape)
    y = np.clip(noisy, 0, 255).astype(np.uint8)
    for c in range(3):
        assert ssim(x[..., c], y[..., c]) == pytest.approx(_reference_ssim(x[..., c], y[..., c]),
                                                           abs=1e-10)
    want = np.mean([_reference_ssim(x[..., c], y[..., c]) for c in range(3)])
    assert ssim(x, y) == pytest.approx(want, abs=1e-10)
    assert 0.0 < ssim(x, y) < 0.99 and ssim(x, y) == pytest.approx(ssim(y, x), abs=1e-12)


def test_ssim_needs_the_whole_window() -> None:
    with pytest.raises(ValueError, match="11x11 window"):
        ssim(np.zeros((10, 40)), np.zeros((10, 40)))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        ssim(np.zeros((2, 12, 12, 3)), np.zeros((2, 12, 12, 3)))


def test_metrics_of_drops_the_other_column_and_counts_it_as_a_miss() -> None:
    """A model space with an extra "(other)" prediction: pixels predicted "other" lower
    their class's accuracy and the column is not a class of the summary."""
    from edgeseg.evaluate import metrics_of
    from edgeseg.labels import get_label_space

    space = get_label_space("camvid11")
    gt = np.array([[3, 3, 3, 3, 0, 0]], np.uint8)  # road x4, sky x2
    pred = np.array([[3, 3, 11, 11, 0, 3]], np.uint8)  # 11 = "(other)"
    summary = metrics_of(ConfusionMatrix(12).update(pred, gt), space)
    assert list(summary.per_class_acc) == list(space.names)
    assert summary.per_class_acc["road"] == pytest.approx(2 / 4)
    assert summary.per_class_acc["sky"] == pytest.approx(1 / 2)
    assert summary.per_class["road"] == pytest.approx(2 / 5)  # tp 2, fn 2, fp 1 (a sky pixel)
    assert summary.mean_class_acc == pytest.approx(0.5)
