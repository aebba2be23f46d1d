"""Shared GAN blocks (edgeseg.train.nets): generator, PatchGAN, GAN losses, image pool."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from edgeseg.train.nets.discriminator import build_discriminator
from edgeseg.train.nets.gan_loss import GANLoss
from edgeseg.train.nets.generator import ResidualBlock, build_generator
from edgeseg.train.nets.image_pool import ImagePool

LOGITS = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])  # (1, 1, 2, 2)


def test_lsgan_against_hand_computation() -> None:
    gan = GANLoss("lsgan")
    real = ((0.5 - 1) ** 2 + (-1 - 1) ** 2 + (2 - 1) ** 2 + (0 - 1) ** 2) / 4  # 1.5625
    fake = (0.5**2 + 1.0**2 + 2.0**2 + 0.0**2) / 4  # 1.3125
    assert gan(LOGITS, True).item() == pytest.approx(real)
    assert gan(LOGITS, False).item() == pytest.approx(fake)
    other = torch.full((1, 1, 3, 3), 0.25)
    d = 0.5 * ((0.5 - 1) ** 2 + (-1 - 1) ** 2 + 1 + 1) / 4 + 0.5 * 0.25**2
    assert gan.discriminator(LOGITS, other).item() == pytest.approx(d)


def test_vanilla_bce_against_hand_computation() -> None:
    gan = GANLoss("vanilla")
    values = [0.5, -1.0, 2.0, 0.0]

    def sigmoid(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    real = -sum(math.log(sigmoid(v)) for v in values) / 4
    fake = -sum(math.log(1 - sigmoid(v)) for v in values) / 4
    assert gan(LOGITS, True).item() == pytest.approx(real, rel=1e-6)
    assert gan(LOGITS, False).item() == pytest.approx(fake, rel=1e-6)
    with pytest.raises(ValueError, match="lsgan or vanilla"):
        GANLoss("wgan")  # type: ignore[arg-type]


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_generator_shapes_and_range(upsample: str) -> None:
    torch.manual_seed(0)
    gen = build_generator(ngf=8, n_blocks=2, upsample=upsample)
    assert sum(isinstance(m, ResidualBlock) for m in gen.modules()) == 2
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    y = gen(x)
    assert y.shape == x.shape and y.abs().max() <= 1.0
    y.mean().backward()
    assert all(p.grad is not None for p in gen.parameters())
    with pytest.raises(ValueError, match="multiples of 4"):
        gen(torch.zeros(1, 3, 30, 48))
    if upsample == "transpose":
        assert sum(isinstance(m, nn.ConvTranspose2d) for m in gen.modules()) == 2
    else:
        assert not any(isinstance(m, nn.ConvTranspose2d) for m in gen.modules())


def test_generator_norm_options() -> None:
    gen = build_generator(ngf=4, n_blocks=1, norm="batch")
    assert any(isinstance(m, nn.BatchNorm2d) for m in gen.modules())
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in build_generator(4, 1, norm="none").modules())
    with pytest.raises(ValueError, match="unknown norm"):
        build_generator(4, 1, norm="group")  # type: ignore[arg-type]


def _strides(d: nn.Module) -> list[int]:
    return [m.stride[0] for m in d.modules() if isinstance(m, nn.Conv2d)]


def test_image_discriminator_is_five_stride2_convs() -> None:
    d = build_discriminator(3, ndf=8, n_layers=5, stride=2)
    assert _strides(d) == [2] * 5
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 1]
    assert d(torch.zeros(2, 3, 64, 96)).shape == (2, 1, 2, 3)  # each conv halves
    assert d.min_input_size() == 32 and d(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 1, 1)


def test_feature_discriminator_keeps_the_feature_size() -> None:
    d = build_discriminator(80, ndf=8, n_layers=5, stride=1)  # 80 = width-0.25 MobileNet-v2
    assert _strides(d) == [1] * 5
    assert d(torch.randn(2, 80, 2, 4)).shape == (2, 1, 2, 4)
    assert d(torch.randn(1, 80, 38, 38)).shape == (1, 1, 38, 38)
    with pytest.raises(ValueError, match="stride"):
        build_discriminator(3, stride=3)


def _image(value: float) -> torch.Tensor:
    return torch.full((1, 3, 2, 2), value)


def test_image_pool_semantics() -> None:
    pool = ImagePool(size=3, seed=0)
    # filling: every image is stored and returned
    first = pool.query(torch.cat([_image(0), _image(1), _image(2)]))
    assert [int(v) for v in first[:, 0, 0, 0]] == [0, 1, 2] and len(pool) == 3
    swapped = kept = 0
    for step in range(3, 203):
        stored = {float(im[0, 0, 0, 0]) for im in pool.images}
        out = float(pool.query(_image(step))[0, 0, 0, 0])
        now = {float(im[0, 0, 0, 0]) for im in pool.images}
        if out == step:  # returned as is, pool unchanged
            kept += 1
            assert now == stored
        else:  # an old image came back and the new one took its place
            swapped += 1
            assert out in stored and now == (stored - {out}) | {float(step)}
        assert len(pool) == 3
    assert 70 < swapped < 130 and swapped + kept == 200  # probability 1/2
    assert torch.equal(ImagePool(0).query(_image(5)), _image(5))  # size 0: no history


def test_image_pool_state_round_trip() -> None:
    a = ImagePool(size=4, seed=7)
    for i in range(6):
        a.query(torch.cat([_image(i), _image(10 + i)]))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # checkpoint-safe: tensors and plain values only
    buf.seek(0)
    b = ImagePool(size=4, seed=123)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for i in range(20):
        batch = torch.cat([_image(100 + i), _image(200 + i)])
        assert torch.equal(a.query(batch), b.query(batch))
    with pytest.raises(ValueError, match="size"):
        ImagePool(size=5).load_state_dict(a.state_dict())
