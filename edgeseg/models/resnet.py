"""ResNet-50/101 backbones with torchvision's names (conv1, bn1, layer1..4).

Output stride 16/8 replaces the strides of layer4 (and layer3) with dilation, as
torchvision's ``replace_stride_with_dilation``. ``avgpool``/``fc`` are dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from .aspp import init_weights

DILATE_FOR_STRIDE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """Returns (layer1 [256 ch, stride 4], layer4 [2048 ch]) from ``forward``."""

    def __init__(self, layers: tuple[int, int, int, int], output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in DILATE_FOR_STRIDE:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        dilate = DILATE_FOR_STRIDE[output_stride]
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(256, layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(512, layers[3], 2, dilate[2])
        self.output_stride = output_stride
        self.low_level_channels = 64 * Bottleneck.expansion
        self.out_channels = 512 * Bottleneck.expansion
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        out_ch = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = out_ch
        layers += [Bottleneck(out_ch, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low_level = self.layer1(x)
        return low_level, self.layer4(self.layer3(self.layer2(low_level)))


def resnet50(output_stride: int = 16) -> ResNetBackbone:
    return ResNetBackbone((3, 4, 6, 3), output_stride)


def resnet101(output_stride: int = 16) -> ResNetBackbone:
    return ResNetBackbone((3, 4, 23, 3), output_stride)
