"""The CycleGAN core three methods share (MobileNet-UDA, Mutual-GAN, Domain Extension):
generators G_S->T / G_T->S, image discriminators D_S / D_T, image pools, the GAN loss
and the cycle L1 (Zhu et al. 2017, Eq. 1-3).

A method owns a `CycleGAN` like a component: it registers the four networks (with
specs, so the translators can be exported and chained) and their optimisers on the
method, returns *unweighted* terms by log name, and leaves weighting, stepping and any
extra term (semantic, feature, distillation, mutual-information losses) to the method.
Domains are called ``s`` and ``t``: source/target, or A/B in the papers' notation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from edgeseg.config import ConfigError
from edgeseg.train.nets.gan_loss import GANLoss, GANMode
from edgeseg.train.nets.generator import ResnetGenerator, Upsample
from edgeseg.train.nets.image_pool import ImagePool
from edgeseg.train.nets.losses import mean_l1
from edgeseg.train.nets.registry import net_spec

if TYPE_CHECKING:  # the method interface sits above the nets
    from edgeseg.train.methods.base import Method

GENERATORS = ("gen_s2t", "gen_t2s")
IMAGE_DISCRIMINATORS = ("disc_img_s", "disc_img_t")


class ImageRange:
    """Trainer batches ``(x/255 - mean) / std`` <-> generator images in [-1, 1].

    Both maps are affine, so gradients flow through them from the segmenter into the
    generators."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def to_gan(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std + self.mean) * 2.0 - 1.0

    def to_seg(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1.0) * 0.5 - self.mean) / self.std

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Trainer batch -> intensities on the 0..1 scale (what light losses measure)."""
        return x * self.std + self.mean


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """CycleGAN Eq. 2, one direction: mean absolute error of the round trip."""
    return mean_l1(reconstructed, original)


def check_crops(method: Method, smallest: int, discriminators: str, fix: str = "") -> None:
    """Every stream's crop must suit the translators (sides a multiple of their
    ``size_multiple``) and the image discriminators (sides >= ``smallest``); one line
    naming the recipe key that set the crop."""
    d = method.ctx.recipe.data
    multiple = ResnetGenerator.size_multiple
    for stream in method.streams:
        h, w = d.stream(stream).crop
        own = d.streams.get(stream)
        key = f"data.streams.{stream}.crop" if own and own.crop else "data.crop"
        if h % multiple or w % multiple:
            raise ConfigError(f"{key} {h}x{w}: {method.name} needs sides that are multiples "
                              f"of {multiple} (the generators downsample twice)")
        if min(h, w) < smallest:
            raise ConfigError(f"{key} {h}x{w}: the {discriminators} need sides >= "
                              f"{smallest}{fix}")


class CycleGAN:
    """Two translators and two image discriminators registered on ``method``.

    Every architecture argument is the method's to choose (no defaults: CycleGAN's are
    ngf 64, 9 blocks, transposed convs, ndf 64, the 70x70 PatchGAN = 5 convs at strides
    2, 2, 2, 1, 1 (``disc_layers=5, disc_strides=[2, 2, 2, 1, 1]``), pool 50, LSGAN).
    ``disc_strides`` gives each discriminator conv its own stride (one per layer); None
    keeps every conv at stride 2. CycleGAN's 70x70 PatchGAN is 5 convs at strides
    2, 2, 2, 1, 1 (64, 128, 256, 512 channels, then the logit map).
    Every network gets its own optimiser from the method's optimiser group ``group``
    (CycleGAN: Adam, beta1 0.5, LR 2e-4)."""

    def __init__(self, method: Method, *, ngf: int, n_blocks: int, upsample: Upsample, ndf: int,
                 disc_layers: int, pool_size: int, gan_mode: GANMode, seed: int,
                 group: str = "gan", disc_strides: Sequence[int] | None = None) -> None:
        self.method = method
        self.gan_loss = GANLoss(gan_mode)
        for name in GENERATORS:
            net = method.add_network(name, net_spec("resnet_generator", "translator", ngf=ngf,
                                                    n_blocks=n_blocks, upsample=upsample))
            method.optimizer_for(name, group, net.parameters())
        for name in IMAGE_DISCRIMINATORS:
            net = method.add_network(name, net_spec(
                "patch_discriminator", in_channels=3, ndf=ndf, n_layers=disc_layers, stride=2,
                strides=None if disc_strides is None else [int(s) for s in disc_strides]))
            method.optimizer_for(name, group, net.parameters())
        # one pool per domain: D_S sees old G_T->S outputs, D_T old G_S->T outputs
        self.pools = {"s": ImagePool(pool_size, seed=seed), "t": ImagePool(pool_size, seed=seed + 1)}

    def translate(self, real_s: torch.Tensor, real_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both round trips: fake_t = G_S->T(s), fake_s = G_T->S(t), rec_s, rec_t."""
        net = self.method.net
        fake_t = net("gen_s2t")(real_s)
        # one G_T->S call for both of its inputs (instance norm is per image)
        fake_s, rec_s = net("gen_t2s")(torch.cat([real_t, fake_t])).split(
            [real_t.shape[0], real_s.shape[0]])
        rec_t = net("gen_s2t")(fake_s)
        return {"real_s": real_s, "real_t": real_t, "fake_t": fake_t, "fake_s": fake_s,
                "rec_s": rec_s, "rec_t": rec_t}

    def generator_losses(self, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unweighted generator-side terms: each translation must fool its domain's D, and
        each round trip must return the original."""
        net = self.method.net
        return {
            "loss_adv_img_t": self.gan_loss(net("disc_img_t")(images["fake_t"]), True),
            "loss_adv_img_s": self.gan_loss(net("disc_img_s")(images["fake_s"]), True),
            "loss_cycle_s": cycle_loss(images["rec_s"], images["real_s"]),
            "loss_cycle_t": cycle_loss(images["rec_t"], images["real_t"]),
        }

    def disc_loss(self, name: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """GAN loss of discriminator ``name`` on detached real vs fake inputs, in one call
        (one DDP forward per backward; instance norm is per image)."""
        logits = self.method.net(name)(torch.cat([real, fake.to(real.dtype)]))
        return self.gan_loss.discriminator(*logits.split([real.shape[0], fake.shape[0]]))

    def discriminator_losses(self, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """D_T: real target vs pooled G_S->T outputs; D_S: real source vs pooled G_T->S."""
        return {
            "loss_disc_img_t": self.disc_loss("disc_img_t", images["real_t"].detach(),
                                              self.pools["t"].query(images["fake_t"].detach())),
            "loss_disc_img_s": self.disc_loss("disc_img_s", images["real_s"].detach(),
                                              self.pools["s"].query(images["fake_s"].detach())),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"pools": {k: pool.state_dict() for k, pool in self.pools.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, pool_state in state["pools"].items():
            self.pools[k].load_state_dict(pool_state)
