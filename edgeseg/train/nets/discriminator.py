"""PatchGAN discriminator: a fully convolutional real/fake score per patch.

``n_layers`` 4x4 convs (LeakyReLU 0.2, norm on all but the first, channels
ndf, 2 ndf, 4 ndf, 8 ndf, capped at 8 ndf) and a last conv to one logit map.
With ``stride=2`` every conv halves the size: the MobileNet-UDA paper's image
discriminators are 5 stride-2 convs. Its feature discriminators keep the same
structure at ``stride=1`` so the small encoder map (1/16 of the image) is not
compressed away; at stride 1 the 4x4 convs are 'same'-padded (1 before, 2 after)
and keep the size.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseg.train.nets.generator import NormKind, conv_bias, norm_layer
from edgeseg.train.nets.registry import register_net


def _conv4(in_ch: int, out_ch: int, stride: int, bias: bool) -> list[nn.Module]:
    if stride == 1:
        return [nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(in_ch, out_ch, 4, bias=bias)]
    return [nn.Conv2d(in_ch, out_ch, 4, stride=stride, padding=1, bias=bias)]


class PatchDiscriminator(nn.Module):
    """``forward`` returns raw logits (N, 1, h, w); the GAN loss decides how to score them."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 5, stride: int = 2,
                 norm: NormKind = "instance") -> None:
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"a PatchGAN needs n_layers >= 2, got {n_layers}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.n_layers = n_layers
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [*_conv4(in_channels, ndf, stride, True), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for i in range(1, n_layers - 1):
            out = ndf * min(2 ** i, 8)
            layers += [*_conv4(ch, out, stride, bias), make_norm(out), nn.LeakyReLU(0.2, True)]
            ch = out
        layers += _conv4(ch, 1, stride, True)
        self.model = nn.Sequential(*layers)
        for m in self.modules():  # CycleGAN's init: N(0, 0.02)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def min_input_size(self) -> int:
        """Smallest side that still leaves a 1x1 score map."""
        return 2 ** self.n_layers if self.stride == 2 else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@register_net("patch_discriminator")
def build_discriminator(in_channels: int = 3, ndf: int = 64, n_layers: int = 5, stride: int = 2,
                        norm: NormKind = "instance") -> PatchDiscriminator:
    """Image discriminator by default; ``stride=1`` with ``in_channels`` = the encoder's
    channels (``model.encoder_channels``) is the paper's feature discriminator."""
    return PatchDiscriminator(in_channels, ndf, n_layers, stride, norm)
