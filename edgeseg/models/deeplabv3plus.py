"""DeepLabv3+ head: ASPP on the encoder output plus a low-level decoder.

The decoder follows the DeepLabv3+ paper (48-channel low-level projection, two
3x3 256-channel convs, 1x1 classifier) rather than VainF's single 3x3 conv: the
second conv is what refines object boundaries at stride 4. ``separable=True``
makes the ASPP atrous branches and both decoder convs depthwise-separable, the
cheap deploy variant.
"""

from __future__ import annotations

import torch
from torch import nn

from .aspp import ASPP, aspp_rates, conv2d, conv_bn_relu, init_classifier, init_weights, resize_to


class DeepLabV3PlusHead(nn.Module):
    """``forward(low_level, out) -> (decoder features, logits at low-level size)``."""

    def __init__(self, low_level_channels: int, in_channels: int, num_classes: int,
                 output_stride: int = 16, aspp_channels: int = 256,
                 decoder_channels: int = 256, low_level_proj: int = 48,
                 separable: bool = False) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, aspp_channels, aspp_rates(output_stride), separable)
        self.low_level_proj = conv_bn_relu(low_level_channels, low_level_proj, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(low_level_proj + aspp_channels, decoder_channels, 3, separable=separable),
            conv_bn_relu(decoder_channels, decoder_channels, 3, separable=separable),
        )
        self.classifier = conv2d(decoder_channels, num_classes, 1, bias=True)
        init_weights(self)
        init_classifier(self.classifier)

    def forward(self, low_level: torch.Tensor,
                out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low_level_proj(low_level)
        context = resize_to(self.aspp(out), low.shape[-2:])
        decoder = self.decoder(torch.cat([low, context], dim=1))
        return decoder, self.classifier(decoder)
