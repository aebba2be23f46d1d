"""MobileNet-v2 backbone, torchvision-compatible names, dilated for output stride 8/16.

Module structure and parameter names (``features.0.0.weight``,
``features.1.conv.0.0.weight``, ...) follow torchvision exactly so ImageNet
state dicts load without renaming. The last 1x1 1280 conv (``features.18``) and
the classifier are dropped: DeepLab heads consume the 320-channel block output.
Strides past the output stride become dilations of the depthwise convs
(as VainF/DeepLabV3Plus-Pytorch); for 3x3 kernels their 'fixed padding' equals
``padding=dilation``, which keeps sizes identical without extra Pad ops.
"""

from __future__ import annotations

import torch
from torch import nn

from .aspp import init_weights

# (expand ratio t, channels c, repeats n, stride s) of torchvision's MobileNet-v2.
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
LOW_LEVEL_END = 4  # features[0:4] -> stride 4 (24 channels at width 1.0)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` (torchvision's ``_make_divisible``)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # never round down by more than 10%
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation layout: 0 = conv, 1 = BN, 2 = ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 (strided or dilated) -> linear 1x1 projection."""

    def __init__(self, inp: int, oup: int, stride: int, dilation: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, dilation, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """Returns (low-level features[0:4], high-level features[4:18]) from ``forward``."""

    def __init__(self, width_mult: float = 1.0, output_stride: int = 16,
                 round_nearest: int = 8) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        in_ch = make_divisible(32 * width_mult, round_nearest)
        features: list[nn.Module] = [ConvBNReLU6(3, in_ch, stride=2)]
        current_stride, dilation = 2, 1
        for t, c, n, s in SETTINGS:
            out_ch = make_divisible(c * width_mult, round_nearest)
            previous_dilation = dilation
            if current_stride >= output_stride:  # keep resolution, dilate instead
                stride, dilation = 1, dilation * s
            else:
                stride, current_stride = s, current_stride * s
            for i in range(n):
                first = i == 0
                features.append(InvertedResidual(
                    in_ch, out_ch, stride if first else 1,
                    previous_dilation if first else dilation, t))
                in_ch = out_ch
        self.features = nn.Sequential(*features)
        self.output_stride = output_stride
        self.low_level_channels: int = features[LOW_LEVEL_END - 1].out_channels
        self.out_channels: int = in_ch
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low_level = x
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == LOW_LEVEL_END - 1:
                low_level = x
        return low_level, x


def mobilenet_v2(width_mult: float = 1.0, output_stride: int = 16) -> MobileNetV2Backbone:
    return MobileNetV2Backbone(width_mult=width_mult, output_stride=output_stride)
