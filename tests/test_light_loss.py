"""DANIA's light loss (edgeseg.train.nets.light_loss, dania.txt Eq. 3-7).

Every expected value is written out by hand next to its tensors (2x2 to 4x4 images), or,
for the SSIM, computed by a plain numpy loop in this file.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgeseg.train.nets.light_loss import (
    LightWeights,
    exposure_loss,
    gram_matrix,
    light_loss,
    light_terms,
    night_level,
    ssim_loss,
    style_loss,
    tv_loss,
)


def close(value: torch.Tensor, expected: float) -> None:
    assert value.dim() == 0
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def image(*channels: list[list[float]]) -> torch.Tensor:
    """One image (1 x C x H x W) from its channels written row by row."""
    return torch.tensor([channels], dtype=torch.float32)


# --- Eq. 3 -------------------------------------------------------------------------------

def test_tv_sums_squared_forward_differences_over_channels_per_pixel_of_one_image() -> None:
    # D = I - R: channel 0 [[0, 1, 3], [0, 0, 0]], channel 1 [[2, 2, 2], [2, 2, 0]], 2 zero
    i = image([[1, 2, 3], [0, 0, 0]], [[2, 2, 2], [2, 2, 2]], [[5, 5, 5], [5, 5, 5]])
    r = image([[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 2]], [[5, 5, 5], [5, 5, 5]])
    # channel 0: d_x 1, 2 | 0, 0 -> 5; d_y 0, -1, -3 -> 10
    # channel 1: d_x 0, 0 | 0, -2 -> 4; d_y 0, 0, -2 -> 4
    # (15 + 8) / N, N = 2 x 3 pixels
    close(tv_loss(i, r), 23 / 6)
    # a second image with D = 0 halves the batch mean
    close(tv_loss(torch.cat([i, i]), torch.cat([r, i])), 23 / 12)
    # the sign of D does not matter, a constant offset does not count
    close(tv_loss(r, i), 23 / 6)
    close(tv_loss(i + 7, r), 23 / 6)


def test_tv_gradient_reaches_relit_only() -> None:
    i = image([[1.0, 0.0], [0.0, 0.0]]).requires_grad_()
    r = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = tv_loss(i, r)
    close(loss, 2 / 4)  # D = [[1, 0], [0, 0]]: d_x -1, d_y -1
    loss.backward()
    assert i.grad is None
    # d/dR of ((D00 - D01)^2 + (D00 - D10)^2) / 4 at D00 = 1: -(2 + 2) / 4 at R00, 2/4 at
    # R01 and R10
    assert torch.allclose(r.grad, torch.tensor([[[[-1.0, 0.5], [0.5, 0.0]]]]))


# --- Eq. 4 -------------------------------------------------------------------------------

def _two_patch_means() -> torch.Tensor:
    """1 x 3 x 64 x 64; the channel mean is 0.0 (top 16 rows of each 32-row band) and 0.4
    (bottom 16) in the left 32 columns, so their 32x32 patches average 0.2; 0.6 on the
    right. The channels are the mean -0.2, +0, +0.2."""
    intensity = torch.full((64, 64), 0.6)
    rows = torch.arange(64)
    intensity[:, :32] = torch.where((rows % 32 < 16)[:, None], 0.0, 0.4).expand(64, 32)
    offsets = torch.tensor([-0.2, 0.0, 0.2]).view(3, 1, 1)
    return (intensity + offsets).unsqueeze(0)


def test_exposure_pools_32x32_patches_of_the_channel_mean() -> None:
    relit = _two_patch_means()
    # patches 0.2, 0.6, 0.2, 0.6 against E = 0.1: |0.1|, |0.5| -> mean 0.3
    # (16x16 pooling: 0.1, 0.3, 0.5 -> 0.35; squared: 0.13; per channel: 1/3)
    close(exposure_loss(relit, 0.1), 0.3)
    close(exposure_loss(relit, torch.tensor(0.1)), 0.3)
    close(exposure_loss(relit, torch.tensor([0.1])), 0.3)
    # a level between the means: |0.2 - 0.5|, |0.6 - 0.5|
    close(exposure_loss(relit, 0.5), 0.2)
    # another patch size pools other regions: 16x16 -> 0.0, 0.4 (left), 0.6 (right)
    close(exposure_loss(relit, 0.1, patch=16), (0.1 + 0.3 + 2 * 0.5) / 4)
    # the batch is averaged: a second image exactly at the level adds 0
    close(exposure_loss(torch.cat([relit, torch.full_like(relit, 0.1)]), 0.1), 0.15)


def test_exposure_leaves_out_a_border_narrower_than_a_patch() -> None:
    relit = torch.full((1, 3, 32, 48), 0.5)
    relit[..., 32:] = 100.0  # a 32 x 16 border: no full patch, not pooled
    close(exposure_loss(relit, 0.2), 0.3)
    with pytest.raises(ValueError, match="smaller than one 32x32 patch"):
        exposure_loss(torch.zeros(1, 3, 31, 64), 0.2)
    with pytest.raises(ValueError, match="scalar"):
        exposure_loss(relit, torch.tensor([0.1, 0.2]))


def test_night_level_is_the_batch_mean_intensity_and_a_target() -> None:
    night = torch.stack([torch.full((3, 2, 2), 0.1), torch.full((3, 2, 2), 0.3)])
    night[1, 0] = 0.6  # second image: channels 0.6, 0.3, 0.3 -> 0.4
    night.requires_grad_()
    level = night_level(night)
    close(level, (0.1 + 0.4) / 2)
    assert not level.requires_grad
    relit = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)
    loss = exposure_loss(relit, night.mean())  # a level with a graph is detached too
    loss.backward()
    assert night.grad is None and relit.grad is not None
    # d|mean - E| / d pixel = 1 / (3 * 32 * 32) for mean > E
    assert torch.allclose(relit.grad, torch.full_like(relit, 1 / 3072))


# --- Eq. 5 -------------------------------------------------------------------------------

def test_gram_matrix_normalised_by_channels_and_pixels() -> None:
    x = image([[1, 2], [3, 4]], [[1, 0], [0, 1]])
    # <a, a> = 30, <a, b> = 5, <b, b> = 2; C H W = 8
    assert torch.allclose(gram_matrix(x), torch.tensor([[[30, 5], [5, 2]]]) / 8)
    assert gram_matrix(torch.cat([x, 2 * x])).shape == (2, 2, 2)
    assert torch.allclose(gram_matrix(torch.cat([x, 2 * x]))[1], 4 * gram_matrix(x)[0])


def test_style_compares_each_relit_gram_with_the_mean_night_gram() -> None:
    # 2 channels, 1 x 2 images: C H W = 4
    night = torch.cat([image([[1, 1]], [[0, 0]]), image([[0, 0]], [[1, 1]])])
    # G: [[0.5, 0], [0, 0]] and [[0, 0], [0, 0.5]] -> mean [[0.25, 0], [0, 0.25]]
    relit = torch.cat([image([[1, 0]], [[0, 1]]), image([[1, 1]], [[1, 1]])])
    # G: [[0.25, 0], [0, 0.25]] (difference 0) and all 0.5 (difference
    # [[0.25, 0.5], [0.5, 0.25]], mean square 0.625 / 4)
    close(style_loss(relit, night), (0 + 0.625 / 4) / 2)
    # pairing relit i with night i instead would give 0.1171875
    # a night batch of one image, and of another size (Gram matrices are means)
    close(style_loss(relit[:1], night[:1]), (0.0625 + 0.0625) / 4)
    close(style_loss(relit[:1], night[:1].repeat(1, 1, 3, 5)), (0.0625 + 0.0625) / 4)


def test_style_gradient_reaches_relit_only() -> None:
    night = image([[1, 1]], [[0, 0]]).requires_grad_()
    relit = image([[1, 0]], [[0, 1]]).requires_grad_()
    style_loss(relit, night).backward()
    assert night.grad is None and relit.grad is not None and relit.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="channels"):
        style_loss(relit, torch.zeros(1, 3, 1, 2))


# --- Eq. 6 -------------------------------------------------------------------------------

def _ssim_loss_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Monodepth's SSIM written out: 3x3 blocks of the reflection-padded images."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    b, c, h, w = x.shape

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    total = 0.0
    for n in range(b):
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    block = [(reflect(i + di, h), reflect(j + dj, w))
                             for di in (-1, 0, 1) for dj in (-1, 0, 1)]
                    xs = np.array([x[n, k, p, q] for p, q in block], np.float64)
                    ys = np.array([y[n, k, p, q] for p, q in block], np.float64)
                    mx, my = xs.mean(), ys.mean()
                    vx, vy = (xs * xs).mean() - mx * mx, (ys * ys).mean() - my * my
                    cov = (xs * ys).mean() - mx * my
                    ssim = ((2 * mx * my + c1) * (2 * cov + c2)
                            / ((mx * mx + my * my + c1) * (vx + vy + c2)))
                    total += min(max((1 - ssim) / 2, 0.0), 1.0)
    return total / (b * c * h * w)


def test_ssim_of_constant_images_by_hand() -> None:
    # no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) * C2 / C2
    a, b = torch.full((1, 3, 3, 3), 0.5), torch.full((1, 3, 3, 3), 0.25)
    ssim = (2 * 0.5 * 0.25 + 1e-4) / (0.25 + 0.0625 + 1e-4)
    close(ssim_loss(a, b), (1 - ssim) / 2)
    close(ssim_loss(a, a), 0.0)


def test_ssim_matches_a_loop_over_reflected_3x3_blocks() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (2, 3, 4, 4)).astype(np.float32)
    y = np.clip(x + rng.normal(0.0, 0.2, x.shape), -0.1, 1.1).astype(np.float32)
    close(ssim_loss(torch.from_numpy(x), torch.from_numpy(y)), _ssim_loss_by_loops(x, y))
    close(ssim_loss(torch.from_numpy(y), torch.from_numpy(x)), _ssim_loss_by_loops(y, x))


def test_ssim_of_a_4x4_image_against_a_flat_one() -> None:
    # every row 0, 1, 1, 1 vs a flat 0.5; reflected, a row reads 1 | 0, 1, 1, 1 | 1, so the
    # 3x3 blocks of columns 0 and 1 hold 0, 1, 1 (mean 2/3), those of columns 2 and 3 only
    # 1s (replicated padding would give column 0 a mean of 1/3)
    x = torch.tensor([[0.0, 1.0, 1.0, 1.0]] * 4).view(1, 1, 4, 4)
    y = torch.full_like(x, 0.5)
    c1, c2 = 1e-4, 9e-4

    def ssim(mean: float) -> float:  # against y's mean 0.5, y's variance and covariance 0
        variance = mean - mean * mean  # of values in {0, 1}
        return (2 * mean * 0.5 + c1) * c2 / ((mean * mean + 0.25 + c1) * (variance + c2))

    expected = (2 * (1 - ssim(2 / 3)) + 2 * (1 - ssim(1.0))) / 2 / 4
    close(ssim_loss(x, y), expected)
    close(ssim_loss(x.repeat(2, 3, 1, 1), y.repeat(2, 3, 1, 1)), expected)


def test_ssim_gradient_reaches_relit_only() -> None:
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1)).requires_grad_()
    r = (x.detach() * 0.5).requires_grad_()
    ssim_loss(x, r).backward()
    assert x.grad is None and r.grad is not None and r.grad.abs().sum() > 0


# --- Eq. 7 -------------------------------------------------------------------------------

def test_light_weights_are_the_papers() -> None:
    assert dataclasses.astuple(LightWeights()) == (10.0, 1.0, 10.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        LightWeights().tv = 1.0  # type: ignore[misc]


def test_light_loss_weights_each_term() -> None:
    terms = {"tv": torch.tensor(1.0), "exp": torch.tensor(100.0),
             "style": torch.tensor(10_000.0), "ssim": torch.tensor(1_000_000.0)}
    # one decimal digit per weight: 10 * 1 + 1 * 100 + 10 * 1e4 + 1 * 1e6
    close(light_loss(terms, LightWeights()), 1_100_110.0)
    close(light_loss(terms, LightWeights(tv=2, exp=3, style=4, ssim=5)),
          2 + 300 + 40_000 + 5_000_000)
    with pytest.raises(KeyError, match="style"):
        light_loss({k: v for k, v in terms.items() if k != "style"}, LightWeights())


def test_light_terms_are_the_four_losses_and_train_relit_only() -> None:
    gen = torch.Generator().manual_seed(2)
    img = torch.rand(2, 3, 32, 32, generator=gen).requires_grad_()
    relit = (img.detach() * 0.8 + 0.1).requires_grad_()
    night = (torch.rand(3, 3, 32, 32, generator=gen) * 0.2).requires_grad_()
    level = night_level(night).requires_grad_()
    terms = light_terms(img, relit, night, level)
    assert list(terms) == ["tv", "exp", "style", "ssim"]
    assert torch.equal(terms["tv"], tv_loss(img, relit))
    assert torch.equal(terms["exp"], exposure_loss(relit, level))
    assert torch.equal(terms["style"], style_loss(relit, night))
    assert torch.equal(terms["ssim"], ssim_loss(img, relit))
    assert all(float(v.detach()) > 0 for v in terms.values())
    light_loss(terms, LightWeights()).backward()
    assert img.grad is None and night.grad is None and level.grad is None
    assert relit.grad is not None and relit.grad.abs().sum() > 0
    # patch is passed on
    assert torch.equal(light_terms(img, relit, night, level, patch=16)["exp"],
                       exposure_loss(relit, level, 16))


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        tv_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 3))
    with pytest.raises(ValueError, match="B x C x H x W"):
        ssim_loss(torch.zeros(3, 2, 2), torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="sides >= 2"):
        ssim_loss(torch.zeros(1, 3, 1, 4), torch.zeros(1, 3, 1, 4))
