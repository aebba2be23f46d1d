"""Shared blocks of the UDA methods (edgeseg.train.nets): discriminator variants, SPADE,
layer norm, EMA teacher, losses and class weights, VGG-19 features, relighting net.

Every number a formula produces is checked against a hand computation written next to
it, on tensors small enough to follow (2 classes, 1x2 images).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from edgeseg.errors import EdgesegError
from edgeseg.train.nets.discriminator import (
    MultiScaleDiscriminator,
    MultiScaleGANLoss,
    build_discriminator,
    build_multiscale_discriminator,
)
from edgeseg.train.nets.ema import EMATeacher
from edgeseg.train.nets.gan_loss import GANLoss
from edgeseg.train.nets.losses import (
    class_frequencies,
    class_frequency_weights,
    confidence_mask,
    confidence_masked_mse,
    median_frequency_weights,
    symmetric_cross_entropy,
)
from edgeseg.train.nets.registry import build_net, net_spec
from edgeseg.train.nets.relight import RelightNet, build_relight_net
from edgeseg.train.nets.spade import SPADE, LayerNorm2d, SPADEResBlock
from edgeseg.train.nets.vgg import (
    VGG19_LAYERS,
    FeatureNetError,
    SegmenterEncoderFeatures,
    VGG19Features,
    build_feature_net,
    load_vgg19,
)

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def _convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def _pixels(*probs_first_class: float) -> torch.Tensor:
    """2-class logits (1, 2, 1, n) whose softmax puts p on class 0: logits (log(p/(1-p)), 0)."""
    z = torch.tensor([math.log(p / (1 - p)) for p in probs_first_class])
    return torch.stack([z, torch.zeros_like(z)]).view(1, 2, 1, -1)


# ---------------------------------------------------------------- discriminators


def test_dania_output_space_discriminator() -> None:
    # dania.txt Sec. 3.2: 5 convs, 64/128/256/256/1, kernel 4, strides 2, 2, 1, 1, 1,
    # LeakyReLU 0.2, no norm; input = the 19-class softmax
    d = build_discriminator(19, n_layers=5, strides=[2, 2, 1, 1, 1],
                            channels=[64, 128, 256, 256, 1], norm="none")
    convs = _convs(d)
    assert [c.stride[0] for c in convs] == [2, 2, 1, 1, 1]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 1]
    assert {c.kernel_size for c in convs} == {(4, 4)} and convs[0].in_channels == 19
    relus = [m for m in d.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(relus) == 4 and {m.negative_slope for m in relus} == {0.2}
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in d.modules())
    # two halvings, then 'same'-padded stride-1 convs: the score map is H/4 x W/4
    assert d(torch.zeros(1, 19, 64, 96)).shape == (1, 1, 16, 24)
    assert d.min_input_size() == 4 and d(torch.zeros(1, 19, 4, 4)).shape == (1, 1, 1, 1)


def test_per_layer_strides_and_channels_are_checked() -> None:
    with pytest.raises(ValueError, match="one stride per conv"):
        build_discriminator(3, n_layers=5, strides=[2, 2, 1])
    with pytest.raises(ValueError, match="1 or 2"):
        build_discriminator(3, n_layers=3, strides=[2, 3, 1])
    with pytest.raises(ValueError, match="the last 1"):
        build_discriminator(3, n_layers=3, channels=[8, 16, 2])
    with pytest.raises(ValueError, match="one entry per conv"):
        build_discriminator(3, n_layers=3, channels=[8, 1])
    # strides override stride; channels override the ndf ladder (and norm sits in between)
    d = build_discriminator(3, ndf=4, n_layers=3, stride=1, strides=(2, 1, 2),
                            channels=(5, 6, 1), norm="batch")
    assert [c.stride[0] for c in _convs(d)] == [2, 1, 2]
    assert [m.num_features for m in d.modules() if isinstance(m, nn.BatchNorm2d)] == [6]
    assert d(torch.zeros(2, 3, 16, 20)).shape == (2, 1, 4, 5) and d.min_input_size() == 4


def test_spectral_norm_on_every_conv() -> None:
    torch.manual_seed(0)
    plain = build_discriminator(3, ndf=4, n_layers=3)
    assert not any(parametrize.is_parametrized(c) for c in _convs(plain))
    assert "model.0.weight" in plain.state_dict()  # unchanged keys without spectral norm
    d = build_discriminator(3, ndf=4, n_layers=3, spectral_norm=True)
    convs = _convs(d)
    assert len(convs) == 3 and all(parametrize.is_parametrized(c, "weight") for c in convs)
    assert "model.0.parametrizations.weight.original" in d.state_dict()
    d.train()
    for _ in range(30):  # each training forward runs one power iteration
        d(torch.randn(1, 3, 16, 16))
    for conv in convs:  # the effective weight has largest singular value 1
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=1e-2)


def test_multiscale_discriminator_scales_and_pooling() -> None:
    torch.manual_seed(0)
    ms = build_multiscale_discriminator(num_scales=3, in_channels=3, ndf=4, n_layers=3)
    assert isinstance(ms, MultiScaleDiscriminator) and len(ms.scales) == 3
    assert ms.scales[0] is not ms.scales[1]  # own weights per scale
    outs = ms(torch.randn(2, 3, 32, 48))
    # 3 stride-2 convs per scale: 32x48 -> 4x6; input halved per scale: 2x3, then 1x1
    assert [tuple(o.shape) for o in outs] == [(2, 1, 4, 6), (2, 1, 2, 3), (2, 1, 1, 1)]
    assert ms.min_input_size() == 8 * 4
    # 3x3 average, stride 2, pad 1, padding not counted (pix2pixHD):
    # [[0 1 2 3] [4 5 6 7] [8 9 10 11] [12 13 14 15]]
    #   top-left window is rows 0-1 x cols 0-1: (0+1+4+5)/4 = 2.5
    #   top-right: rows 0-1 x cols 1-3: (1+2+3+5+6+7)/6 = 4
    #   bottom-left: rows 1-3 x cols 0-1: (4+5+8+9+12+13)/6 = 8.5
    #   bottom-right: rows 1-3 x cols 1-3: 90/9 = 10
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert ms.downsample(x).flatten().tolist() == pytest.approx([2.5, 4.0, 8.5, 10.0])
    # scale i sees the input pooled i times
    ms.scales = nn.ModuleList([nn.Identity(), nn.Identity(), nn.Identity()])
    seen = ms(x)
    assert torch.equal(seen[0], x) and seen[1].flatten().tolist() == pytest.approx([2.5, 4, 8.5, 10])
    assert seen[2].flatten().tolist() == pytest.approx([(2.5 + 4 + 8.5 + 10) / 4])
    with pytest.raises(ValueError, match="num_scales"):
        build_multiscale_discriminator(num_scales=0)


def test_multiscale_gan_loss_averages_scales() -> None:
    fine = torch.tensor([[[[0.5, 0.5], [0.5, -1.0]]]])  # 4 patches
    coarse = torch.full((1, 1, 1, 1), 2.0)  # 1 patch
    loss = MultiScaleGANLoss("lsgan")
    # LSGAN per scale, then the mean over the two scales (not over the 5 patches):
    real_fine = (3 * (0.5 - 1) ** 2 + (-1 - 1) ** 2) / 4  # 1.1875
    real_coarse = (2 - 1) ** 2  # 1
    fake_fine = (3 * 0.5**2 + 1.0) / 4  # 0.4375
    fake_coarse = 2.0**2  # 4
    assert loss([fine, coarse], True).item() == pytest.approx((real_fine + real_coarse) / 2)
    assert loss([fine, coarse], False).item() == pytest.approx((fake_fine + fake_coarse) / 2)
    d = 0.5 * ((real_fine + real_coarse) / 2 + (fake_fine + fake_coarse) / 2)
    assert loss.discriminator([fine, coarse], [fine, coarse]).item() == pytest.approx(d)
    assert loss(fine, True).item() == pytest.approx(GANLoss()(fine, True).item())  # one scale

    def bce_real(v: float) -> float:  # -log(sigmoid(v))
        return math.log1p(math.exp(-v))

    vanilla = MultiScaleGANLoss("vanilla")
    expected = ((3 * bce_real(0.5) + bce_real(-1.0)) / 4 + bce_real(2.0)) / 2
    assert vanilla([fine, coarse], True).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="no discriminator outputs"):
        loss([], True)


# ---------------------------------------------------------------- SPADE, layer norm


def _constant_spade(gamma: list[float], beta: list[float], label_channels: int = 3) -> SPADE:
    spade = SPADE(len(gamma), label_channels, hidden=4)
    with torch.no_grad():
        spade.gamma.weight.zero_()
        spade.gamma.bias.copy_(torch.tensor(gamma))
        spade.beta.weight.zero_()
        spade.beta.bias.copy_(torch.tensor(beta))
    return spade


def test_spade_with_constant_gamma_beta() -> None:
    # channel 0: [1, 3] -> mean 2, var 1 -> IN = [-1, 1]
    # channel 1: [0, 4] -> mean 2, var 4 -> IN = [-1, 1]
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 4.0]]]])
    spade = _constant_spade([0.5, -0.5], [0.25, 1.0])
    out = spade(x, torch.randn(1, 3, 5, 7))  # any map: gamma/beta convs ignore it
    # out = IN(x) * (1 + gamma) + beta
    # ch 0: [-1, 1] * 1.5 + 0.25 = [-1.25, 1.75];  ch 1: [-1, 1] * 0.5 + 1 = [0.5, 1.5]
    expected = torch.tensor([[[[-1.25, 1.75]], [[0.5, 1.5]]]])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert not any(True for _ in spade.norm.parameters())  # parameter-free norm


@pytest.mark.parametrize("resize", ["nearest", "bilinear"])
def test_spade_resizes_the_map_to_the_activation(resize: str) -> None:
    # 1 label channel, hidden 1, 1x1 convs: shared = ReLU(m), gamma = shared, beta = 0
    spade = SPADE(1, 1, hidden=1, kernel_size=1, resize=resize)  # type: ignore[arg-type]
    with torch.no_grad():
        for conv in (spade.shared[0], spade.gamma):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
        spade.beta.weight.zero_()
        spade.beta.bias.zero_()
    x = torch.tensor([[[[1.0, 3.0, 1.0, 3.0], [3.0, 1.0, 3.0, 1.0]]]])  # mean 2, var 1
    norm = torch.tensor([[-1.0, 1.0, -1.0, 1.0], [1.0, -1.0, 1.0, -1.0]])
    segmap = torch.tensor([[[[0.5, 2.0]]]])  # 1x2 -> 2x4
    if resize == "nearest":
        gamma = torch.tensor([0.5, 0.5, 2.0, 2.0])
    else:  # half-pixel centres: source x = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
        gamma = torch.tensor([0.5, 0.5 + 0.25 * 1.5, 0.5 + 0.75 * 1.5, 2.0])
    out = spade(x, segmap)
    torch.testing.assert_close(out[0, 0], norm * (1 + gamma), atol=1e-4, rtol=0)


def test_spade_resblock_shortcut_and_spectral_norm() -> None:
    torch.manual_seed(0)
    same = SPADEResBlock(4, 4, label_channels=3, hidden=8)
    assert not same.learned_shortcut
    with torch.no_grad():  # residual branch off: the block is the identity
        same.conv_1.weight.zero_()
        same.conv_1.bias.zero_()
    x, segmap = torch.randn(2, 4, 6, 10), torch.randn(2, 3, 3, 5)
    assert torch.equal(same(x, segmap), x)
    wider = SPADEResBlock(4, 6, label_channels=3, hidden=8, spectral_norm=True)
    assert wider.learned_shortcut and wider.conv_0.out_channels == 4  # middle = min(in, out)
    assert all(parametrize.is_parametrized(c, "weight")
               for c in (wider.conv_0, wider.conv_1, wider.conv_s))
    assert wider(x, segmap).shape == (2, 6, 6, 10)


def test_layer_norm_normalises_each_sample_over_chw() -> None:
    # sample 0: channel 0 [1, 3], channel 1 [5, 7]: mean 4, var (9 + 1 + 1 + 9) / 4 = 5
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 7.0]]],
                      [[[0.0, 0.0]], [[2.0, 2.0]]]])  # sample 1: mean 1, var 1
    ln = LayerNorm2d(2)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([2.0, 1.0]))
        ln.bias.copy_(torch.tensor([0.0, 0.5]))
    r5 = math.sqrt(5)
    expected = torch.tensor([[[[2 * -3 / r5, 2 * -1 / r5]], [[1 / r5 + 0.5, 3 / r5 + 0.5]]],
                             [[[-2.0, -2.0]], [[1.5, 1.5]]]])
    torch.testing.assert_close(ln(x), expected, atol=1e-4, rtol=0)
    y = torch.randn(3, 4, 5, 6)  # same as GroupNorm with one group
    gn = nn.GroupNorm(1, 4)
    torch.testing.assert_close(LayerNorm2d(4)(y), gn(y), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- EMA teacher


def _student() -> nn.Sequential:
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.Dropout(0.5))
    _set(net, conv_w=1.0, conv_b=0.0, bn_w=1.0, bn_b=0.0)
    return net


def _set(net: nn.Module, conv_w: float, conv_b: float, bn_w: float, bn_b: float) -> None:
    with torch.no_grad():
        net[0].weight.fill_(conv_w)
        net[0].bias.fill_(conv_b)
        net[1].weight.fill_(bn_w)
        net[1].bias.fill_(bn_b)


def test_ema_update_by_hand() -> None:
    student = _student()
    teacher = EMATeacher(student, decay=0.5)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())  # the student is untouched
    _set(student, conv_w=3.0, conv_b=2.0, bn_w=4.0, bn_b=-2.0)
    with torch.no_grad():
        student[1].running_mean.fill_(0.7)
        student[1].running_var.fill_(2.0)
        student[1].num_batches_tracked.fill_(5)
    assert teacher.module[0].weight.item() == 1.0  # a copy, not a view of the student
    teacher.update(student)
    t = teacher.module
    # parameters: 0.5 * teacher + 0.5 * student
    assert t[0].weight.item() == pytest.approx(0.5 * 1 + 0.5 * 3)  # 2
    assert t[0].bias.item() == pytest.approx(0.5 * 0 + 0.5 * 2)  # 1
    assert t[1].weight.item() == pytest.approx(0.5 * 1 + 0.5 * 4)  # 2.5
    assert t[1].bias.item() == pytest.approx(0.5 * 0 + 0.5 * -2)  # -1
    # buffers: copied (an average would give 0.35 and 1.5)
    assert t[1].running_mean.item() == pytest.approx(0.7)
    assert t[1].running_var.item() == pytest.approx(2.0)
    assert t[1].num_batches_tracked.item() == 5
    teacher.decay = 0.75
    teacher.update(student)  # 0.75 * 2 + 0.25 * 3
    assert t[0].weight.item() == pytest.approx(2.25)
    assert student[0].weight.item() == 3.0


def test_ema_teacher_is_frozen_and_in_eval() -> None:
    student = _student()
    teacher = EMATeacher(student, decay=0.9)
    x = torch.ones(4, 1, 3, 3, requires_grad=True)
    teacher.train()  # a parent's .train() must not switch on dropout / batch statistics
    assert teacher.training and not teacher.module.training
    y = teacher(x)
    assert not y.requires_grad
    # eval BN with running stats (0, 1), no dropout: y = x * 1 + 0 normalised by sqrt(1 + eps)
    torch.testing.assert_close(y, x.detach() / math.sqrt(1 + 1e-5))
    follower = EMATeacher(student, eval_mode=False).train()
    assert follower.module.training
    with pytest.raises(ValueError, match="decay"):
        EMATeacher(student, decay=1.5)
    with pytest.raises(ValueError, match="fp32"):
        EMATeacher(_student().half())
    with pytest.raises(ValueError, match="differ"):
        teacher.update(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_ema_update_through_ddp(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        student = _student()
        wrapped = nn.parallel.DistributedDataParallel(student)
        teacher = EMATeacher(wrapped, decay=0.5)
        assert not isinstance(teacher.module, nn.parallel.DistributedDataParallel)
        _set(student, conv_w=5.0, conv_b=0.0, bn_w=1.0, bn_b=0.0)
        teacher.update(wrapped)
        assert teacher.module[0].weight.item() == pytest.approx(3.0)  # (1 + 5) / 2
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- losses


def test_symmetric_cross_entropy_by_hand() -> None:
    # pixel 0: M(x) = (0.75, 0.25), M(x_t) = (0.2, 0.8); pixel 1: both (0.5, 0.5)
    original = _pixels(0.75, 0.5).requires_grad_(True)
    translated = _pixels(0.2, 0.5).requires_grad_(True)
    loss = symmetric_cross_entropy(original, translated)
    # term 1: -sum_k M(x_t)_k log M(x)_k, mean over the 2 pixels
    term1 = (-(0.2 * math.log(0.75) + 0.8 * math.log(0.25)) + LN2) / 2  # 0.929860
    # term 2: -sum_k M(x)_k log M(x_t)_k
    term2 = (-(0.75 * math.log(0.2) + 0.25 * math.log(0.8)) + LN2) / 2  # 0.978006
    assert loss.item() == pytest.approx(term1 + term2, rel=1e-6)
    loss.backward()
    # each side gets only the term where it is aligned to the other (the label side is
    # detached): d/dz [-sum q log softmax(z)] = softmax(z) - q, / 2 pixels
    # original: pixel 0 ((0.75, 0.25) - (0.2, 0.8)) / 2 = (0.275, -0.275), pixel 1 zero
    expected_original = torch.tensor([[[[0.275, 0.0]], [[-0.275, 0.0]]]])
    torch.testing.assert_close(original.grad, expected_original, atol=1e-6, rtol=0)
    torch.testing.assert_close(translated.grad, -expected_original, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="shapes differ"):
        symmetric_cross_entropy(original, torch.zeros(1, 2, 1, 3))


def test_symmetric_cross_entropy_of_equal_maps_is_twice_the_entropy() -> None:
    logits = _pixels(0.75, 0.5)
    entropy = (-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + LN2) / 2
    assert symmetric_cross_entropy(logits, logits.clone()).item() == pytest.approx(2 * entropy,
                                                                                   rel=1e-6)


def test_confidence_masked_mse_by_hand() -> None:
    # teacher: pixel 0 (0.75, 0.25) confident, pixel 1 (0.5, 0.5); student: (0.5, 0.5), (0.2, 0.8)
    teacher = _pixels(0.75, 0.5).requires_grad_(True)
    student = _pixels(0.5, 0.2).requires_grad_(True)
    assert confidence_mask(teacher, 0.6).flatten().tolist() == [1.0, 0.0]
    loss = confidence_masked_mse(student, teacher, threshold=0.6)
    # only pixel 0 counts: (0.75 - 0.5)^2 + (0.25 - 0.5)^2 = 0.125, over N*C*H*W = 4 elements
    assert loss.item() == pytest.approx(0.125 / 4, rel=1e-5)
    loss.backward()
    assert teacher.grad is None  # only the student learns
    assert student.grad[..., 1].abs().max().item() == 0.0  # masked pixel: no gradient
    assert student.grad[..., 0].abs().max().item() > 0.0
    # rho is inclusive (Eq. 14: >=): at 0.5 the (0.5, 0.5) pixel counts too,
    # adding (0.5 - 0.2)^2 + (0.5 - 0.8)^2 = 0.18
    both = confidence_masked_mse(student, teacher, threshold=0.5)
    assert both.item() == pytest.approx((0.125 + 0.18) / 4, rel=1e-5)
    assert confidence_masked_mse(student, teacher, threshold=0.9).item() == 0.0


def test_dania_class_weights_by_hand() -> None:
    # a = (1/2, 1/4, 1/4): w' = -log a = (ln2, 2 ln2, 2 ln2), mean 5/3 ln2,
    # deviations (-2/3, 1/3, 1/3) ln2, sample std sqrt((4/9 + 1/9 + 1/9) / 2) ln2 = ln2 / sqrt3
    # normalised: (-2/sqrt3, 1/sqrt3, 1/sqrt3); w = that * 0.1 + 1
    s3 = math.sqrt(3)
    expected = [1 - 0.2 / s3, 1 + 0.1 / s3, 1 + 0.1 / s3]  # 0.884530, 1.057735, 1.057735
    assert class_frequency_weights([0.5, 0.25, 0.25]).tolist() == pytest.approx(expected)
    assert class_frequency_weights(torch.tensor([2, 1, 1])).tolist() == pytest.approx(expected)
    scaled = class_frequency_weights(np.array([0.5, 0.25, 0.25]), std=0.2, avg=2.0)
    assert scaled.tolist() == pytest.approx([2 - 0.4 / s3, 2 + 0.2 / s3, 2 + 0.2 / s3])
    assert scaled.dtype == torch.float32
    # a class without pixels: left out of mean/std, weight avg
    with_zero = class_frequency_weights([0.5, 0.0, 0.25, 0.25])
    assert with_zero.tolist() == pytest.approx([expected[0], 1.0, expected[1], expected[2]])
    assert class_frequency_weights([0.3, 0.3]).tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="at least two classes"):
        class_frequency_weights([1.0, 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        class_frequency_weights([0.5, -0.1, 0.6])


def test_median_frequency_weights_by_hand() -> None:
    # present (0.5, 0.25, 0.125): median 0.25 -> (0.5, 1, 2); the empty class gets 1
    assert median_frequency_weights([0.5, 0.25, 0.125, 0.0]).tolist() == pytest.approx(
        [0.25 / 0.5, 1.0, 0.25 / 0.125, 1.0])
    # even count: median = (0.3 + 0.2) / 2 = 0.25
    assert median_frequency_weights([0.4, 0.3, 0.2, 0.1]).tolist() == pytest.approx(
        [0.25 / 0.4, 0.25 / 0.3, 0.25 / 0.2, 0.25 / 0.1])


class _Reader:
    def __init__(self, labels: list[np.ndarray | None]) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"label": self.labels[index], "name": f"frame{index}"}


def test_class_frequencies_by_hand() -> None:
    reader = _Reader([np.array([[0, 0, 1, 255]], np.uint8),  # 3 valid pixels
                      np.array([[2, 2, 2, 0]], np.uint8)])  # 4 valid pixels
    # pixels: class 0: 2 + 1 = 3, class 1: 1, class 2: 3, class 3: 0; 7 valid
    assert class_frequencies(reader, 4).tolist() == pytest.approx([3 / 7, 1 / 7, 3 / 7, 0.0])
    # SegNet: over the valid pixels of the images holding the class:
    # class 0 in both (3 + 4), class 1 in image 0 (3), class 2 in image 1 (4)
    per_image = class_frequencies(reader, 4, per_present_image=True)
    assert per_image.tolist() == pytest.approx([3 / 7, 1 / 3, 3 / 4, 0.0])
    # another ignore index: 0 is not counted (and 255 is then an unknown id)
    zero_void = _Reader([np.array([[0, 0, 1, 3]]), np.array([[2, 2, 2, 0]])])
    assert class_frequencies(zero_void, 4, ignore_index=0).tolist() == pytest.approx(
        [0.0, 1 / 5, 3 / 5, 1 / 5])
    with pytest.raises(EdgesegError, match=r"\[255\]"):
        class_frequencies(reader, 4, ignore_index=0)
    # max_images spreads over the dataset: 3 of 5 single-class images -> images 0, 2, 4
    spread = _Reader([np.full((2, 2), i, np.int64) for i in range(5)])
    assert class_frequencies(spread, 5, max_images=3).tolist() == pytest.approx(
        [1 / 3, 0, 1 / 3, 0, 1 / 3])
    with pytest.raises(EdgesegError, match=r"label ids \[7\] outside 0\.\.3"):
        class_frequencies(_Reader([np.array([[7, 1]])]), 4)
    with pytest.raises(EdgesegError, match="frame0.*no label"):
        class_frequencies(_Reader([None]), 4)


# ---------------------------------------------------------------- VGG-19 features

#: torchvision vgg19().features: conv indices (each followed by ReLU, pools at 4, 9, 18, 27, 36)
TORCHVISION_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128),
                     12: (256, 256), 14: (256, 256), 16: (256, 256), 19: (512, 256),
                     21: (512, 512), 23: (512, 512), 25: (512, 512), 28: (512, 512),
                     30: (512, 512), 32: (512, 512), 34: (512, 512)}


def test_vgg19_layout_matches_torchvision() -> None:
    full = VGG19Features("block5_pool")
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    expected = {}
    for index, (out_ch, in_ch) in TORCHVISION_CONVS.items():
        expected[f"features.{index}.weight"] = (out_ch, in_ch, 3, 3)
        expected[f"features.{index}.bias"] = (out_ch,)
    assert shapes == expected
    assert [i for i, m in enumerate(full.features) if isinstance(m, nn.MaxPool2d)] == [
        4, 9, 18, 27, 36]
    # block5_conv2 = the ReLU after conv5_2 (features.30): features[0:32]
    assert VGG19_LAYERS["block5_conv2"] == 31 and VGG19_LAYERS["block1_conv1"] == 1
    net = VGG19Features()
    assert len(net.features) == 32 and isinstance(net.features[31], nn.ReLU)
    assert net.features[30] is net.features[-2] and net.features[30].in_channels == 512
    out = net(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert out.shape == (1, 512, 2, 2) and out.min() >= 0  # 4 pools: /16, after a ReLU
    with pytest.raises(ValueError, match="unknown VGG-19 layer"):
        VGG19Features("conv5_2")


def _vgg_block1_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"features.0.weight": torch.randn(64, 3, 3, 3, generator=g) * 0.1,
            "features.0.bias": torch.randn(64, generator=g) * 0.1,
            "features.2.weight": torch.randn(64, 64, 3, 3, generator=g) * 0.05,
            "features.2.bias": torch.randn(64, generator=g) * 0.1,
            "classifier.6.bias": torch.zeros(1000)}


def test_load_vgg19_from_a_local_state_dict(tmp_path: Path) -> None:
    state = _vgg_block1_state()
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    net = load_vgg19(path, layer="block1_conv2")
    x = torch.rand(2, 3, 8, 10) * 2 - 1
    # by hand: [-1, 1] -> [0, 1] -> ImageNet normalisation -> conv1_1, ReLU, conv1_2, ReLU
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = ((x + 1) / 2 - mean) / std
    h = F.relu(F.conv2d(h, state["features.0.weight"], state["features.0.bias"], padding=1))
    h = F.relu(F.conv2d(h, state["features.2.weight"], state["features.2.bias"], padding=1))
    torch.testing.assert_close(net(x), h, atol=1e-4, rtol=1e-4)
    assert "block1_conv2" in net.describe() and str(path) in net.describe()
    assert all(not p.requires_grad for p in net.parameters()) and not net.train().training
    grad_x = x.clone().requires_grad_(True)
    net(grad_x).sum().backward()  # frozen, but a loss still reaches the image
    assert grad_x.grad is not None and grad_x.grad.abs().sum() > 0
    # a bare `features` state dict (keys "0.weight") loads too
    bare = tmp_path / "features.pth"
    torch.save({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")},
               bare)
    torch.testing.assert_close(load_vgg19(bare, layer="block1_conv2")(x), h, atol=1e-4, rtol=1e-4)
    assert isinstance(build_feature_net(path, layer="block1_conv2"), VGG19Features)


def _one_line_error(path: Path, match: str, layer: str = "block1_conv2") -> None:
    with pytest.raises(FeatureNetError, match=match) as info:
        load_vgg19(path, layer=layer)
    message = str(info.value)
    assert isinstance(info.value, EdgesegError) and "\n" not in message
    assert str(path) in message and "torch.save" in message  # names the file and the fix


def test_vgg19_weight_errors_are_one_line(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "absent.pth", "no such file")
    wrong_keys = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong_keys)
    _one_line_error(wrong_keys, r"not a torchvision VGG-19 state dict \(missing")
    short = tmp_path / "block1_only.pth"
    torch.save(_vgg_block1_state(), short)
    _one_line_error(short, r"missing \['features.5.weight'", layer="block2_conv1")
    wrong_shape = dict(_vgg_block1_state(), **{"features.2.weight": torch.zeros(32, 64, 3, 3)})
    torch.save(wrong_shape, tmp_path / "shape.pth")
    _one_line_error(tmp_path / "shape.pth", r"shape of features.2.weight is \[32, 64, 3, 3\]")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file\n" * 10)
    _one_line_error(corrupt, "cannot be read")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    _one_line_error(tmp_path / "list.pth", "cannot be read")


def test_segmenter_encoder_stand_in() -> None:
    from edgeseg.config import ModelConfig
    from edgeseg.models import build_model

    torch.manual_seed(0)
    segmenter = build_model(ModelConfig(width_mult=0.25, aspp_channels=8, separable=True,
                                        num_classes=3)).train()
    features = build_feature_net(None, segmenter, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert isinstance(features, SegmenterEncoderFeatures)
    assert "stand-in" in features.describe()
    assert all(not p.requires_grad for p in features.parameters())
    assert all(p.requires_grad for p in segmenter.parameters()) and segmenter.training
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    out = features(x)
    segmenter.eval()
    with torch.no_grad():  # [-1, 1] -> x01 = (x + 1) / 2 -> (x01 - 0.5) / 0.25 = 2 x
        expected = segmenter.forward_features(2 * x)["out"]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(FeatureNetError, match="no VGG-19 weights file"):
        build_feature_net(None, None)


# ---------------------------------------------------------------- relighting net


def test_relight_net_structure_and_identity_start() -> None:
    # DANIA Fig. 2: four convs, three residual blocks, two transposed convs, BN after
    # every conv but the last, output added to the input
    net = build_relight_net()
    body = list(net.body.model)
    plain = [m for m in body if isinstance(m, nn.Conv2d)]
    blocks = [m for m in body if type(m).__name__ == "ResidualBlock"]
    transposed = [m for m in body if isinstance(m, nn.ConvTranspose2d)]
    assert len(plain) == 4 and len(blocks) == 3 and len(transposed) == 2
    after = {id(m): body[i + 1] for i, m in enumerate(body[:-1])}
    for conv in plain[:-1] + transposed:
        assert isinstance(after[id(conv)], nn.BatchNorm2d)
    assert not isinstance(after[id(plain[-1])], nn.BatchNorm2d)
    assert all(isinstance(m.body[2], nn.BatchNorm2d) and isinstance(m.body[6], nn.BatchNorm2d)
               for m in blocks)
    assert RelightNet.size_multiple == 4
    x = torch.randn(2, 3, 16, 24)
    assert torch.equal(net(x), x)  # zero-initialised last conv: relit = input at step 0
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 3, 18, 24))


def _export_and_run(module: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str],
                    path: Path, run_inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    import onnx
    import onnxruntime as ort

    axes = {n: {0: "n", 2: f"h_{n}", 3: f"w_{n}"} for n in [*names, "out"]}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation/tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=["out"], dynamic_axes=axes)
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {n: t.numpy() for n, t in zip(names, run_inputs)})[0]


def test_relight_net_onnx_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_relight_net(ngf=8, n_blocks=3)
    with torch.no_grad():  # a non-trivial net: random last conv and BN statistics
        last = _convs(net)[-1]
        last.weight.normal_(0, 0.05)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(1, 3, 24, 40)  # exported at 32x32, run at another size
    got = _export_and_run(net, (torch.randn(1, 3, 32, 32),), ["image"], tmp_path / "relight.onnx",
                          (x,))
    with torch.no_grad():
        want = net(x)
    assert got.shape == (1, 3, 24, 40) and not torch.equal(want, x)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_spade_block_onnx_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    block = SPADEResBlock(4, 6, label_channels=3, hidden=8).eval()
    x, segmap = torch.randn(1, 4, 12, 20), torch.randn(1, 3, 3, 5)
    got = _export_and_run(block, (torch.randn(1, 4, 8, 8), torch.randn(1, 3, 4, 4)),
                          ["x", "segmap"], tmp_path / "spade.onnx", (x, segmap))
    with torch.no_grad():
        want = block(x, segmap)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("kind, role, args, shape", [
    ("patch_discriminator", "", dict(in_channels=5, n_layers=5, strides=[2, 2, 1, 1, 1],
                                     channels=[8, 16, 16, 16, 1], norm="none",
                                     spectral_norm=True), (1, 5, 16, 16)),
    ("multiscale_discriminator", "", dict(num_scales=2, ndf=4, n_layers=3, spectral_norm=True),
     (1, 3, 16, 16)),
    ("relight_net", "prenet", dict(ngf=4, n_blocks=1), (1, 3, 8, 12)),
])
def test_build_net_rebuilds_each_kind(kind: str, role: str, args: dict,
                                      shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    spec = net_spec(kind, role, **args)  # type: ignore[arg-type]
    trained = build_net(spec)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)
    rebuilt = build_net(spec.to_dict())
    rebuilt.load_state_dict(trained.state_dict())  # same keys and shapes
    x = torch.randn(*shape)
    trained.eval()
    rebuilt.eval()
    with torch.no_grad():
        a, b = trained(x), rebuilt(x)
    for left, right in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
        torch.testing.assert_close(left, right)
