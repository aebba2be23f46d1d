"""DANIA's static loss (edgeseg.train.nets.static_loss, dania.txt Eq. 9-13) and its warp.

Every expected value is written out by hand next to its tensors (1x3 to 4x4 maps).
"""

from __future__ import annotations

import math

import pytest
import torch

from edgeseg.labels import CAMVID11, CITYSCAPES19, SYNTHIA13, SYNTHIA16, LabelSpace
from edgeseg.train.nets.losses import class_frequency_weights
from edgeseg.train.nets.static_loss import (
    fuse_day_night,
    static_class_ids,
    static_focal_loss,
    static_pseudo_label,
    warp_with_homography,
)


def close(value: torch.Tensor, expected: float) -> None:
    assert value.dim() == 0
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def homography(*rows: list[float]) -> torch.Tensor:
    return torch.tensor([rows], dtype=torch.float32)


def translation(tx: float, ty: float) -> torch.Tensor:
    return homography([1, 0, tx], [0, 1, ty], [0, 0, 1])


def focal(p: float, gamma: float = 1.0) -> float:
    """One class's term of Eq. 12: -(1 - p)^gamma log p."""
    return -((1 - p) ** gamma) * math.log(p)


def static_logits(*pixels: tuple[float, float], dynamic: float = 5.0) -> torch.Tensor:
    """1 x 3 x 1 x n logits, classes 0 and 2 static with softmax (p, q) over those two at
    each pixel (logits log p, log q), class 1 dynamic with a large logit."""
    p = torch.tensor([[math.log(a), dynamic, math.log(b)] for a, b in pixels])
    return p.t().reshape(1, 3, 1, len(pixels))


# --- static classes ----------------------------------------------------------------------

def test_static_classes_by_name() -> None:
    assert static_class_ids(CITYSCAPES19) == list(range(11))
    camvid = static_class_ids(CAMVID11)
    assert [CAMVID11.names[i] for i in camvid] == [
        "sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence"]
    assert camvid == list(range(8))
    assert [SYNTHIA16.names[i] for i in static_class_ids(SYNTHIA16)] == [
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
        "traffic sign", "vegetation", "sky"]
    assert [SYNTHIA13.names[i] for i in static_class_ids(SYNTHIA13)] == [
        "road", "sidewalk", "building", "traffic light", "traffic sign", "vegetation", "sky"]
    assert static_class_ids(LabelSpace("x", ("car", "terrain", "bus", "tree"),
                                       ((0, 0, 0),) * 4)) == [1, 3]
    with pytest.raises(ValueError, match="no static class"):
        static_class_ids(LabelSpace("movers", ("car", "person"), ((0, 0, 0),) * 2))


# --- Eq. 9: the warp ---------------------------------------------------------------------

def test_identity_homography_returns_prob_at_pixel_centres() -> None:
    prob = torch.tensor([[[0.1, 0.9, 0.3, 0.0], [0.7, 0.2, 0.5, 1.0], [0.4, 0.6, 0.8, 0.25]],
                         [[0.9, 0.1, 0.7, 1.0], [0.3, 0.8, 0.5, 0.0], [0.6, 0.4, 0.2, 0.75]]])
    prob = prob.unsqueeze(0)  # 1 x 2 x 3 x 4
    warped, valid = warp_with_homography(prob, homography([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    assert warped.shape == prob.shape and valid.shape == (1, 1, 3, 4)
    assert valid.dtype == torch.bool and bool(valid.all())
    assert torch.allclose(warped, prob, atol=1e-6)
    # a homography is defined up to a positive scale
    warped, valid = warp_with_homography(prob, 2 * homography([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    assert torch.allclose(warped, prob, atol=1e-6) and bool(valid.all())


def test_translation_moves_values_by_whole_columns_and_rows() -> None:
    prob = torch.tensor([[0.0, 1, 2, 3], [4, 5, 6, 7]]).view(1, 1, 2, 4)
    # night (x, y) sees day (x + 2, y): column x holds day column x + 2, the last two
    # columns fall outside the day image
    warped, valid = warp_with_homography(prob, translation(2, 0))
    assert torch.allclose(warped, torch.tensor([[[[2.0, 3, 0, 0], [6, 7, 0, 0]]]]), atol=1e-6)
    assert valid.tolist() == [[[[True, True, False, False]] * 2]]
    # night (x, y) sees day (x, y - 1): row 0 has no counterpart
    warped, valid = warp_with_homography(prob, translation(0, -1))
    assert torch.allclose(warped, torch.tensor([[[[0.0, 0, 0, 0], [0, 1, 2, 3]]]]), atol=1e-6)
    assert valid.tolist() == [[[[False] * 4, [True] * 4]]]
    # each image of a batch has its own homography
    batch = torch.cat([translation(2, 0), translation(-1, 0)])
    warped, valid = warp_with_homography(torch.cat([prob, prob]), batch)
    assert torch.allclose(warped[1], torch.tensor([[[0.0, 0, 1, 2], [0, 4, 5, 6]]]), atol=1e-6)
    assert valid[1].tolist() == [[[False, True, True, True]] * 2]


def test_half_pixel_translation_interpolates_bilinearly() -> None:
    prob = torch.tensor([[0.0, 1, 2, 3], [4, 5, 6, 7]]).view(1, 1, 2, 4)
    warped, valid = warp_with_homography(prob, translation(0.5, 0.5))
    # (x + 0.5, y + 0.5): the mean of a 2x2 block; row 1 and column 3 land outside
    assert torch.allclose(warped, torch.tensor([[[[2.5, 3.5, 4.5, 0], [0, 0, 0, 0]]]]),
                          atol=1e-6)
    assert valid.tolist() == [[[[True, True, True, False], [False] * 4]]]


def test_projective_homography_divides_by_the_third_coordinate() -> None:
    prob = torch.arange(9.0).view(1, 1, 3, 3)  # value 3 y + x: bilinear sampling is exact
    h = homography([1, 0, 0], [0, 1, 0], [0.5, 0, 1])  # (x, y) -> (x, y) / (x / 2 + 1)
    warped, valid = warp_with_homography(prob, h)
    z = torch.tensor([1.0, 1.5, 2.0])
    expected = (3 * torch.arange(3.0).view(3, 1) + torch.arange(3.0)) / z
    assert torch.allclose(warped[0, 0], expected, atol=1e-6) and bool(valid.all())
    # zoom: (x, y) -> (2 x, 2 y)
    warped, valid = warp_with_homography(prob, homography([2, 0, 0], [0, 2, 0], [0, 0, 1]))
    assert torch.allclose(warped[0, 0], torch.tensor([[0.0, 2, 0], [6, 8, 0], [0, 0, 0]]),
                          atol=1e-6)
    assert valid[0, 0].tolist() == [[True, True, False], [True, True, False], [False] * 3]
    # a negative third coordinate is across the vanishing line: no counterpart
    warped, valid = warp_with_homography(prob, -homography([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    assert not bool(valid.any()) and bool((warped == 0).all())


def test_warp_onto_a_grid_of_another_size() -> None:
    prob = torch.tensor([[0.0, 1, 2, 3], [4, 5, 6, 7]]).view(1, 1, 2, 4)
    # a 1 x 2 night grid, (x, y) -> (2 x + 1, y + 1): day (1, 1) and (3, 1)
    warped, valid = warp_with_homography(prob, homography([2, 0, 1], [0, 1, 1], [0, 0, 1]),
                                         size=(1, 2))
    assert warped.shape == (1, 1, 1, 2) and valid.shape == (1, 1, 1, 2)
    assert torch.allclose(warped, torch.tensor([[[[5.0, 7.0]]]]), atol=1e-6)
    assert bool(valid.all())


def test_warp_is_differentiable_in_prob_and_checks_shapes() -> None:
    prob = torch.rand(1, 2, 3, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    warped, _ = warp_with_homography(prob, translation(1, 0))
    warped.sum().backward()
    # column 0 is never sampled, columns 1 and 2 once each
    assert torch.allclose(prob.grad, torch.tensor([0.0, 1, 1]).expand(1, 2, 3, 3), atol=1e-6)
    with pytest.raises(ValueError, match="1 x 3 x 3"):
        warp_with_homography(prob.detach(), torch.eye(3))
    with pytest.raises(ValueError, match="sides >= 2"):
        warp_with_homography(torch.zeros(1, 2, 1, 3), torch.eye(3).unsqueeze(0))


# --- Eq. 10-11: fusion -------------------------------------------------------------------

def test_fusion_weighs_each_channel_by_the_day_confidence() -> None:
    day = torch.tensor([0.41, 0.39, 0.2]).view(1, 3, 1, 1)
    night = torch.tensor([0.2, 0.7, 0.1]).view(1, 3, 1, 1)
    # class 0: 0.41 > u = 0.4 -> 0.8 * 0.41 + 0.2 * 0.2; classes 1, 2: h2 = 0.6,
    # 0.6 * 0.39 + 0.4 * 0.7 and 0.6 * 0.2 + 0.4 * 0.1
    fused = fuse_day_night(day, night)
    assert fused.shape == day.shape
    assert torch.allclose(fused.flatten(), torch.tensor([0.368, 0.514, 0.16]))
    # h1 = 1, h2 = 0 picks the day value where it is confident, else the night's
    assert torch.allclose(fuse_day_night(day, night, h1=1.0, h2=0.0).flatten(),
                          torch.tensor([0.41, 0.7, 0.1]))
    # strictly above u: at u = 0.5 a day probability of 0.5 takes h2
    day = torch.tensor([0.5, 0.25, 0.25]).view(1, 3, 1, 1)
    night = torch.tensor([0.25, 0.5, 0.25]).view(1, 3, 1, 1)
    assert torch.allclose(fuse_day_night(day, night, u=0.5).flatten(),
                          torch.tensor([0.4, 0.35, 0.25]))


def test_fusion_treats_both_predictions_as_targets() -> None:
    day = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1).requires_grad_()
    night = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1).requires_grad_()
    fused = fuse_day_night(day, night)
    assert not fused.requires_grad and fused.grad_fn is None
    with pytest.raises(ValueError, match="shapes differ"):
        fuse_day_night(day, night[:, :1])


# --- pseudo-label --------------------------------------------------------------------------

def _fused() -> torch.Tensor:
    """1 x 4 x 1 x 4: four pixels' class probabilities."""
    return torch.tensor([[0.4, 0.3, 0.2, 0.1],
                         [0.3, 0.0, 0.5, 0.2],
                         [0.1, 0.1, 0.7, 0.1],
                         [0.7, 0.1, 0.1, 0.1]]).t().reshape(1, 4, 1, 4)


def test_pseudo_label_reweights_and_indexes_into_the_static_ids() -> None:
    weights = torch.tensor([1.0, 5.0, 0.5, 2.0])
    valid = torch.tensor([True, True, True, False]).view(1, 1, 1, 4)
    # weighted: [0.4, 1.5, 0.1, 0.2], [0.3, 0, 0.25, 0.4], [0.1, 0.5, 0.35, 0.2]; static
    # classes 0, 2, 3 -> argmax 0 (class 0), 2 (class 3), 1 (class 2); pixel 4 a hole
    label = static_pseudo_label(_fused(), weights, [0, 2, 3], valid)
    assert label.dtype == torch.long and label.tolist() == [[[0, 2, 1, 255]]]
    # unweighted, pixel 2's largest static probability is class 2's 0.5
    assert static_pseudo_label(_fused(), torch.ones(4), [0, 2, 3], valid).tolist() == [
        [[0, 1, 1, 255]]]
    # the index follows the order of static_ids: [3, 0]
    assert static_pseudo_label(_fused(), weights, [3, 0], valid).tolist() == [[[1, 0, 0, 255]]]
    assert static_pseudo_label(_fused(), weights, [0, 2, 3], valid,
                               ignore_index=-1).tolist() == [[[0, 2, 1, -1]]]
    # the authors' variant: pixels whose weighted argmax is dynamic (class 1) are ignored
    assert static_pseudo_label(_fused(), weights, [0, 2, 3], valid,
                               ignore_dynamic=True).tolist() == [[[255, 2, 255, 255]]]


def test_pseudo_label_checks_its_inputs() -> None:
    valid = torch.ones(1, 1, 1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="4 entries"):
        static_pseudo_label(_fused(), torch.ones(3), [0], valid)
    with pytest.raises(ValueError, match="bool"):
        static_pseudo_label(_fused(), torch.ones(4), [0], valid.float())
    with pytest.raises(ValueError, match="distinct class ids"):
        static_pseudo_label(_fused(), torch.ones(4), [0, 4], valid)
    with pytest.raises(ValueError, match="distinct class ids"):
        static_pseudo_label(_fused(), torch.ones(4), [2, 2], valid)


# --- Eq. 12-13: the focal loss ---------------------------------------------------------------

def test_focal_loss_counts_every_label_of_the_3x3_neighbourhood() -> None:
    # static softmax (class 0, class 2) at three pixels in a row; labels 0, 0, 1
    logits = static_logits((0.75, 0.25), (0.5, 0.5), (0.2, 0.8))
    pseudo = torch.tensor([[[0, 0, 1]]])
    # dilated labels: pixel 0 {0}; pixel 1 {0, 1} (its right neighbour is 1); pixel 2
    # {0, 1} (its left neighbour is 0)
    dilated = (focal(0.75) + focal(0.5) + focal(0.5) + focal(0.2) + focal(0.8)) / 3
    own_label_only = (focal(0.75) + focal(0.5) + focal(0.8)) / 3
    loss = static_focal_loss(logits, pseudo, [0, 2])
    close(loss, dilated)
    assert abs(float(loss) - own_label_only) > 0.3
    close(static_focal_loss(logits, pseudo, [0, 2], gamma=2.0),
          (focal(0.75, 2) + focal(0.5, 2) + focal(0.5, 2) + focal(0.2, 2) + focal(0.8, 2)) / 3)
    close(static_focal_loss(logits, pseudo, [0, 2], gamma=0.0),
          -(math.log(0.75) + 2 * math.log(0.5) + math.log(0.2) + math.log(0.8)) / 3)


def test_neighbourhood_1_is_the_plain_focal_loss_and_5_reaches_two_pixels() -> None:
    logits = static_logits((0.75, 0.25), (0.5, 0.5), (0.2, 0.8), (0.6, 0.4))
    pseudo = torch.tensor([[[0, 0, 0, 1]]])
    # own label only (Table 5's focal row): p of class 0, 0, 0 and of class 1 at pixel 3
    close(static_focal_loss(logits, pseudo, [0, 2], neighbourhood=1),
          (focal(0.75) + focal(0.5) + focal(0.2) + focal(0.4)) / 4)
    # 5x5: class 1 at pixel 3 reaches pixels 1, 2, 3; class 0 reaches every pixel
    close(static_focal_loss(logits, pseudo, [0, 2], neighbourhood=5),
          (focal(0.75) + focal(0.5) + focal(0.5) + focal(0.2) + focal(0.8) + focal(0.6)
           + focal(0.4)) / 4)
    for side in (0, 2):
        with pytest.raises(ValueError, match=f"neighbourhood must be an odd side >= 1, got "
                                             f"{side}"):
            static_focal_loss(logits, pseudo, [0, 2], neighbourhood=side)
    with pytest.raises(ValueError, match=r"night_logits must be B x C x h x w, got shape "
                                         r"\(3, 1, 4\)"):
        static_focal_loss(logits[0], pseudo, [0, 2])


def test_focal_loss_neighbourhood_is_3x3_with_diagonals_per_image() -> None:
    logits = torch.zeros(2, 2, 3, 3)  # static softmax 0.5, 0.5 everywhere
    pseudo = torch.zeros(2, 3, 3, dtype=torch.long)
    pseudo[0, 0, 0] = 1
    # image 0: class 0 reaches all 9 pixels, class 1 the 4 pixels of the top-left 2x2
    # block (a cross would reach 3); image 1: class 0 only. 13 + 9 terms over 18 pixels
    close(static_focal_loss(logits, pseudo, [0, 1]), 22 * focal(0.5) / 18)
    close(static_focal_loss(logits[:1], pseudo[:1], [0, 1]), 13 * focal(0.5) / 9)


def test_ignored_pixels_are_no_term_and_label_no_neighbour() -> None:
    logits = static_logits((0.75, 0.25), (0.5, 0.5), (0.2, 0.8))
    pseudo = torch.tensor([[[0, 255, 1]]])
    # pixel 1 is ignored: no term of its own, and its neighbours' labels do not spread
    # over it; pixels 0 and 2 are not neighbours. N = 2
    close(static_focal_loss(logits, pseudo, [0, 2]), (focal(0.75) + focal(0.8)) / 2)
    close(static_focal_loss(logits, torch.tensor([[[0, -1, 1]]]), [0, 2], ignore_index=-1),
          (focal(0.75) + focal(0.8)) / 2)


def test_focal_loss_without_valid_pixels_is_a_connected_zero() -> None:
    logits = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_()
    loss = static_focal_loss(logits, torch.full((1, 2, 2), 255), [0, 2])
    assert float(loss.detach()) == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and bool((logits.grad == 0).all())


def test_focal_gradient_by_hand() -> None:
    # one pixel, static softmax (p, 1 - p) at p = 0.5, label 0:
    # L = -(1 - p) log p, dL/dz0 = p (1 - p) log p - (1 - p)^2 = -0.25 (1 + ln 2),
    # dL/dz1 the opposite; the dynamic channel gets nothing
    logits = torch.tensor([0.0, 3.0, 0.0]).view(1, 3, 1, 1).requires_grad_()
    static_focal_loss(logits, torch.zeros(1, 1, 1, dtype=torch.long), [0, 2]).backward()
    g = -0.25 * (1 + math.log(2))
    assert torch.allclose(logits.grad.flatten(), torch.tensor([g, 0.0, -g]))


def test_focal_loss_checks_its_inputs() -> None:
    logits = static_logits((0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError, match="outside 0..1"):
        static_focal_loss(logits, torch.tensor([[[0, 2]]]), [0, 2])
    with pytest.raises(ValueError, match="1 x 1 x 2"):
        static_focal_loss(logits, torch.tensor([[0, 1]]), [0, 2])
    with pytest.raises(ValueError, match="distinct class ids"):
        static_focal_loss(logits, torch.tensor([[[0, 1]]]), [0, 3])


def test_static_loss_trains_the_night_static_channels_only() -> None:
    gen = torch.Generator().manual_seed(3)
    day_logits = torch.randn(2, 4, 4, 4, generator=gen).requires_grad_()
    night_logits = torch.randn(2, 4, 4, 4, generator=gen).requires_grad_()
    static = [0, 2, 3]
    day, valid = warp_with_homography(torch.softmax(day_logits, 1),
                                      torch.cat([translation(1, 0), translation(0, 0)]))
    fused = fuse_day_night(day, torch.softmax(night_logits, 1))
    weights = class_frequency_weights([0.4, 0.1, 0.3, 0.2])
    pseudo = static_pseudo_label(fused, weights, static, valid)
    assert (pseudo[0, :, 3] == 255).all() and (pseudo[1] != 255).all()
    loss = static_focal_loss(night_logits, pseudo, static)
    assert float(loss.detach()) > 0
    loss.backward()
    assert day_logits.grad is None
    assert bool((night_logits.grad[:, 1] == 0).all())
    for c in static:
        assert night_logits.grad[:, c].abs().sum() > 0
