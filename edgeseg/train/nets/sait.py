"""The semantically-adaptive translator's networks (semantically-adaptive-i2i.txt, Sec. 3.1,
3.2 and 4 "Translation network"): a shared-latent pair of auto-encoders in the manner of
UNIT / MUNIT whose generators denormalise per pixel from the segmenter's prediction.

- ``sait_encoder`` (E_S, E_T): "a few downsampling blocks, followed by residual blocks
  [...] they all use IN". MUNIT's content encoder: reflection pad + 7x7 conv, two 4x4
  stride-2 convs (reflection pad 1), each with instance norm and ReLU, then ``n_blocks``
  residual blocks with instance norm (`ResidualBlock`) -> the latent code z of
  ``4 ngf`` channels at 1/4 of the image side (sides must be multiples of 4).
- ``sait_generator`` (G_S, G_T): z -> ``n_blocks`` residual blocks "where IN and SPADE are
  combined": `SPADEResBlock` (SPADE's own block: parameter-free instance norm, then
  per-pixel gamma / beta from the segmenter's logits m resized to the activation, Eq. 6);
  then two upsampling blocks "with Layer Normalization": MUNIT's decoder stage, a 2x
  resize + reflection pad + 5x5 conv (halving the channels), `LayerNorm2d`, ReLU; the
  2x resize is bilinear through explicit sizes (`Upsample2x`, ONNX-friendly; MUNIT uses
  nearest); last a reflection-padded 7x7 conv and tanh (RGB in [-1, 1]). With
  ``use_spade=False`` (Table 3's rows without SPADE) the residual blocks are plain
  instance-norm `ResidualBlock`\\ s and the generator takes no m (passing one is an
  error: the ablation must not condition on M by accident).
- ``sait_translator``: the deployable F_{A->B}(x) = G_B(E_A(x), M(x)) as one image
  network (role ``translator``: RGB in [-1, 1] -> RGB in [-1, 1]). It holds the
  encoder, the generator and the segmenter M; M sees ``x`` in its own normalisation
  ``((x + 1)/2 - mean)/std`` (the recipe's data mean/std, stored in the spec), so
  ``edgeseg derive translate`` / ``export --network`` run it like any translator. Its
  spec carries the encoder's, the generator's and the segmenter's arguments, so it is
  rebuilt from the spec alone. (The [-1, 1] -> M-input map is the feature-loss net's
  ``Normalise`` of `edgeseg.train.nets.vgg`.)

Spectral normalisation (Sec. 4: "to all the models described here") wraps every
convolution of every network here, SPADE's modulation convs included
(`spectral_norm_all`); SPADE's reference code leaves those unnormalised, the paper
does not make the distinction. It is torch's parametrisation with sigma computed without
``vdot`` (`ExportableSpectralNorm`), so ``edgeseg export --network translator_s2t``
traces it to ONNX. Weights keep PyTorch's default initialisation (spectral
normalisation fixes their scale). The discriminators are the shared
``multiscale_discriminator`` with ``spectral_norm=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from edgeseg.train.nets.generator import ResidualBlock, Upsample2x, norm_layer
from edgeseg.train.nets.registry import NetSpec, build_net, register_net
from edgeseg.train.nets.spade import LayerNorm2d, ResizeMode, SPADEResBlock
from edgeseg.train.nets.vgg import Normalise

#: two stride-2 stages: image sides must be multiples of this
SIZE_MULTIPLE = 4


class ExportableSpectralNorm(_SpectralNorm):
    """torch's spectral normalisation (``parametrizations.spectral_norm``: the same power
    iteration, buffers and state-dict keys) with sigma = sum(u * (W v)) instead of
    ``torch.vdot``, which ONNX has no operator for: the translators export."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        weight_mat = self._reshape_weight_to_matrix(weight)
        if self.training:
            self._power_method(weight_mat, self.n_power_iterations)
        u, v = self._u.clone(), self._v.clone()  # 1-D: contiguous, as torch's clones
        return weight / (u * torch.mv(weight_mat, v)).sum()


def spectral_norm_all(net: nn.Module) -> nn.Module:
    """Spectrally normalise (Miyato et al. 2018) the weight of every 2-D convolution of
    ``net`` that is not normalised yet; returns ``net``."""
    for m in list(net.modules()):
        if isinstance(m, nn.Conv2d) and not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", ExportableSpectralNorm(m.weight))
    return net


def _check_size(x: torch.Tensor, what: str) -> None:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    h, w = x.shape[-2:]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(f"{what} input {h}x{w}: height and width must be multiples of "
                         f"{SIZE_MULTIPLE}")


class SaitEncoder(nn.Module):
    """Image (N, C, H, W) in [-1, 1] -> latent code z (N, 4 ngf, H/4, W/4)."""

    size_multiple = SIZE_MULTIPLE

    def __init__(self, ngf: int, n_blocks: int, in_channels: int,
                 use_spectral_norm: bool) -> None:
        super().__init__()
        if ngf < 1 or n_blocks < 0:
            raise ValueError(f"ngf must be >= 1 and n_blocks >= 0, got {ngf}, {n_blocks}")
        norm = norm_layer("instance")  # CycleGAN's: no affine parameters, no statistics
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7),
                                   norm(ngf), nn.ReLU(inplace=True)]
        for mult in (1, 2):  # downsample: ngf -> 2 ngf -> 4 ngf
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(ngf * mult, ngf * mult * 2, 4, stride=2),
                       norm(ngf * mult * 2), nn.ReLU(inplace=True)]
        layers += [ResidualBlock(ngf * 4, "instance") for _ in range(n_blocks)]
        self.model = nn.Sequential(*layers)
        self.out_channels = ngf * 4
        if use_spectral_norm:
            spectral_norm_all(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, "encoder")
        return self.model(x)


class SaitGenerator(nn.Module):
    """Latent code (N, 4 ngf, h, w) and the segmenter's logits m (N, label_channels, H', W',
    any size) -> image (N, C, 4h, 4w) in [-1, 1]; without SPADE it takes no m."""

    def __init__(self, ngf: int, n_blocks: int, label_channels: int, use_spade: bool,
                 spade_hidden: int, spade_resize: ResizeMode, out_channels: int,
                 use_spectral_norm: bool) -> None:
        super().__init__()
        if ngf < 1 or n_blocks < 0:
            raise ValueError(f"ngf must be >= 1 and n_blocks >= 0, got {ngf}, {n_blocks}")
        if use_spade and (label_channels < 1 or spade_hidden < 1):
            raise ValueError(f"label_channels and spade_hidden must be >= 1, got "
                             f"{label_channels}, {spade_hidden}")
        ch = ngf * 4
        self.use_spade = use_spade
        self.blocks = nn.ModuleList(
            SPADEResBlock(ch, ch, label_channels, spade_hidden, spade_resize) if use_spade
            else ResidualBlock(ch, "instance") for _ in range(n_blocks))
        layers: list[nn.Module] = []
        for mult in (4, 2):  # upsample: 4 ngf -> 2 ngf -> ngf, layer norm (Sec. 4)
            layers += [Upsample2x(), nn.ReflectionPad2d(2),
                       nn.Conv2d(ngf * mult, ngf * mult // 2, 5), LayerNorm2d(ngf * mult // 2),
                       nn.ReLU(inplace=True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.up = nn.Sequential(*layers)
        if use_spectral_norm:
            spectral_norm_all(self)

    def forward(self, z: torch.Tensor, segmap: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_spade and segmap is None:
            raise ValueError("a SPADE generator needs the segmenter's logits (segmap)")
        if not self.use_spade and segmap is not None:
            raise ValueError("a generator without SPADE takes no segmenter logits (segmap)")
        for block in self.blocks:
            z = block(z, segmap) if self.use_spade else block(z)
        return self.up(z)


class SaitTranslator(nn.Module):
    """F_{A->B}(x) = generator(encoder(x), segmenter(x in the segmenter's range)) on RGB in
    [-1, 1]; ``segmenter`` None for a generator without SPADE. The method builds it over
    its live networks (shared modules), `build_sait_translator` from a stored spec."""

    def __init__(self, encoder: SaitEncoder, generator: SaitGenerator,
                 segmenter: nn.Module | None, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        if generator.use_spade != (segmenter is not None):
            raise ValueError("a SPADE generator needs the segmenter, a generator without SPADE "
                             "takes none")
        self.encoder = encoder
        self.generator = generator
        self.segmenter = segmenter
        self.size_multiple = SIZE_MULTIPLE
        # [-1, 1] -> M's input; buffers outside the state dict: the spec holds mean and std
        self.normalise = Normalise(mean, std)

    def segment(self, x: torch.Tensor) -> torch.Tensor | None:
        """M(x): the segmenter's logits of an RGB image in [-1, 1] (None without one)."""
        if self.segmenter is None:
            return None
        return self.segmenter(self.normalise(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encoder(x), self.segment(x))


@register_net("sait_encoder")
def build_sait_encoder(ngf: int = 64, n_blocks: int = 4, in_channels: int = 3,
                       use_spectral_norm: bool = True) -> SaitEncoder:
    """E_S / E_T (training-only: role ``""``); MUNIT's content encoder by default."""
    return SaitEncoder(ngf, n_blocks, in_channels, use_spectral_norm)


@register_net("sait_generator")
def build_sait_generator(ngf: int = 64, n_blocks: int = 4, label_channels: int = 19,
                         use_spade: bool = True, spade_hidden: int = 128,
                         spade_resize: ResizeMode = "bilinear", out_channels: int = 3,
                         use_spectral_norm: bool = True) -> SaitGenerator:
    """G_S / G_T (training-only: they need the segmenter's logits; deploy the
    ``sait_translator`` built over them)."""
    return SaitGenerator(ngf, n_blocks, label_channels, use_spade, spade_hidden, spade_resize,
                         out_channels, use_spectral_norm)


@register_net("sait_translator")
def build_sait_translator(encoder: dict[str, Any], generator: dict[str, Any],
                          segmenter: dict[str, Any] | None, mean: Sequence[float],
                          std: Sequence[float]) -> SaitTranslator:
    """The deployable translator from the arguments of its parts: ``encoder`` of a
    ``sait_encoder``, ``generator`` of a ``sait_generator``, ``segmenter`` the segmenter's
    model block (`edgeseg.train.methods.base.segmenter_spec`; None without SPADE) and the
    segmenter's input normalisation."""
    seg = None if segmenter is None else build_net(NetSpec("segmenter", dict(segmenter)))
    return SaitTranslator(build_net(NetSpec("sait_encoder", dict(encoder))),
                          build_net(NetSpec("sait_generator", dict(generator))), seg, mean, std)


__all__ = ["SIZE_MULTIPLE", "ExportableSpectralNorm", "SaitEncoder", "SaitGenerator", "SaitTranslator",
           "build_sait_encoder", "build_sait_generator", "build_sait_translator",
           "spectral_norm_all"]
