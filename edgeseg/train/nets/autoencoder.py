"""Content encoders and domain decoders: CycleGAN's ResNet generator cut in two.

Mutual-GAN (../shared/papers/mutual-gan.txt, Sec. 3.2) disentangles content from domain
with X-shaped dual auto-encoders: a content encoder per domain (``Enc_A``, ``Enc_B``)
embeds an image into a shared latent space Z, and a domain decoder per domain
(``Dec_A``, ``Dec_B``) maps any latent back to its own domain. The paper gives no
architecture, so both halves are the stages of `ResnetGenerator` (Zhu et al. 2017):

- ``content_encoder``: reflection pad + 7x7 conv, two stride-2 convs, ``n_blocks``
  residual blocks -> z of ``4 ngf`` channels at 1/4 of the image side;
- ``domain_decoder``: ``n_blocks`` residual blocks on z, two upsampling stages, 7x7
  conv and tanh -> an RGB image in [-1, 1] of the encoder's input size.

With ``n_blocks`` a + b, ``domain_decoder(ngf, b) o content_encoder(ngf, a)`` is layer by
layer `ResnetGenerator(ngf, a + b)` (same layers, same order, same initialisation), so
sizes always match the generators' and the translator's input rule (sides multiples of
4) holds for both. Both are training-only networks (role ``""``).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.train.nets.generator import (
    NormKind,
    ResidualBlock,
    ResnetGenerator,
    Upsample,
    _up_stage,
    conv_bias,
    norm_layer,
)
from edgeseg.train.nets.registry import register_net


def _init_like_generator(net: nn.Module) -> None:
    """CycleGAN's init, as `ResnetGenerator`: conv weights N(0, 0.02), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ContentEncoder(nn.Module):
    """Image (N, C, H, W) in [-1, 1] -> content features (N, 4 ngf, H/4, W/4)."""

    size_multiple = ResnetGenerator.size_multiple

    def __init__(self, in_channels: int = 3, ngf: int = 64, n_blocks: int = 4,
                 norm: NormKind = "instance") -> None:
        super().__init__()
        if ngf < 1 or n_blocks < 0:
            raise ValueError(f"ngf must be >= 1 and n_blocks >= 0, got {ngf}, {n_blocks}")
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias),
            make_norm(ngf), nn.ReLU(inplace=True),
        ]
        for mult in (1, 2):  # downsample: ngf -> 2 ngf -> 4 ngf
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                       make_norm(ngf * mult * 2), nn.ReLU(inplace=True)]
        layers += [ResidualBlock(ngf * 4, norm) for _ in range(n_blocks)]
        self.model = nn.Sequential(*layers)
        self.out_channels = ngf * 4
        _init_like_generator(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"encoder input {h}x{w}: height and width must be multiples of "
                             f"{self.size_multiple}")
        return self.model(x)


class DomainDecoder(nn.Module):
    """Content features (N, 4 ngf, h, w) -> image (N, C, 4h, 4w) in [-1, 1] (tanh)."""

    def __init__(self, out_channels: int = 3, ngf: int = 64, n_blocks: int = 5,
                 norm: NormKind = "instance", upsample: Upsample = "transpose") -> None:
        super().__init__()
        if ngf < 1 or n_blocks < 0:
            raise ValueError(f"ngf must be >= 1 and n_blocks >= 0, got {ngf}, {n_blocks}")
        layers: list[nn.Module] = [ResidualBlock(ngf * 4, norm) for _ in range(n_blocks)]
        for mult in (4, 2):  # upsample: 4 ngf -> 2 ngf -> ngf
            layers += _up_stage(ngf * mult, ngf * mult // 2, norm, upsample)
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.in_channels = ngf * 4
        _init_like_generator(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)


@register_net("content_encoder")
def build_content_encoder(ngf: int = 64, n_blocks: int = 4, norm: NormKind = "instance",
                          in_channels: int = 3) -> ContentEncoder:
    """The first half of CycleGAN's ``resnet_9blocks`` by default (stem, downsampling,
    4 of the 9 residual blocks)."""
    return ContentEncoder(in_channels, ngf, n_blocks, norm)


@register_net("domain_decoder")
def build_domain_decoder(ngf: int = 64, n_blocks: int = 5, norm: NormKind = "instance",
                         upsample: Upsample = "transpose",
                         out_channels: int = 3) -> DomainDecoder:
    """The second half of CycleGAN's ``resnet_9blocks`` by default (the other 5 residual
    blocks, upsampling, output conv and tanh)."""
    return DomainDecoder(out_channels, ngf, n_blocks, norm, upsample)
