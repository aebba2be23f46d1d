"""Building blocks shared by both heads and backbones: conv builders, init, ASPP.

Keeping the conv/BN/ReLU builders, the resize helper and the init in one place is
what keeps DeepLabv3+ and DeepLabv2 free of duplicated code, and makes every
upsample go through ``F.interpolate(size=...)`` (never ``scale_factor``) so that
exported ONNX/TensorRT Resize nodes follow the real feature-map sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, size: Sequence[int] | torch.Size) -> torch.Tensor:
    """Bilinear resize to an explicit size (exports as Resize with ``sizes``)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def conv2d(in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1,
           groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """Stride-1 conv with 'same' padding for any dilation (odd kernels)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                     dilation=dilation, groups=groups, bias=bias)


def conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1,
                 separable: bool = False) -> nn.Sequential:
    """Conv + BN + ReLU; ``separable`` turns a k>1 conv into depthwise+pointwise.

    The separable form (depthwise kxk + BN + ReLU, pointwise 1x1 + BN + ReLU) is the
    cheap deploy variant: roughly k*k times fewer weights and MACs than a full conv.
    """
    if separable and kernel_size > 1:
        return nn.Sequential(
            conv2d(in_ch, in_ch, kernel_size, dilation, groups=in_ch),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            conv2d(in_ch, out_ch, 1),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        conv2d(in_ch, out_ch, kernel_size, dilation),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def init_weights(module: nn.Module) -> None:
    """Kaiming (fan_out, as torchvision) for convs, BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_classifier(conv: nn.Conv2d, std: float = 0.01) -> None:
    """Small-normal init of a logit conv (DeepLab/AdaptSegNet practice).

    Kaiming on a 19-way logit layer fed by 2048 channels starts with logits of
    magnitude ~10, i.e. saturated softmax and huge initial losses.
    """
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """Atrous rates of DeepLabv3(+): (6, 12, 18) at OS 16, doubled at OS 8."""
    rates = {16: (6, 12, 18), 8: (12, 24, 36)}
    if output_stride not in rates:
        raise ValueError(f"ASPP supports output_stride 8 or 16, got {output_stride}")
    return rates[output_stride]


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that survives a training batch of one value per channel.

    After global pooling a batch of 1 has no batch statistics (plain BN raises in
    train mode), which batch-1 UDA training hits. Such a batch is normalised with
    the running statistics, which it leaves untouched; every other batch, and eval
    mode (hence export), is plain BatchNorm with the same state-dict keys, so
    checkpoints written before this class existed load unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool, 1x1 conv-BN-ReLU, upsample back.

    Its BN is a `PooledBatchNorm2d` so the branch also trains at batch size 1.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = nn.Sequential(conv2d(in_ch, out_ch, 1), PooledBatchNorm2d(out_ch),
                                  nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(self.proj(self.pool(x)), x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of DeepLabv3: 1x1, three atrous 3x3, image pool."""

    def __init__(self, in_ch: int, out_ch: int = 256, rates: Sequence[int] = (6, 12, 18),
                 separable: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_ch, out_ch, 1)]
            + [conv_bn_relu(in_ch, out_ch, 3, r, separable) for r in rates]
            + [ASPPPooling(in_ch, out_ch)]
        )
        self.project = nn.Sequential(
            *conv_bn_relu(len(self.branches) * out_ch, out_ch, 1), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
