"""Augmentation keeps every image and the label aligned, pads with ignore and is
reproducible per generator seed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.data.transforms import (
    LowLight,
    TrainTransform,
    color_jitter,
    darken,
    hflip,
    low_light,
    pad_to,
    random_crop,
    resize,
    to_chw_float,
)

H, W = 40, 64
PALETTE = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
PALETTE[:20] = np.arange(20)[:, None] * 12  # class c -> grey 12c: recoverable from the image


def block_sample() -> dict:
    """Label of 8x8 class blocks; image = colour of the class, so the label is
    derivable from the image (class = red // 12) wherever it is valid."""
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 19, (H // 8, W // 8)).astype(np.uint8)
    label = np.kron(blocks, np.ones((8, 8), np.uint8))
    image = PALETTE[label]
    return {"image": image, "night": image.copy(), "label": label, "name": "x"}


def derived_label(image: np.ndarray) -> np.ndarray:
    return (image[..., 0].astype(np.int32) + 6) // 12


def test_crop_and_flip_keep_alignment_exactly():
    t = TrainTransform(crop=(24, 32), scale_range=(1.0, 1.0), flip=True)
    flipped = 0
    for seed in range(8):
        out = t(block_sample(), np.random.default_rng(seed))
        assert out["image"].shape == (24, 32, 3) and out["label"].shape == (24, 32)
        assert np.array_equal(derived_label(out["image"]), out["label"])
        assert np.array_equal(out["image"], out["night"])
        flipped += not np.array_equal(out["label"], out["label"][:, ::-1])
    assert flipped  # the windows are not all symmetric


def interior(label: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood has one class: bilinear keeps them pure.
    The outer ring is excluded (its neighbours outside the crop are unknown)."""
    kernel = np.ones((3, 3), np.uint8)
    mask = (cv2.dilate(label, kernel) == cv2.erode(label, kernel)) & (label != 255)
    mask[[0, -1], :] = False
    mask[:, [0, -1]] = False
    return mask


def test_random_scale_keeps_alignment():
    # A half-pixel drift between label and image (e.g. INTER_NEAREST's corner
    # sampling at non-integer scales) makes some interior pixels disagree.
    t = TrainTransform(crop=(32, 48), scale_range=(0.5, 2.0), flip=True)
    for seed in range(12):
        out = t(block_sample(), np.random.default_rng(seed))
        inside = interior(out["label"])
        assert inside.mean() > 0.2
        diff = np.abs(out["image"][..., 0].astype(int) - 12 * out["label"].astype(int))
        assert np.all(diff[inside] <= 1)
        assert np.array_equal(out["image"], out["night"])
        assert set(np.unique(out["label"]).tolist()) <= set(range(19)) | {255}


def test_crop_larger_than_image_pads_with_ignore():
    sample = block_sample()
    out = random_crop(sample, np.random.default_rng(0), (H + 10, W + 6))
    assert out["label"].shape == (H + 10, W + 6)
    assert np.all(out["label"][H:] == 255) and np.all(out["label"][:, W:] == 255)
    assert np.all(out["image"][H:] == 0) and np.all(out["night"][:, W:] == 0)
    assert np.array_equal(out["label"][:H, :W], sample["label"])
    padded = pad_to(sample, (H, W))
    assert padded["label"] is sample["label"]  # nothing to pad: untouched


def test_same_seed_same_output_and_different_seeds_differ():
    t = TrainTransform(crop=(24, 32), scale_range=(0.75, 1.5), flip=True, color_jitter=0.3)
    a = t(block_sample(), np.random.default_rng(42))
    b = t(block_sample(), np.random.default_rng(42))
    c = t(block_sample(), np.random.default_rng(43))
    for key in ("image", "night", "label"):
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])


def test_color_jitter_is_per_image_and_spares_the_label():
    t = TrainTransform(crop=None, scale_range=(1.0, 1.0), flip=False, color_jitter=0.4)
    sample = block_sample()
    out = t(sample, np.random.default_rng(0))
    assert not np.array_equal(out["image"], out["night"])  # drawn independently
    assert not np.array_equal(out["image"], sample["image"])
    assert np.array_equal(out["label"], sample["label"])
    assert out["image"].dtype == np.uint8
    assert color_jitter(sample["image"], np.random.default_rng(0), 0.0) is sample["image"]


def test_darken_by_hand():
    image = np.array([[[0, 128, 255]]], np.uint8)
    # 0.5 * 255 * (128/255)^2 = 32.12 -> 32; 0.5 * 255 = 127.5 -> 128 (round half to even: 128)
    assert darken(image, 2.0, 0.5).tolist() == [[[0, 32, 128]]]
    assert darken(image, 1.0, 1.0).tolist() == image.tolist()  # identity
    assert darken(image, 0.5, 1.0).tolist() == [[[0, 181, 255]]]  # 255 * sqrt(128/255)
    noisy = darken(np.full((64, 64, 3), 100, np.uint8), 1.0, 1.0, 5.0, np.random.default_rng(0))
    assert 4.0 < noisy.astype(np.float64).std() < 6.0 and abs(noisy.mean() - 100) < 0.5


def test_low_light_draws_p_gamma_exposure_noise_in_order():
    cfg = LowLight(p=0.5, gamma=(1.5, 2.5), exposure=(0.4, 0.8), noise=(0.0, 0.0))
    image = np.full((4, 4, 3), 200, np.uint8)
    for seed in range(8):
        rng, ref = np.random.default_rng(seed), np.random.default_rng(seed)
        out = low_light(image, rng, cfg)
        if ref.random() >= 0.5:
            assert out is image
            continue
        gamma, exposure = ref.uniform(1.5, 2.5), ref.uniform(0.4, 0.8)
        ref.uniform(0.0, 0.0)
        assert np.array_equal(out, darken(image, gamma, exposure))
        assert rng.random() == ref.random()  # the same draws, no more
    untouched = np.random.default_rng(3)
    assert low_light(image, untouched, LowLight()) is image  # p 0: draws nothing
    assert untouched.random() == np.random.default_rng(3).random()


def test_low_light_in_the_transform_darkens_images_not_labels():
    sample = block_sample()
    plain = TrainTransform(crop=None, scale_range=(1.0, 1.0), flip=False)
    off = TrainTransform(crop=None, scale_range=(1.0, 1.0), flip=False,
                         low_light=LowLight(p=0.0))
    on = TrainTransform(crop=None, scale_range=(1.0, 1.0), flip=False,
                        low_light=LowLight(p=1.0, gamma=(2.0, 2.0), exposure=(0.5, 0.5),
                                           noise=(0.0, 0.0)))
    a, b = plain(sample, np.random.default_rng(0)), off(sample, np.random.default_rng(0))
    assert all(np.array_equal(a[k], b[k]) for k in ("image", "night", "label"))
    dark = on(sample, np.random.default_rng(0))
    for key in ("image", "night"):
        assert np.array_equal(dark[key], darken(sample[key], 2.0, 0.5))
    assert np.array_equal(dark["label"], sample["label"])
    with pytest.raises(ValueError, match="low_light.exposure"):
        LowLight(p=0.5, exposure=(0.0, 1.0)).validate()
    with pytest.raises(ValueError, match="low_light.noise"):
        LowLight(p=0.5, noise=(3.0, 1.0)).validate()


def test_input_sample_is_not_modified():
    sample = block_sample()
    before = {k: v.copy() for k, v in sample.items() if isinstance(v, np.ndarray)}
    TrainTransform((24, 32), (0.5, 1.5), True, 0.3)(sample, np.random.default_rng(0))
    for key, value in before.items():
        assert np.array_equal(sample[key], value)


def test_unlabelled_sample_and_mismatched_extra_image():
    sample = block_sample()
    sample["label"] = None
    sample["reference"] = np.zeros((H // 2, W // 2, 3), np.uint8)  # other size: resized
    out = TrainTransform(crop=(16, 16))(sample, np.random.default_rng(0))
    assert out["label"] is None and out["reference"].shape == (16, 16, 3)
    assert out["name"] == "x"


def test_label_of_other_size_is_an_error():
    sample = block_sample()
    sample["label"] = sample["label"][:10]
    with pytest.raises(ValueError, match="label size"):
        TrainTransform(crop=(16, 16))(sample, np.random.default_rng(0))


def test_resize_uses_nearest_for_labels():
    out = resize(block_sample(), (23, 37))
    assert out["image"].shape == (23, 37, 3) and out["label"].shape == (23, 37)
    assert set(np.unique(out["label"]).tolist()) <= set(np.unique(block_sample()["label"]).tolist())
    t = TrainTransform(crop=None, flip=False, resize=(20, 32))
    assert t(block_sample(), np.random.default_rng(0))["label"].shape == (20, 32)


def test_hflip_mirrors_all_arrays():
    sample = block_sample()
    out = hflip(sample)
    assert np.array_equal(out["label"], sample["label"][:, ::-1])
    assert np.array_equal(out["night"], sample["night"][:, ::-1])


def test_to_chw_float():
    image = np.zeros((4, 5, 3), np.uint8)
    image[..., 0] = 255
    out = to_chw_float(image, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    assert out.shape == (3, 4, 5) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out[0], 1.0)
    np.testing.assert_allclose(out[1], -2.0)
    np.testing.assert_allclose(out[2], -1.0)


# --- homographies follow the geometry -----------------------------------------------------


def _smooth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth RGB pattern defined everywhere (periods of 30-60 px): bilinear resampling
    keeps it to within about a grey level, a 0.5 px misplacement changes it by several."""
    channels = [128 + 45 * np.sin(x / 6.0 + 0.3 + c) + 45 * np.cos(y / 5.0 + 0.7 * c)
                + 20 * np.sin((x + y) / 9.0 + c) for c in range(3)]
    return np.clip(np.rint(np.stack(channels, -1)), 0, 255).astype(np.uint8)


def _render(matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image whose pixel p shows the pattern at ``matrix`` p (pixel centres)."""
    yy, xx = np.mgrid[0:size[0], 0:size[1]].astype(np.float64)
    p = np.stack([xx, yy, np.ones_like(xx)], -1) @ matrix.T
    return _smooth(p[..., 0] / p[..., 2], p[..., 1] / p[..., 2])


def _pair(night_to_day: np.ndarray, size: tuple[int, int] = (60, 96),
          night_size: tuple[int, int] | None = None) -> dict:
    """A day image, a night image showing the same pattern through ``night_to_day`` and
    that homography; ``night_size``: the night image stored at another size."""
    from edgeseg.data.transforms import resize_matrix

    moved = np.eye(3) if night_size is None else resize_matrix(night_size, size)
    matrix = night_to_day @ moved  # stored night pixel -> night pixel at the day size -> day
    return {"image": _render(np.eye(3), size), "night": _render(matrix, night_size or size),
            "mask": np.zeros(size, np.uint8), "homography": matrix.astype(np.float32),
            "name": "pair"}


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    im = image.astype(np.float64)
    return ((1 - fx) * (1 - fy) * im[y0, x0] + fx * (1 - fy) * im[y0, x0 + 1]
            + (1 - fx) * fy * im[y0 + 1, x0] + fx * fy * im[y0 + 1, x0 + 1])


def _content_error(out: dict, matrix: np.ndarray) -> np.ndarray:
    """|night'(p) - day'(matrix p)| over night pixels whose day point lies inside the
    unpadded day image (``mask`` 0 around it)."""
    h, w = out["mask"].shape
    yy, xx = np.mgrid[0:h, 0:w]
    x, y = xx.ravel().astype(np.float64), yy.ravel().astype(np.float64)
    q = np.stack([x, y, np.ones_like(x)], -1) @ matrix.astype(np.float64).T
    qx, qy = q[:, 0] / q[:, 2], q[:, 1] / q[:, 2]
    inside = (qx >= 0) & (qx < w - 1) & (qy >= 0) & (qy < h - 1)
    valid = (out["mask"].ravel() == 0) & inside
    x0, y0 = np.floor(qx[inside]).astype(int), np.floor(qy[inside]).astype(int)
    corners_valid = np.ones(inside.sum(), bool)
    for dy in (0, 1):
        for dx in (0, 1):
            corners_valid &= out["mask"][y0 + dy, x0 + dx] == 0
    valid[np.flatnonzero(inside)[~corners_valid]] = False
    assert valid.mean() > 0.3  # most of the window is compared
    day = _bilinear(out["image"], qx[valid], qy[valid])
    return np.abs(out["night"].reshape(-1, 3)[valid].astype(np.float64) - day)


_SHIFT = np.array([[1.0, 0.0, -7.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]])
_CENTRE = np.array([[1.0, 0.0, 47.5], [0.0, 1.0, 29.5], [0.0, 0.0, 1.0]])
_ZOOM = _CENTRE @ np.diag([1.1, 1.1, 1.0]) @ np.linalg.inv(_CENTRE) @ _SHIFT
_TILT = np.array([[1.02, 0.01, -4.0], [0.005, 0.98, 2.0], [2e-4, 1e-4, 1.0]])


@pytest.mark.parametrize("night_to_day,night_size", [
    (_SHIFT, None), (_ZOOM, None), (_TILT, None), (_SHIFT, (90, 144)), (_TILT, (45, 70))],
    ids=["shift", "zoom", "perspective", "night-larger", "night-smaller"])
def test_the_homography_maps_augmented_night_pixels_to_the_same_day_content(
        night_to_day: np.ndarray, night_size: tuple[int, int] | None) -> None:
    t = TrainTransform(crop=(40, 56), scale_range=(0.7, 1.4), flip=True, resize=(48, 80))
    flips, pads, unchanged_fits = set(), 0, 0
    for seed in range(8):
        sample = _pair(night_to_day, night_size=night_size)
        out = t(sample, np.random.default_rng(seed))
        flips.add(bool(out["crop_box"][5]))
        pads += int((out["mask"] == 255).any())
        assert out["homography"].dtype == np.float32 and out["homography"].shape == (3, 3)
        error = _content_error(out, out["homography"])
        assert error.mean() < 1.0 and np.percentile(error, 99) < 4.0
        # a matrix half a pixel off does not fit; the untransformed one mostly does not
        off = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
        assert _content_error(out, off @ out["homography"]).mean() > 2.0
        unchanged_fits += int(_content_error(out, sample["homography"]).mean() < 2.0)
        assert np.array_equal(sample["homography"], _pair(night_to_day,
                                                          night_size=night_size)["homography"])
    assert flips == {True, False} and pads > 0 and unchanged_fits <= 2
    # resize alone, with the night image still at its own size: each image's own map
    out = resize(_pair(night_to_day, night_size=night_size), (50, 70))
    assert out["night"].shape == out["image"].shape == (50, 70, 3)
    assert _content_error(out, out["homography"]).mean() < 1.0


def test_resize_matrix_is_where_cv2_resize_samples() -> None:
    from edgeseg.data.transforms import resize_matrix

    ramp = np.tile(np.arange(40, dtype=np.float32), (8, 1))  # value = x
    for width in (13, 40, 97):
        out = cv2.resize(ramp, (width, 8), interpolation=cv2.INTER_LINEAR)
        source_x = np.linalg.inv(resize_matrix((8, 40), (8, width)))[0] @ np.stack(
            [np.arange(width), np.zeros(width), np.ones(width)])
        inside = (source_x >= 0) & (source_x <= 39)
        np.testing.assert_allclose(out[0, inside], source_x[inside], atol=1e-3)


def test_homography_kind_needs_a_3x3_matrix_and_matrix_keys_pass_unchanged() -> None:
    sample = block_sample()
    sample["homography"] = np.eye(2)
    with pytest.raises(ValueError, match="'homography': a homography is a 3x3 matrix"):
        TrainTransform(crop=(16, 16))(sample, np.random.default_rng(0))
    sample = block_sample()
    shift = np.array([[1.0, 0.0, -7.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]])
    sample["pose_matrix"] = shift.copy()
    sample["reference"] = sample["image"].copy()
    sample["reference_homography"] = shift.copy()  # reference -> image
    out = resize(sample, (2 * H, 2 * W))
    assert out["pose_matrix"] is sample["pose_matrix"]
    np.testing.assert_allclose(out["reference_homography"],
                               [[1, 0, -14], [0, 1, -6], [0, 0, 1]], atol=1e-9)
    out = hflip(sample)  # a shift left becomes a shift right
    np.testing.assert_allclose(out["reference_homography"],
                               [[1, 0, 7], [0, 1, -3], [0, 0, 1]], atol=1e-9)
    assert out["reference_homography"].dtype == np.float64
