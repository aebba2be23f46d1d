"""DANIA's image relighting network (dania.txt Sec. 3.2 and Fig. 2).

"Four convolutional layers, three residual blocks and two transposed convolutional
layers, and each convolutional layer is followed by a batch normalization layer
except for the last convolutional layer. The output from the last layer is then
added to the input image to obtain the relighted image." The figure's kernel sizes
and widths are not in the text; we take them from the authors' released code
(DANNet's ``LightNet``), which is CycleGAN's ResNet generator with batch norm and 3
blocks: 7x7 conv, two 3x3 stride-2 convs, 3 residual blocks, two 3x3 stride-2
transposed convs, 7x7 conv to 3 channels, tanh. So the body is
`generator.ResnetGenerator` (``norm="batch"``, ``upsample="transpose"``) and
``forward(x) = x + body(x)``.

Range: ``x`` is the segmenter's normalised image ``(x/255 - mean)/std`` and so is
the output (role ``prenet``). The tanh bounds the change to +-1 in those units
(about +-57 grey levels at ImageNet's std), as in DANNet, whose inputs are
normalised the same way.

Initialisation (the paper is silent; DANNet keeps PyTorch's default): CycleGAN's
N(0, 0.02) everywhere except the last conv, which starts at zero, so the relighted
image equals the input at step 0 and the pretrained segmenter first sees what it
was trained on. The last conv still gets gradients at once, the rest from the next
step on.

Sides must be multiples of `RelightNet.size_multiple` (4, two stride-2 stages) so
the output keeps the input's size; checked outside ONNX export and tracing.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.train.nets.generator import ResnetGenerator
from edgeseg.train.nets.registry import register_net


class RelightNet(nn.Module):
    """``forward(x) = x + tanh-bounded residual``; x: the segmenter's normalised image."""

    #: two stride-2 convs: height and width must be divisible by this
    size_multiple = ResnetGenerator.size_multiple

    def __init__(self, ngf: int = 64, n_blocks: int = 3, channels: int = 3) -> None:
        super().__init__()
        self.body = ResnetGenerator(channels, channels, ngf, n_blocks, norm="batch",
                                    upsample="transpose")
        last = [m for m in self.body.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register_net("relight_net")
def build_relight_net(ngf: int = 64, n_blocks: int = 3, channels: int = 3) -> RelightNet:
    """DANIA/DANNet's relighting net (64 filters, 3 residual blocks); role ``prenet``."""
    return RelightNet(ngf, n_blocks, channels)
