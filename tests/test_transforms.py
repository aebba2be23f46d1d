"""Augmentation keeps every image and the label aligned, pads with ignore and is
reproducible per generator seed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.data.transforms import (
    TrainTransform,
    color_jitter,
    hflip,
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
