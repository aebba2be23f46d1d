"""Spatially-adaptive normalisation (SPADE, Park et al. 2019) and MUNIT's layer norm.

The semantically-adaptive I2I translator (semantically-adaptive-i2i.txt Sec. 3.2,
Eq. 6) denormalises each generator activation per pixel from the segmenter's
prediction: the map ``m`` (the segmenter's *unnormalised* output, its logits) is
resized to the activation's H' x W', a small conv net turns it into gamma and beta,
and the instance-normalised activation becomes ``norm(x) * (1 + gamma) + beta``
(SPADE's parameterisation: Eq. 6 writes ``gamma * norm(x) + beta``; SPADE's code
predicts ``gamma - 1`` so a zero output keeps the activation, which we follow).
Its upsampling blocks use layer norm (Sec. 4, "Translation network"), MUNIT's
`LayerNorm2d`.

Resizing: SPADE resizes a one-hot label map with nearest neighbour. The paper only
says ``m`` "is resized"; its ``m`` is continuous logits, so the default here is
bilinear (how logits are resized everywhere in edgeseg), with ``"nearest"`` for
one-hot label maps as in SPADE. Both go through explicit output sizes, so ONNX
Resize follows the real input size.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from edgeseg.models.aspp import resize_to

ResizeMode = Literal["bilinear", "nearest"]


def resize_map(segmap: torch.Tensor, size: torch.Size | tuple[int, int],
               mode: ResizeMode) -> torch.Tensor:
    """``segmap`` at ``size`` (an explicit size, never a scale factor)."""
    if mode == "bilinear":
        return resize_to(segmap, size)
    if mode == "nearest":
        return F.interpolate(segmap, size=size, mode="nearest")
    raise ValueError(f"unknown resize mode {mode!r}; use bilinear or nearest")


class SPADE(nn.Module):
    """``out = IN(x) * (1 + gamma(m)) + beta(m)``; IN has no parameters of its own.

    gamma and beta come from SPADE's net: a shared ``kernel_size`` conv to ``hidden``
    channels + ReLU, then one conv each to ``channels``.
    """

    def __init__(self, channels: int, label_channels: int, hidden: int = 128,
                 kernel_size: int = 3, resize: ResizeMode = "bilinear",
                 eps: float = 1e-5) -> None:
        super().__init__()
        if resize not in ("bilinear", "nearest"):
            raise ValueError(f"unknown resize mode {resize!r}; use bilinear or nearest")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        pad = kernel_size // 2
        self.resize: ResizeMode = resize
        self.norm = nn.InstanceNorm2d(channels, eps=eps, affine=False, track_running_stats=False)
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden, kernel_size, padding=pad),
                                    nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, kernel_size, padding=pad)
        self.beta = nn.Conv2d(hidden, channels, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        hidden = self.shared(resize_map(segmap, x.shape[-2:], self.resize))
        return self.norm(x) * (1 + self.gamma(hidden)) + self.beta(hidden)


class SPADEResBlock(nn.Module):
    """SPADE's residual block: ``shortcut(x) + conv(act(SPADE(conv(act(SPADE(x))))))``.

    act is LeakyReLU 0.2; the middle width is ``min(in, out)``; the shortcut is
    ``conv1x1(SPADE(x))`` (no bias) when the width changes, else ``x``. With
    ``spectral_norm`` the block's convs (not the gamma/beta nets) are spectrally
    normalised, as in SPADE's generator.
    """

    def __init__(self, in_channels: int, out_channels: int, label_channels: int,
                 hidden: int = 128, resize: ResizeMode = "bilinear",
                 spectral_norm: bool = False) -> None:
        super().__init__()
        mid = min(in_channels, out_channels)
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        self.norm_0 = SPADE(in_channels, label_channels, hidden, resize=resize)
        self.conv_0 = sn(nn.Conv2d(in_channels, mid, 3, padding=1))
        self.norm_1 = SPADE(mid, label_channels, hidden, resize=resize)
        self.conv_1 = sn(nn.Conv2d(mid, out_channels, 3, padding=1))
        self.learned_shortcut = in_channels != out_channels
        if self.learned_shortcut:
            self.norm_s = SPADE(in_channels, label_channels, hidden, resize=resize)
            self.conv_s = sn(nn.Conv2d(in_channels, out_channels, 1, bias=False))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, segmap)) if self.learned_shortcut else x
        dx = self.conv_0(self.act(self.norm_0(x, segmap)))
        dx = self.conv_1(self.act(self.norm_1(dx, segmap)))
        return shortcut + dx


class LayerNorm2d(nn.Module):
    """MUNIT's layer norm for conv maps: each sample normalised over (C, H, W) together,
    then a per-channel affine ``gamma_c * x + beta_c``.

    Unlike instance norm it keeps the relative level of the channels, which the
    semantically-adaptive I2I paper found to preserve style in its upsampling blocks.
    Choices where MUNIT's code differs: the biased variance with ``eps`` inside the
    square root (Ba et al.'s layer norm, same as ``nn.GroupNorm(1, C)``) instead of
    ``(x - mean) / (std_unbiased + eps)``, and gamma initialised to 1 (identity at
    init) instead of U(0, 1).
    """

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        var = (x - mean).square().mean(dim=(1, 2, 3), keepdim=True)
        out = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out
