"""PatchGAN discriminators: a fully convolutional real/fake score per patch.

``n_layers`` 4x4 convs (LeakyReLU 0.2, norm on all but the first and the last,
channels ndf, 2 ndf, 4 ndf, 8 ndf, capped at 8 ndf) and a last conv to one logit
map. With ``stride=2`` every conv halves the size: the MobileNet-UDA paper's image
discriminators are 5 stride-2 convs. Its feature discriminators keep the same
structure at ``stride=1`` so the small encoder map (1/16 of the image) is not
compressed away; at stride 1 the 4x4 convs are 'same'-padded (1 before, 2 after)
and keep the size.

Beyond that layout:

- ``strides`` gives each conv its own stride (1 or 2) and overrides ``stride``;
- ``channels`` gives each conv's output channels (the last must be 1) instead of
  the ndf ladder;
- ``spectral_norm`` wraps every conv in spectral normalisation (Miyato et al. 2018;
  the semantically-adaptive I2I paper, Sec. 4, applies it to all its models).

DANIA's output-space discriminator (dania.txt Sec. 3.2, "Discriminators", after
AdaptSegNet): 5 convs, channels 64/128/256/256/1, kernel 4, strides 2, 2, 1, 1, 1,
LeakyReLU 0.2, no norm, i.e. ``build_discriminator(num_classes, n_layers=5,
strides=[2, 2, 1, 1, 1], channels=[64, 128, 256, 256, 1], norm="none")``. The paper
does not give the padding; AdaptSegNet's code pads every conv by 1, which trims one
pixel per stride-1 conv (H/4 - 3). We keep the 'same' padding used at stride 1
here, so its score map is exactly H/4 x W/4, aligned with the input grid; the
losses average over patches, so nothing depends on those three pixels.

`MultiScaleDiscriminator` runs ``num_scales`` such PatchGANs on the input average-
pooled by 2 between scales (pix2pixHD, MUNIT; the semantically-adaptive I2I paper's
"discriminators for multiple scales"); `MultiScaleGANLoss` averages `GANLoss` over
the scales.

Pass ``strides``/``channels`` as lists in network specs: a spec goes through
checkpoints and recipes, where a tuple may come back as a list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from edgeseg.train.nets.gan_loss import GANLoss, GANMode
from edgeseg.train.nets.generator import NormKind, conv_bias, norm_layer
from edgeseg.train.nets.registry import register_net


def _conv4(in_ch: int, out_ch: int, stride: int, bias: bool) -> list[nn.Module]:
    if stride == 1:
        return [nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(in_ch, out_ch, 4, bias=bias)]
    return [nn.Conv2d(in_ch, out_ch, 4, stride=stride, padding=1, bias=bias)]


def _layer_strides(n_layers: int, stride: int, strides: Sequence[int] | None) -> tuple[int, ...]:
    if strides is None:
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        return (stride,) * n_layers
    out = tuple(int(s) for s in strides)
    if len(out) != n_layers:
        raise ValueError(f"strides {list(out)}: need one stride per conv (n_layers={n_layers})")
    if any(s not in (1, 2) for s in out):
        raise ValueError(f"strides {list(out)}: each stride must be 1 or 2")
    return out


def _layer_channels(n_layers: int, ndf: int, channels: Sequence[int] | None) -> tuple[int, ...]:
    if channels is None:
        return (ndf, *(ndf * min(2 ** i, 8) for i in range(1, n_layers - 1)), 1)
    out = tuple(int(c) for c in channels)
    if len(out) != n_layers:
        raise ValueError(f"channels {list(out)}: need one entry per conv (n_layers={n_layers})")
    if out[-1] != 1 or any(c < 1 for c in out):
        raise ValueError(f"channels {list(out)}: all must be >= 1 and the last 1 (a logit map)")
    return out


class PatchDiscriminator(nn.Module):
    """``forward`` returns raw logits (N, 1, h, w); the GAN loss decides how to score them."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 5, stride: int = 2,
                 norm: NormKind = "instance", strides: Sequence[int] | None = None,
                 channels: Sequence[int] | None = None, spectral_norm: bool = False) -> None:
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"a PatchGAN needs n_layers >= 2, got {n_layers}")
        self.strides = _layer_strides(n_layers, stride, strides)
        self.channels = _layer_channels(n_layers, ndf, channels)
        self.stride = stride if strides is None else None  # uniform stride, if any
        self.n_layers = n_layers
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        s, c = self.strides, self.channels
        layers: list[nn.Module] = [*_conv4(in_channels, c[0], s[0], True),
                                   nn.LeakyReLU(0.2, True)]
        for i in range(1, n_layers - 1):
            layers += [*_conv4(c[i - 1], c[i], s[i], bias), make_norm(c[i]),
                       nn.LeakyReLU(0.2, True)]
        layers += _conv4(c[-2], 1, s[-1], True)
        self.model = nn.Sequential(*layers)
        for m in self.modules():  # CycleGAN's init: N(0, 0.02)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if spectral_norm:
            for i, m in enumerate(self.model):
                if isinstance(m, nn.Conv2d):
                    self.model[i] = _spectral_norm(m)

    def min_input_size(self) -> int:
        """Smallest side that still leaves a 1x1 score map (each stride-2 conv halves it)."""
        return 2 ** sum(s == 2 for s in self.strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@register_net("patch_discriminator")
def build_discriminator(in_channels: int = 3, ndf: int = 64, n_layers: int = 5, stride: int = 2,
                        norm: NormKind = "instance", strides: Sequence[int] | None = None,
                        channels: Sequence[int] | None = None,
                        spectral_norm: bool = False) -> PatchDiscriminator:
    """Image discriminator by default; ``stride=1`` with ``in_channels`` = the encoder's
    channels (``model.encoder_channels``) is the MobileNet-UDA feature discriminator; see
    the module docstring for DANIA's output-space discriminator."""
    return PatchDiscriminator(in_channels, ndf, n_layers, stride, norm, strides, channels,
                              spectral_norm)


class MultiScaleDiscriminator(nn.Module):
    """``num_scales`` PatchGANs of the same layout (own weights); scale ``i`` sees the input
    average-pooled ``i`` times by 2 (3x3, stride 2, pad 1, padding not counted: pix2pixHD).
    ``forward`` returns the list of logit maps, finest scale first."""

    def __init__(self, num_scales: int = 3, **patch_args: Any) -> None:
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        self.scales = nn.ModuleList(PatchDiscriminator(**patch_args) for _ in range(num_scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def min_input_size(self) -> int:
        """Smallest side that leaves a score map at every scale."""
        return self.scales[0].min_input_size() * 2 ** (len(self.scales) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, disc in enumerate(self.scales):
            if i:
                x = self.downsample(x)
            outs.append(disc(x))
        return outs


@register_net("multiscale_discriminator")
def build_multiscale_discriminator(num_scales: int = 3, in_channels: int = 3, ndf: int = 64,
                                   n_layers: int = 4, stride: int = 2,
                                   norm: NormKind = "instance",
                                   strides: Sequence[int] | None = None,
                                   channels: Sequence[int] | None = None,
                                   spectral_norm: bool = False) -> MultiScaleDiscriminator:
    """pix2pixHD/MUNIT multi-scale PatchGAN (3 scales, 4 convs per scale by default); every
    scale takes `build_discriminator`'s layout arguments."""
    return MultiScaleDiscriminator(num_scales, in_channels=in_channels, ndf=ndf,
                                   n_layers=n_layers, stride=stride, norm=norm, strides=strides,
                                   channels=channels, spectral_norm=spectral_norm)


class MultiScaleGANLoss:
    """`GANLoss` over a list of logit maps: the mean over scales of each scale's loss.

    Averaging (pix2pixHD and MUNIT sum) keeps the loss on the single-scale scale, so a
    recipe's lambda_GAN means the same with any ``num_scales``. A single tensor is
    scored as one scale, so the same call serves both kinds of discriminator.
    """

    def __init__(self, mode: GANMode = "lsgan", real_label: float = 1.0,
                 fake_label: float = 0.0) -> None:
        self.gan = GANLoss(mode, real_label, fake_label)

    def __call__(self, outputs: torch.Tensor | Sequence[torch.Tensor],
                 real: bool) -> torch.Tensor:
        maps = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        if not maps:
            raise ValueError("no discriminator outputs to score")
        return torch.stack([self.gan(m, real) for m in maps]).mean()

    def discriminator(self, real_outputs: torch.Tensor | Sequence[torch.Tensor],
                      fake_outputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """0.5 * (loss(real -> real) + loss(fake -> fake)), each averaged over scales;
        pass outputs of detached fakes."""
        return 0.5 * (self(real_outputs, True) + self(fake_outputs, False))
