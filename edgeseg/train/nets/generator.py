"""CycleGAN's ResNet generator (Zhu et al. 2017), shared by the image-translation methods.

Reflection pad + 7x7 conv, two stride-2 convs, ``n_blocks`` residual blocks, two
upsampling stages, 7x7 conv and tanh: images in and out are RGB in [-1, 1] (the
translator ONNX export in `edgeseg.export` assumes exactly that range). The
upsampling stages are CycleGAN's fractionally-strided convs (``"transpose"``) or
a bilinear 2x resize + 3x3 conv (``"bilinear"``), which avoids the checkerboard
artefacts of transposed convs. Sides must be multiples of 4 so the output has the
input's size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from edgeseg.models.aspp import resize_to
from edgeseg.train.nets.registry import register_net

NormKind = Literal["instance", "batch", "none"]
Upsample = Literal["transpose", "bilinear"]


def norm_layer(kind: NormKind) -> Callable[[int], nn.Module]:
    """Norm factory: CycleGAN's instance norm has no affine parameters and no running stats."""
    if kind == "instance":
        return lambda ch: nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)
    if kind == "batch":
        return lambda ch: nn.BatchNorm2d(ch)
    if kind == "none":
        return lambda ch: nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use instance, batch or none")


def conv_bias(kind: NormKind) -> bool:
    """A conv followed by an affine norm (batch) needs no bias of its own."""
    return kind != "batch"


class ResidualBlock(nn.Module):
    """x + (pad, conv3x3, norm, ReLU, pad, conv3x3, norm)(x)."""

    def __init__(self, channels: int, norm: NormKind) -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias),
            make_norm(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias),
            make_norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample2x(nn.Module):
    """Bilinear 2x through ``resize_to`` (explicit sizes, so ONNX Resize follows the input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(x, (2 * x.shape[-2], 2 * x.shape[-1]))


def _up_stage(in_ch: int, out_ch: int, norm: NormKind, upsample: Upsample) -> list[nn.Module]:
    bias = conv_bias(norm)
    if upsample == "transpose":
        conv: list[nn.Module] = [nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1,
                                                    output_padding=1, bias=bias)]
    elif upsample == "bilinear":
        conv = [Upsample2x(), nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3, bias=bias)]
    else:
        raise ValueError(f"unknown upsample {upsample!r}; use transpose or bilinear")
    return [*conv, norm_layer(norm)(out_ch), nn.ReLU(inplace=True)]


class ResnetGenerator(nn.Module):
    """Image-to-image translator; ``forward`` maps (N, C, H, W) in [-1, 1] to [-1, 1]."""

    #: two stride-2 stages: sides must be divisible by this
    size_multiple = 4

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64,
                 n_blocks: int = 9, norm: NormKind = "instance",
                 upsample: Upsample = "transpose") -> None:
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
        for mult in (4, 2):  # upsample: 4 ngf -> 2 ngf -> ngf
            layers += _up_stage(ngf * mult, ngf * mult // 2, norm, upsample)
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        for m in self.modules():  # CycleGAN's init: N(0, 0.02)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            h, w = x.shape[-2:]
            if h % self.size_multiple or w % self.size_multiple:
                raise ValueError(f"generator input {h}x{w}: height and width must be "
                                 f"multiples of {self.size_multiple}")
        return self.model(x)


@register_net("resnet_generator")
def build_generator(ngf: int = 64, n_blocks: int = 9, norm: NormKind = "instance",
                    upsample: Upsample = "transpose", in_channels: int = 3,
                    out_channels: int = 3) -> ResnetGenerator:
    """CycleGAN's ``resnet_9blocks`` by default; ``n_blocks=6`` is its small-image variant."""
    return ResnetGenerator(in_channels, out_channels, ngf, n_blocks, norm, upsample)
