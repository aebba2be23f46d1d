"""``method: cyclegan_fl``: stage 1 of unsupervised domain extension, CycleGAN with a feature
loss that keeps a translation's content (../shared/papers/domain-extension.txt, Sec. 3.2
and 4.2). It makes the day -> night translator whose EMA copy stage 2
(``method: domain_extension``) uses, and whose translated datasets
``edgeseg derive translate CKPT --network gen_s2t_ema`` writes.

Domains: S = day (``source`` stream), T = night / dusk (``target``); no labels are used
(``labelled_streams = ()``). G_S->T = ``gen_s2t``, G_T->S = ``gen_t2s``, D_S / D_T =
``disc_img_s`` / ``disc_img_t``.

Objective (Eq. 11) = lambda_cyc L_cyc + L_GAN(G_S->T, D_T) + L_GAN(G_T->S, D_S)
+ lambda_feature (L_feature(G_S->T) + L_feature(G_T->S)):

- the CycleGAN core (`edgeseg.train.nets.cyclegan`): LSGAN terms ``loss_adv_img_t`` /
  ``loss_adv_img_s`` and the cycle L1 ``loss_cycle_s`` / ``loss_cycle_t`` (Eq. 2-9),
  lambda_cyc = 10 (Sec. 3.1: the original's value);
- ``loss_feature_s`` = L_feature(G_S->T): squared L2 distance between the frozen feature
  network's activations of x_s and of G_S->T(x_s) (Eq. 10); ``loss_feature_t`` the same
  for x_t and G_T->S(x_t). The feature network is VGG-19 at ``block5_conv2`` (Keras
  name, after the ReLU; Sec. 4.2) from a local ``vgg19_weights`` file; without one, the
  encoder of a frozen copy of the trainer's segmenter (``model.init_from``: the
  source-only stage) stands in (`edgeseg.train.nets.vgg`). Which one a run used is in
  its metrics.jsonl (``{"type": "method"}``) and log. The features of x are the target
  (computed without a graph); the loss reaches the generators through G(x) only: the
  feature network is frozen.

Normalisation of Eq. 10 (where the paper is silent): the squared norm is taken as a mean
over the feature map's elements (an MSE), so lambda_feature does not change with the
crop size or the feature network's width; Eq. 10's sum is that mean times h*w*d, a
constant folded into lambda_feature. The paper does not give lambda_feature: the recipes
take the value of a small sweep (benchmarks/results/*/domain_extension.md).

Generators (Sec. 4.2): CycleGAN's ResNet generator with 9 residual blocks whose
transposed convolutions are replaced by bilinear upsampling + a conv with the same
kernel and channels (``upsample: bilinear``: no checkerboard artefacts); 70x70 PatchGAN
discriminators; image pools of 50 (CycleGAN's, not stated). Every network has its own
Adam(0.5, 0.999), LR 2e-4, then 1e-4 from ``milestones`` (paper: 100K of 700K), and
its gradient norm clipped to 5.0 (``clip_grad_norm``): group ``gan``.

EMA generators: ``gen_s2t_ema`` / ``gen_t2s_ema`` average the generators after every
step (decay 0.9999, Sec. 4.2, after Yazici et al.) and are what stage 2 and ``derive``
use. With ``ema_warmup`` (default; our choice, the paper's runs are 700K iterations) the
decay at update n (1-based) is min(decay, (1 + n) / (10 + n)), TensorFlow's
``ExponentialMovingAverage(num_updates)`` rule: a 1,000-iteration CPU run would
otherwise keep 90 % of the random initial weights (0.9999^1000). The decay reaches
0.9999 after about 90K updates, so paper-sized runs are unaffected.

Alternating steps as in CycleGAN: the generators with D fixed, then both
discriminators on the detached translations (real vs pooled fakes, halved LSGAN).
``deploy()`` is the bare (frozen) segmenter: this stage trains no deployable graph;
export the translators with ``edgeseg export CKPT --network gen_s2t_ema``.
``lambda_feature: 0`` is the plain CycleGAN of Table 1 (no feature network is built).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.config import ConfigError, OptimConfig
from edgeseg.train.methods.base import Method, set_requires_grad
from edgeseg.train.methods.mutual_gan import PATCHGAN_70
from edgeseg.train.nets.cyclegan import (
    GENERATORS,
    IMAGE_DISCRIMINATORS,
    CycleGAN,
    ImageRange,
    check_crops,
)
from edgeseg.train.nets.gan_loss import GANMode
from edgeseg.train.nets.generator import Upsample
from edgeseg.train.nets.vgg import VGG19_LAYERS, build_feature_net

#: the EMA copy of each generator, by generator
EMA_GENERATORS = {"gen_s2t": "gen_s2t_ema", "gen_t2s": "gen_t2s_ema"}
#: Sec. 4.2: Adam(0.5, 0.999), 2e-4 then 1e-4 after 100K of 700K iterations, gradient norms
#: clipped to 5.0 per network
DOMAIN_EXTENSION_ADAM = OptimConfig(name="adam", lr=2e-4, betas=(0.5, 0.999), weight_decay=0.0,
                                    schedule="multistep", milestones=(100_000,), gamma=0.5,
                                    clip_grad_norm=5.0)


@dataclass(frozen=True)
class Params:
    lambda_cycle: float = 10.0  # Sec. 3.1: CycleGAN's 10
    lambda_feature: float = 1.0  # not given: a sweep's choice; 0 = plain CycleGAN
    vgg19_weights: str = ""  # local torchvision VGG-19 file; "" = the segmenter stand-in
    feature_layer: str = "block5_conv2"  # Sec. 4.2 (VGG-19 only)
    gan_mode: GANMode = "lsgan"
    ngf: int = 64
    n_blocks: int = 9  # Sec. 4.2: the 9-block version
    upsample: Upsample = "bilinear"  # Sec. 4.2: bilinear upsampling + conv
    ndf: int = 64  # PatchGAN (Isola et al.)
    disc_strides: tuple[int, ...] = PATCHGAN_70
    pool_size: int = 50
    ema_decay: float = 0.9999  # Sec. 4.2
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)); see the module doc

    def validate(self) -> None:
        for key in ("lambda_cycle", "lambda_feature"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0")
        if self.feature_layer not in VGG19_LAYERS:
            raise ValueError(f"feature_layer {self.feature_layer!r} is not a VGG-19 layer; "
                             f"use one of {list(VGG19_LAYERS)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay {self.ema_decay}: need 0 <= decay < 1")
        if min(self.ngf, self.ndf) < 1 or self.n_blocks < 0 or self.pool_size < 0:
            raise ValueError("ngf and ndf must be >= 1, n_blocks and pool_size >= 0")
        if len(self.disc_strides) < 2 or any(s not in (1, 2) for s in self.disc_strides):
            raise ValueError(f"disc_strides {list(self.disc_strides)}: at least 2 convs, each "
                             "of stride 1 or 2")


def feature_loss(features: nn.Module, original: torch.Tensor,
                 translated: torch.Tensor) -> torch.Tensor:
    """Eq. 10 for one generator, as a mean over elements (see the module doc): the squared
    distance between ``features(translated)`` and the constant ``features(original)``.
    Both images are RGB in [-1, 1]; the gradient reaches ``translated`` only."""
    with torch.no_grad():
        target = features(original.detach()).float()
    return F.mse_loss(features(translated).float(), target)


def ema_decay_at(decay: float, updates: int, warmup: bool) -> float:
    """The decay of EMA update number ``updates`` (1-based): ``decay``, or with ``warmup``
    TensorFlow's ``min(decay, (1 + n) / (10 + n))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates)) if warmup else decay


class CycleGANFL(Method):
    name = "cyclegan_fl"
    Params = Params
    streams = ("source", "target")
    labelled_streams = ()  # unpaired translation: no labels
    optimizer_defaults = {"gan": DOMAIN_EXTENSION_ADAM}
    find_unused_parameters = True

    def build(self) -> None:
        p, r = self.params, self.ctx.recipe
        strides = list(p.disc_strides)
        check_crops(self, 2 ** sum(s == 2 for s in strides),
                    f"image discriminators (strides {strides})")
        self.freeze("model")  # only a feature-network stand-in here, never trained
        self.images = ImageRange(r.data.mean, r.data.std, self.ctx.device)
        self.cyclegan = CycleGAN(self, ngf=p.ngf, n_blocks=p.n_blocks, upsample=p.upsample,
                                 ndf=p.ndf, disc_layers=len(strides), disc_strides=strides,
                                 pool_size=p.pool_size, gan_mode=p.gan_mode, seed=r.seed)
        for gen, ema in EMA_GENERATORS.items():
            self.add_ema(ema, gen, p.ema_decay)
        self.feature_net: nn.Module | None = None
        self.feature_source = "none (lambda_feature 0: plain CycleGAN)"
        if p.lambda_feature > 0:
            if not p.vgg19_weights and not r.model.init_from:
                raise ConfigError(
                    "method.params.vgg19_weights is empty and model.init_from is not set: the "
                    "feature loss needs VGG-19 weights or a source-trained segmenter to stand in "
                    "(set model.init_from=runs/source_only_.../best.pt or vgg19_weights=FILE)")
            net = build_feature_net(p.vgg19_weights or None, self.ctx.model, p.feature_layer,
                                    r.data.mean, r.data.std)
            # a network of the method: saved in checkpoints, so a resumed run keeps exactly
            # this feature network (the trainer loads the segmenter only after build())
            self.feature_net = self.add_network("feature_net", net, trainable=False)
            self.feature_source = net.describe() + (
                "" if p.vgg19_weights else f" of {r.model.init_from}")
        self.weights = {
            "loss_adv_img_t": 1.0, "loss_adv_img_s": 1.0,
            "loss_cycle_s": p.lambda_cycle, "loss_cycle_t": p.lambda_cycle,
            "loss_feature_s": p.lambda_feature, "loss_feature_t": p.lambda_feature,
        }

    def run_notes(self) -> dict[str, Any]:
        return {"feature_net": self.feature_source}

    # --- losses ----------------------------------------------------------------------
    def generator_losses(self, batch: dict[str, dict[str, torch.Tensor]]
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Unweighted terms of Eq. 11 by log name, and the images the D step needs."""
        x_s, x_t = batch["source"]["image"], batch["target"]["image"]
        with self.autocast():
            images = self.cyclegan.translate(self.images.to_gan(x_s), self.images.to_gan(x_t))
            losses = self.cyclegan.generator_losses(images)
            if self.feature_net is not None:
                losses["loss_feature_s"] = feature_loss(self.feature_net, images["real_s"],
                                                        images["fake_t"])
                losses["loss_feature_t"] = feature_loss(self.feature_net, images["real_t"],
                                                        images["fake_s"])
        return losses, {k: images[k].detach() for k in ("real_s", "real_t", "fake_t", "fake_s")}

    # --- the step ----------------------------------------------------------------------
    def update_generator_emas(self, iteration: int) -> None:
        """Average both generators into their EMA copies (update number iteration + 1)."""
        decay = ema_decay_at(self.params.ema_decay, iteration + 1, self.params.ema_warmup)
        for ema in EMA_GENERATORS.values():
            self.emas[ema][0].decay = decay
            self.update_ema(ema)

    def train_step(self, batch: dict[str, dict[str, torch.Tensor]], iteration: int
                   ) -> dict[str, float]:
        self.zero_grad()
        discs = [self.net(n) for n in IMAGE_DISCRIMINATORS]
        set_requires_grad(discs, False)
        losses, cache = self.generator_losses(batch)
        total = sum(self.weights[k] * v for k, v in losses.items())
        self.backward(total)
        self.step(*GENERATORS)
        self.update_generator_emas(iteration)
        logs = {k: v.item() for k, v in losses.items()}
        logs["loss_gen_total"] = float(total.item())
        set_requires_grad(discs, True)
        with self.autocast():
            disc = self.cyclegan.discriminator_losses(cache)
        self.backward(sum(disc.values()))
        self.step(*IMAGE_DISCRIMINATORS)
        logs.update({k: v.item() for k, v in disc.items()})
        return logs

    # --- state ------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return self.cyclegan.state_dict()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.cyclegan.load_state_dict(state)


__all__ = ["DOMAIN_EXTENSION_ADAM", "EMA_GENERATORS", "CycleGANFL", "Params", "ema_decay_at",
           "feature_loss"]
