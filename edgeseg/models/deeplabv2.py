"""DeepLabv2 ASPP-sum classifier, the segmenter of AdaptSegNet/ADVENT-style UDA.

Four 3x3 convs with dilations 6/12/18/24 map the encoder output straight to
class logits and are summed. The rates are those of the reference
implementations (ResNet-101 at output stride 8) and are kept as-is at OS 16.
There is no decoder, so the pre-classifier ("decoder") features are the encoder
output itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .aspp import conv2d, init_classifier


class DeepLabV2Head(nn.Module):
    """``forward(low_level, out) -> (out, summed logits at encoder resolution)``."""

    def __init__(self, in_channels: int, num_classes: int,
                 dilations: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.classifier = nn.ModuleList(
            conv2d(in_channels, num_classes, 3, d, bias=True) for d in dilations
        )
        for conv in self.classifier:
            init_classifier(conv)

    def forward(self, low_level: torch.Tensor,
                out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        del low_level  # DeepLabv2 has no low-level decoder
        logits = self.classifier[0](out)
        for conv in self.classifier[1:]:
            logits = logits + conv(out)
        return out, logits
